"""Graceful shutdown (service/server.py: `serve` and `Server.stop`): real signals sent to a
`plexserve serve` subprocess (the lame duck, the drain, the exit status), and in-process the
GOAWAY step and the end of the grace period. Rolling restarts: tests/service/test_rollout.py.

The model is slow on purpose: batching caps executions at 8 rows, so a request of BLOCKER_ROWS
rows runs as hundreds of executions (a second or more); requests sent after it take turns with
its chunks in the batcher's queue. Conditions are waited for (log lines, health Watch, the in-flight
gauge), never slept for.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from plexserve.export import export_model
from plexserve.proto import grpc_service_pb2 as pb
from tests.harness import RunningServer, ServeProcess, infer_request, output_arrays, rest
from tests.service.test_lifecycle import wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BLOCKER_ROWS = 16_000  # 2000 executions of 8 rows: about 2 s here, more on a busy machine
IN_FLIGHT = 50


def slow_model() -> keras.Model:
    x = keras.Input((64,), name="x")
    hidden = keras.layers.Dense(1024, activation="relu")(x)
    hidden = keras.layers.Dense(1024, activation="relu")(hidden)
    return keras.Model({"x": x}, {"y": keras.layers.Dense(1)(hidden)})


def rows(count: int) -> dict[str, np.ndarray]:
    return {"x": np.full((count, 64), 0.5, np.float32)}


@pytest.fixture(scope="module")
def slow_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The repository and the value the model returns for every row of `rows`."""
    root = tmp_path_factory.mktemp("slow")
    model = slow_model()
    export_model(model, root, "slow")
    (root / "slow" / "config.yaml").write_text(
        "batching: {max_batch_size: 8, max_queue_size: 200000}\nmax_request_rows: 20000\n"
    )
    expected = float(np.asarray(model(rows(1))["y"])[0, 0])
    return root, expected


@pytest.fixture
def serve_process(slow_repository: tuple[Path, float]) -> Iterator[Any]:
    started: list[ServeProcess] = []

    def start(*flags: str) -> ServeProcess:
        started.append(ServeProcess(slow_repository[0], *flags))
        return started[-1]

    yield start
    for process in started:
        process.close()


@pytest.mark.parametrize("workers", [0, 2], ids=["one process", "2 workers"])
def test_sigterm_serves_through_the_lame_duck_answers_every_accepted_request_and_exits_0(
    serve_process: Any, slow_repository: tuple[Path, float], workers: int
) -> None:
    """The same contract with front-end workers: each worker and the model process drain."""
    grace, lame_duck = 60.0, 5.0  # (a grace long enough for a machine busy with other work)
    server: ServeProcess = serve_process(
        f"--grace-period={grace:g}", f"--lame-duck={lame_duck:g}", f"--workers={workers}"
    )
    watch = server.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
    assert next(s.status for s in watch if s.status == SERVING) == SERVING

    # 50 requests share the model, a chunk of each in turn: 2000 executions of 8 rows in all.
    share = BLOCKER_ROWS // IN_FLIGHT
    accepted = [
        server.stub.ModelInfer.future(infer_request("slow", rows(share)), timeout=60)
        for _ in range(IN_FLIGHT)
    ]
    wait_until(lambda: server.inflight() == IN_FLIGHT)

    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    # Lame duck: every front end says NOT_SERVING at once...
    assert next(watch).status == NOT_SERVING
    assert server.health.Check(health_pb2.HealthCheckRequest(service="")).status == NOT_SERVING
    assert server.health.Check(health_pb2.HealthCheckRequest(service="slow")).status == NOT_SERVING
    assert not server.stub.ServerReady(pb.ServerReadyRequest()).ready
    ready = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v2/health/ready")
    with pytest.raises(urllib.error.HTTPError) as not_ready:
        urllib.request.urlopen(ready, timeout=10)
    assert not_ready.value.code == 503
    # ... and still answers new requests: a client that has not noticed yet loses nothing.
    late = server.stub.ModelInfer(infer_request("slow", rows(1)), timeout=30)
    np.testing.assert_allclose(output_arrays(late)["y"], slow_repository[1], rtol=1e-4, atol=1e-6)
    stream = server.stub.ModelStreamInfer(
        iter([infer_request("slow", rows(1), request_id="late")]), timeout=30
    )
    (answer,) = list(stream)
    assert answer.infer_response.id == "late" and answer.error_message == ""
    predict = predict_pb2.PredictRequest(inputs={"x": tf.make_tensor_proto(rows(1)["x"])})
    predict.model_spec.name = "slow"
    prediction_service_pb2_grpc.PredictionServiceStub(server.channel).Predict(predict, timeout=30)
    server.wait_for_line(r"shutdown: NOT_SERVING; new requests are still answered", 1)

    expected = slow_repository[1]
    for future in accepted:
        y = output_arrays(future.result())["y"]
        assert y.shape == (share, 1)
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-6)  # (batch-size rounding)
    assert server.process.wait(lame_duck + grace) == 0
    assert time.monotonic() - signalled < lame_duck + grace
    server.wait_for_line(r"shutdown: GOAWAY", 1)
    server.wait_for_line(r"shutdown: done", 1)
    assert not any("Traceback" in line or "is over" in line for line in server.lines)


def port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


def test_after_the_lame_duck_the_grpc_port_closes_and_rest_posts_are_refused(
    slow_repository: tuple[Path, float],
) -> None:
    """In-process (the same Server.stop the signal calls), the lame duck skipped: GOAWAY at
    once, and a request accepted before it holds the drain open while the test looks."""
    server = RunningServer(slow_repository[0])
    try:
        blocker = server.stub.ModelInfer.future(
            infer_request("slow", rows(BLOCKER_ROWS)), timeout=60
        )
        wait_until(lambda: server.server.dataplane.inflight == 1)
        stopping = asyncio.run_coroutine_threadsafe(
            server.server.stop(grace=60, lame_duck=0), server.loop
        )
        wait_until(lambda: not server.server.http.accepting)
        # gRPC: no new connection (a client with other replicas goes there); the listener closes
        # as the GOAWAY step begins, in the same step as the HTTP port stops accepting
        wait_until(lambda: port_closed(server.server.grpc_port))
        # REST: a POST is refused, the connection closed; health and metrics still answer
        body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
        refused = rest(server, "/v2/models/slow/infer", body)
        assert refused.status == 503 and "shutting down" in refused.json()["error"]
        assert refused.headers["Connection"] == "close"
        assert rest(server, "/v2/health/ready").status == 503
        assert rest(server, "/metrics").status == 200
        assert not stopping.done() and not blocker.done()  # the accepted request still runs

        assert output_arrays(blocker.result(60))["y"].shape == (BLOCKER_ROWS, 1)
        stopping.result(60)
    finally:
        server.close()


def test_a_second_signal_during_the_drain_exits_at_once(serve_process: Any) -> None:
    server: ServeProcess = serve_process("--grace-period=60", "--lame-duck=1")
    watch = server.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
    assert next(s.status for s in watch if s.status == SERVING) == SERVING
    # About 10 times the first test's blocker: a drain far longer than the bound below.
    work = [
        server.stub.ModelInfer.future(infer_request("slow", rows(BLOCKER_ROWS)), timeout=120)
        for _ in range(10)
    ]
    wait_until(lambda: server.inflight() == len(work))

    server.process.send_signal(signal.SIGTERM)
    server.wait_for_line(r"shutdown: 10 requests queued or running", 10)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(10) == 128 + signal.SIGTERM
    assert time.monotonic() - signalled < 3
    server.wait_for_line(r"second SIGTERM: exiting now", 1)
    for future in work:  # the connection is gone: every client hears it
        assert future.exception(10).code() is grpc.StatusCode.UNAVAILABLE


def test_requests_still_running_when_the_grace_period_ends_get_unavailable(
    slow_repository: tuple[Path, float],
) -> None:
    """In-process (the same Server.stop the signal calls): a grace too short for the queue."""
    server = RunningServer(slow_repository[0])
    try:
        blocker = server.stub.ModelInfer.future(
            infer_request("slow", rows(BLOCKER_ROWS)), timeout=60
        )
        wait_until(lambda: server.server.dataplane.inflight == 1)
        queued = [
            server.stub.ModelInfer.future(infer_request("slow", rows(16)), timeout=60)
            for _ in range(4)
        ]
        # each has reached the server: in flight, or (taking turns with the blocker's chunks)
        # already answered
        wait_until(lambda: server.server.dataplane.inflight + sum(f.done() for f in queued) == 5)
        started = time.monotonic()
        server.run(server.server.stop(grace=0.5, lame_duck=0))
        assert time.monotonic() - started < 5
        # the short requests ran between the blocker's chunks and were answered in the grace
        # period; the blocker was not, and is answered too: none is left hanging
        for future in queued:
            assert output_arrays(future.result(10))["y"].shape == (16, 1)
        error = blocker.exception(10)
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert error.details() == "Cancelling all calls"
        assert server.server.dataplane.inflight == 0
    finally:
        server.close()


def test_a_stop_with_no_grace_ends_cleanly_every_time(slow_repository: tuple[Path, float]) -> None:
    """grace=0 cancels what runs at once; Server.stop then ends the calls that never end by
    themselves. The two must not overlap inside grpc.aio (a second shutdown racing the first
    reached the destroyed core server and crashed the process about one stop in three)."""
    for _ in range(10):
        server = RunningServer(slow_repository[0])
        with grpc.insecure_channel(server.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=60
            )
            assert next(watch).status == SERVING
            result = server.stub.ModelInfer(infer_request("slow", rows(4)), timeout=60)
            assert output_arrays(result)["y"].shape == (4, 1)
            server.close()
            assert server.server.dataplane.inflight == 0
            with pytest.raises(grpc.RpcError):
                for _ in watch:  # the Watch ends with the server
                    pass
