"""Metrics, statistics, health and logs, observed from outside after a known sequence of
requests: exact counter values and histogram counts per label set."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from plexserve.export import export_model
from plexserve.logs import JsonFormatter
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.repository import load_runner
from plexserve.server import Server, ServerSettings
from tests.harness import LOCAL_PORT_0, RunningServer, infer_request, output_arrays, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def linear_model() -> keras.Model:
    x = keras.Input((2,), name="x")
    return keras.Model({"x": x}, {"y": keras.layers.Dense(1)(x)})


def ones(rows: int) -> dict[str, np.ndarray]:
    return {"x": np.ones((rows, 2), np.float32)}


def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (sample name, sorted labels)."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples[(name, tuple(sorted(labels.items())))]


def http(server: RunningServer, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.server.http.port}{path}", method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server that has answered exactly the sequence below and nothing else."""
    root = tmp_path_factory.mktemp("observed")
    export_model(linear_model(), root, "m")
    export_model(linear_model(), root, "padded")
    (root / "padded" / "config.yaml").write_text("batching: {allowed_batch_sizes: [1, 2, 4]}\n")
    export_model(linear_model(), root, "plain")
    (root / "plain" / "config.yaml").write_text("batching: {enabled: false}\n")
    server = RunningServer(root)
    stub = server.stub
    for rows in (1, 2, 3):  # three successes, one after another: three executions
        stub.ModelInfer(infer_request("m", ones(rows)))
    failures = [
        infer_request("nope", ones(1)),  # NOT_FOUND, unknown model
        infer_request("m", ones(1), version="9"),  # NOT_FOUND, unknown version
        infer_request("m", {"x": np.ones((1, 2), np.float64)}),  # INVALID_ARGUMENT, dtype
        pb.ModelInferRequest(  # INVALID_ARGUMENT while decoding
            model_name="m",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 2])],
            raw_input_contents=[b"\0" * 3],
        ),
    ]
    for request in failures:
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(request)
    stub.ModelInfer(infer_request("padded", ones(3)))  # padded to 4
    stub.ModelInfer(infer_request("plain", ones(2)))  # batching off
    yield server
    server.close()


def test_request_counters_by_model_version_protocol_and_code(observed: RunningServer) -> None:
    samples = scrape(observed)
    count = "plexserve_requests_total"
    assert sample(samples, count, model="m", version="1", protocol="v2", code="OK") == 3
    assert (
        sample(samples, count, model="m", version="1", protocol="v2", code="INVALID_ARGUMENT") == 2
    )
    assert sample(samples, count, model="m", version="", protocol="v2", code="NOT_FOUND") == 1
    assert (
        sample(samples, count, model="(unknown)", version="", protocol="v2", code="NOT_FOUND") == 1
    )
    assert sample(samples, count, model="padded", version="1", protocol="v2", code="OK") == 1
    duration = "plexserve_request_duration_seconds_count"
    assert sample(samples, duration, model="m", version="1", protocol="v2") == 5


def test_execution_histograms_and_padding(observed: RunningServer) -> None:
    samples = scrape(observed)
    for name in ("plain", "m", "padded"):
        executions = {"m": 3, "padded": 1, "plain": 1}[name]
        labels = {"model": name, "version": "1"}
        assert sample(samples, "plexserve_queue_duration_seconds_count", **labels) == executions
        assert sample(samples, "plexserve_compute_duration_seconds_count", **labels) == executions
        assert sample(samples, "plexserve_batch_size_rows_count", **labels) == executions
    assert sample(samples, "plexserve_batch_size_rows_sum", model="m", version="1") == 6
    assert (
        sample(samples, "plexserve_batch_size_rows_bucket", model="m", version="1", le="2.0") == 2
    )
    assert sample(samples, "plexserve_padding_rows_total", model="padded", version="1") == 1
    assert sample(samples, "plexserve_queue_depth_rows", model="m", version="1") == 0
    assert sample(samples, "plexserve_inflight_requests", model="m", version="1") == 0


def test_model_state_and_load_durations(observed: RunningServer) -> None:
    samples = scrape(observed)
    for state in ("LOADING", "WARMING", "AVAILABLE", "UNLOADING", "END", "FAILED"):
        expected = 1 if state == "AVAILABLE" else 0
        assert (
            sample(samples, "plexserve_model_state", model="m", version="1", state=state)
            == expected
        )
    assert sample(samples, "plexserve_model_load_duration_seconds", model="m", version="1") > 0
    assert sample(samples, "plexserve_model_warmup_duration_seconds", model="m", version="1") > 0
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)


def test_model_statistics_count_the_requests_sent(observed: RunningServer) -> None:
    response = observed.stub.ModelStatistics(pb.ModelStatisticsRequest(name="m"))
    (stats,) = response.model_stats
    assert (stats.name, stats.version) == ("m", "1")
    assert (stats.inference_count, stats.execution_count) == (6, 3)
    inference = stats.inference_stats
    assert (inference.success.count, inference.fail.count) == (3, 2)
    assert inference.queue.count == inference.compute_infer.count == 3
    # perf_analyzer requires the three compute counts to agree
    assert inference.compute_input.count == inference.compute_output.count == 3
    assert inference.success.ns > inference.compute_infer.ns > 0
    assert {(b.batch_size, b.compute_infer.count) for b in stats.batch_stats} == {
        (1, 1),
        (2, 1),
        (3, 1),
    }
    assert stats.last_inference > 1_700_000_000_000  # ms since the epoch
    everything = observed.stub.ModelStatistics(pb.ModelStatisticsRequest())
    assert {s.name for s in everything.model_stats} == {"m", "padded", "plain"}
    metadata = observed.stub.ServerMetadata(pb.ServerMetadataRequest())
    assert "statistics" in metadata.extensions


def test_http_health_and_readiness_endpoints(observed: RunningServer) -> None:
    assert http(observed, "/v2/health/live") == (200, '{"live":true}')
    assert http(observed, "/v2/health/ready") == (200, '{"ready":true}')
    assert http(observed, "/v2/models/m/ready") == (200, '{"name":"m","ready":true}')
    assert http(observed, "/v2/models/m/versions/1/ready")[0] == 200
    status, body = http(observed, "/v2/models/m/versions/9/ready")
    assert status == 404 and "no version '9'" in json.loads(body)["error"]
    status, body = http(observed, "/v2/models/nope/ready")
    assert status == 404 and "unknown model 'nope'" in json.loads(body)["error"]
    assert http(observed, "/v2/models/%2E%2E/ready")[0] == 400
    assert http(observed, "/v2/health/live", method="POST")[0] == 405
    assert http(observed, "/elsewhere")[0] == 404
    assert http(observed, "/v2/health/ready", method="HEAD") == (200, "")


def test_health_goes_not_ready_serving_not_serving_over_grpc_and_http(tmp_path: Path) -> None:
    export_model(linear_model(), tmp_path, "m")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    gate = threading.Event()

    async def create() -> Server:
        server = Server(ServerSettings(tmp_path, **LOCAL_PORT_0))
        server.repository.load_runner = lambda path, threads: (
            gate.wait(30),
            load_runner(path, threads),
        )[1]
        return server

    server = asyncio.run_coroutine_threadsafe(create(), loop).result(30)
    starting = asyncio.run_coroutine_threadsafe(server.start(), loop)
    try:
        # Loading: HTTP answers alive, not ready; the gRPC port is not open yet (it opens once
        # the start-up models are loaded: tests/service/test_rollout.py).
        wait_until(lambda: server.http.port != 0 and "m" in server.repository)
        assert server.grpc_port == 0
        running = RunningServer.__new__(RunningServer)
        running.server = server
        assert http(running, "/v2/health/ready")[0] == 503
        assert http(running, "/v2/health/live")[0] == 200

        gate.set()
        starting.result(60)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == SERVING
        assert http(running, "/v2/health/ready")[0] == 200
        model_watch = health.Watch(health_pb2.HealthCheckRequest(service="m"))
        assert next(model_watch).status == SERVING

        stopping = asyncio.run_coroutine_threadsafe(server.stop(grace=1, lame_duck=0), loop)
        assert next(watch).status == NOT_SERVING
        assert next(model_watch).status == NOT_SERVING
        stopping.result(30)
        channel.close()
    finally:
        gate.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_json_logs_carry_extra_fields() -> None:
    record = logging.LogRecord(
        "plexserve.access", logging.INFO, __file__, 1, "v2 model=%s", ("m",), None
    )
    record.model, record.code = "m", "OK"
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["message"]) == (
        "INFO",
        "plexserve.access",
        "v2 model=m",
    )
    assert (line["model"], line["code"]) == ("m", "OK")
    assert line["time"].endswith("Z")


def test_the_access_log_samples_requests(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    export_model(linear_model(), tmp_path, "m")
    server = RunningServer(tmp_path, access_log_sample=1.0)
    try:
        with caplog.at_level(logging.INFO, logger="plexserve.access"):
            response = server.stub.ModelInfer(infer_request("m", ones(2)))
        assert output_arrays(response)["y"].shape == (2, 1)
        (line,) = [r.getMessage() for r in caplog.records if r.name == "plexserve.access"]
        assert line.startswith("v2 model=m version=1 code=OK rows=2 ms=")
    finally:
        server.close()


def test_the_event_loops_busy_ratio_is_published(observed: RunningServer) -> None:
    """A share of one second between 0 and 1; the loop has just answered requests, so not 0."""

    def busy() -> float:
        observed.stub.ModelInfer(infer_request("m", ones(1)))
        return sample(scrape(observed), "plexserve_event_loop_busy_ratio")

    wait_until(lambda: 0 < busy() <= 1, timeout=30)


def test_a_versions_series_continue_across_its_reloads(tmp_path: Path) -> None:
    export_model(linear_model(), tmp_path, "m")
    server = RunningServer(tmp_path, model_control="explicit", load_models=("m",))
    try:
        for _ in range(2):
            server.stub.ModelInfer(infer_request("m", ones(2)))
            server.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="m"))
            server.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="m"))
        server.stub.ModelInfer(infer_request("m", ones(2)))
        samples = scrape(server)
        ok = {"model": "m", "version": "1", "protocol": "v2", "code": "OK"}
        assert sample(samples, "plexserve_requests_total", **ok) == 3  # over three lifetimes
        assert sample(samples, "plexserve_batch_size_rows_sum", model="m", version="1") == 6
        statistics = server.stub.ModelStatistics(pb.ModelStatisticsRequest(name="m"))
        assert statistics.model_stats[0].inference_count == 2  # Triton's: this lifetime only
    finally:
        server.close()
