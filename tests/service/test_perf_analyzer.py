"""Triton's perf_analyzer, a client we did not write, drives every front end a load tester uses:
OIP gRPC, TF Serving's gRPC API and OIP REST with binary and JSON tensors. A behaviour check
(short runs, 2 clients), not a measurement: bench/ measures.

perf_analyzer lives in its own venv (`make perf-tools`, run by `make test` where it can install
it); without it these tests skip.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from plexserve.proto import grpc_service_pb2 as pb
from tests.harness import RunningServer

PERF_VENV = Path(__file__).resolve().parents[2] / ".perf-venv"
PERF_ANALYZER = PERF_VENV / "bin" / "perf_analyzer"

pytestmark = pytest.mark.skipif(
    not PERF_ANALYZER.exists(),
    reason="no .perf-venv with Triton's perf_analyzer: run `make perf-tools` (needs root)",
)


def successes(server: RunningServer, model: str) -> int:
    statistics = server.stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30)
    return sum(s.inference_stats.success.count for s in statistics.model_stats)


@pytest.mark.parametrize(
    "front_end",
    ["grpc", "tfserving", "http-binary", "http-json"],
)
def test_perf_analyzer_drives_every_front_end(server: RunningServer, front_end: str) -> None:
    grpc_target = f"127.0.0.1:{server.server.grpc_port}"
    http_target = f"127.0.0.1:{server.server.http.port}"
    kind = {
        "grpc": ["-u", grpc_target, "-i", "grpc"],
        # TF Serving's API has no batch dimension of its own: perf_analyzer needs -b 1
        "tfserving": ["-u", grpc_target, "-i", "grpc", "--service-kind", "tfserving", "-b", "1"],
        "http-binary": ["-u", http_target, "-i", "http", "--input-tensor-format", "binary"],
        "http-json": ["-u", http_target, "-i", "http", "--input-tensor-format", "json"],
    }[front_end]
    if front_end.startswith("http"):
        kind += ["--output-tensor-format", front_end.removeprefix("http-")]
    before = successes(server, "multi_task")
    runtime = next(PERF_VENV.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    finished = subprocess.run(
        [
            str(PERF_ANALYZER),
            *("-m", "multi_task", *kind),
            *("--input-data", "zero", "--concurrency-range", "2"),
            *("--measurement-mode", "count_windows", "--measurement-request-count", "50"),
            *("-s", "1000", "--max-trials", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"LD_LIBRARY_PATH": str(runtime), "PATH": "/usr/bin:/bin"},
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "Concurrency: 2, throughput:" in finished.stdout
    # what it counted reached the model: at least one 50-request window, each answered
    assert successes(server, "multi_task") - before >= 50
