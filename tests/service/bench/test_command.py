"""`plexserve bench` end to end against the suite's real server (tests/conftest.py `server`):
closed and open loop, errors by status code, several processes, files, exit statuses."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plexserve.bench.inputs import InputData
from plexserve.bench.load import StepPlan, run_plan
from plexserve.bench.protocols import V2Protocol
from plexserve.bench.stats import step_figures
from plexserve.cli import main
from tests.harness import RunningServer

LATENCIES = ["p50", "p90", "p99", "p99.9", "max"]


@pytest.fixture(scope="module")
def dead_metrics_url() -> str:
    with socket.socket() as probe:  # a port nobody listens on: no metrics to scrape
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/metrics"


def bench(server: RunningServer, metrics_url: str, *args: str) -> int:
    return main(
        [
            "bench",
            "--target",
            server.address,
            "--metrics-url",
            metrics_url,
            "--warmup",
            "100ms",
            "--duration",
            "0.5s",
            *args,
        ]
    )


def none_fields(value: Any, path: str = "") -> list[str]:
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in none_fields(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in none_fields(v, f"{path}[{i}]")]
    return []


def test_closed_loop_run_writes_every_field(
    server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output, table = tmp_path / "run.json", tmp_path / "run.csv"
    status = bench(
        server,
        server.metrics_url,
        "--model",
        "multi_task",
        "--concurrency",
        "1,4",
        "--rows",
        "3",
        "--output",
        str(output),
        "--csv",
        str(table),
        "--progress",
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    run = json.loads(output.read_text())
    assert none_fields(run) == []
    assert run["settings"]["levels"] == [1, 4] and run["settings"]["rows"] == 3
    assert set(run["environment"]) >= {"host", "cpu_count", "python", "plexserve", "date"}
    assert [i["name"] for i in run["model"]["inputs"]] == ["category", "image", "numeric"]
    for step in run["steps"]:
        assert step["requests"] > 0 and step["ok"] == step["requests"]
        assert step["errors"] == {}
        latencies = [step["latency_ms"][name] for name in LATENCIES]
        assert 0 < latencies[0] and latencies == sorted(latencies)
        assert step["rows_per_s"] == pytest.approx(3 * step["requests_per_s"])
        server = step["server"]  # the server's own figures over the step, from its /metrics
        assert server["available"] is True
        assert server["queue_ms"] >= 0 and server["compute_ms"] > 0
        assert server["batch_rows"] >= 3  # 3 rows per request, batched or not
    assert [s["concurrency"] for s in run["steps"]] == [1, 4]
    assert len(table.read_text().splitlines()) == 3
    assert "server metrics: mean queue" in captured.out
    assert "[1/2] concurrency 1: " in captured.err and "[2/2] concurrency 4: " in captured.err


def test_open_loop_sends_on_schedule_and_reports_the_achieved_rate(
    server: RunningServer,
    dead_metrics_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "run.json"
    args = ["--model", "mlp", "--rate", "100", "--distribution", "constant"]
    assert bench(server, dead_metrics_url, *args, "--output", str(output)) == 0
    (step,) = json.loads(output.read_text())["steps"]
    assert (step["mode"], step["rate"], step["distribution"]) == ("open", 100.0, "constant")
    # every 10 ms of the 0.5 s window, answered or not (the send at the window's very end may
    # fall on either side of it by a rounding error)
    assert step["requests"] in (50, 51)
    assert step["ok"] == step["requests"]
    assert 0 < step["achieved_rate"] <= 100
    assert "rate achieved" in capsys.readouterr().out


def test_errors_are_counted_by_status_code(server: RunningServer) -> None:
    """Requests built for `mlp` but addressed to a model that does not exist."""

    async def step() -> dict[str, Any]:
        real, wrong = V2Protocol(server.address, "mlp"), V2Protocol(server.address, "no_such")
        try:
            arrays = InputData(await real.metadata(), "random").arrays(rows=1)
            pool = [wrong.build_request(arrays)]
            now = asyncio.get_running_loop().time()
            plan = StepPlan("closed", 2, start=now, warmup=0.0, duration=0.3, timeout=10)
            record = await run_plan(wrong.call, pool, plan)
        finally:
            await real.close()
            await wrong.close()
        return step_figures(record, plan.measure_start, plan.end, rows=1)

    figures = asyncio.run(step())
    assert figures["requests"] > 0
    assert figures["errors"] == {"NOT_FOUND": figures["requests"]}
    assert figures["ok"] == 0 and figures["requests_per_s"] == 0
    assert figures["latency_ms"]["p50"] is None


def test_rejected_requests_make_the_exit_status_1(
    server: RunningServer,
    dead_metrics_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "ids.json"  # multi_input's embedding has 10 ids: 1000 is out of range
    data.write_text(json.dumps({"numeric": [0, 0, 0, 0], "category": [1000]}))
    args = ["--model", "multi_input", "--input-data", str(data), "--concurrency", "2"]
    assert bench(server, dead_metrics_url, *args) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().out


def test_processes_merge_their_raw_samples(
    server: RunningServer, dead_metrics_url: str, tmp_path: Path
) -> None:
    output = tmp_path / "run.json"
    args = ["--model", "echo", "--concurrency", "3", "--processes", "2"]
    assert bench(server, dead_metrics_url, *args, "--output", str(output)) == 0
    (step,) = json.loads(output.read_text())["steps"]
    assert step["processes"] == 2
    assert len(step["requests_by_process"]) == 2 and min(step["requests_by_process"]) > 0
    assert step["requests"] == sum(step["requests_by_process"]) == step["ok"]


def test_problems_to_fix_first_exit_2(
    server: RunningServer, dead_metrics_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench(server, dead_metrics_url, "--model", "no_such_model") == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    args = ["--model", "no_such_model", "--protocol", "tfserving"]
    assert bench(server, dead_metrics_url, *args) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert bench(server, dead_metrics_url, "--model", "mlp", "--input-data", "nope.json") == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench(server, dead_metrics_url, "--model", "mlp", "--duration", "soon")
    assert "invalid duration 'soon'" in capsys.readouterr().err


def test_the_bench_package_does_not_import_tensorflow_for_v2() -> None:
    """Only --protocol tfserving imports TensorFlow (its messages do), when a client is opened."""
    code = (
        "import asyncio, sys, service.bench.command, service.bench.workers\n"
        "from plexserve.bench.protocols import check_protocol, open_protocol\n"
        "check_protocol('tfserving')\n"
        "async def main():\n"
        "    await open_protocol('v2', '127.0.0.1:1', 'mlp').close()\n"
        "asyncio.run(main())\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["False", "False"]
