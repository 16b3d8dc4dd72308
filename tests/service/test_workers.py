"""`plexserve serve --workers N`: front-end worker processes on the gRPC port in front of one
model process, each a real process started by the real command, on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from plexserve.export import export_model
from plexserve.models import default_registry
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import SMALL, DemoModel
from tests.harness import ServeProcess, infer_request, output_arrays, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ATOL = 1e-5
BIG_ROWS = (64 * 1024 * 1024 - 64 * 1024) // (16 * 4)  # an echo request just under 64 MiB


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, DemoModel]]:
    """echo (batching off, room for a 64 MiB request), multi_task (batched) and
    text_classifier (string inputs)."""
    root = tmp_path_factory.mktemp("workers")
    models = {}
    for name in ("echo", "multi_task", "text_classifier"):
        model = default_registry.get(name).build(**SMALL[name])
        export_model(model, root, name)
        models[name] = DemoModel(name, model)
    (root / "echo" / "config.yaml").write_text(
        f"batching: {{enabled: false}}\nmax_request_rows: {BIG_ROWS}\n"
    )
    return root, models


@pytest.fixture(scope="module")
def workers(repository: tuple[Path, dict[str, DemoModel]]) -> Iterator[ServeProcess]:
    server = ServeProcess(repository[0], "--workers=2")
    wait_until(lambda: len(server.pids()) == 3)
    yield server
    server.close()


def one_channel_per_worker(server: ServeProcess, count: int = 2) -> dict[str, grpc.Channel]:
    """A channel whose connection each worker holds (new connections until each got one)."""
    channels: dict[str, grpc.Channel] = {}
    spare = []
    for _ in range(64):
        before = server.connections()
        channel = grpc.insecure_channel(
            f"127.0.0.1:{server.grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10)
        after = server.connections()
        (owner,) = [name for name in after if after[name] > before.get(name, 0)]
        if owner in channels:
            spare.append(channel)
        else:
            channels[owner] = channel
        if len(channels) == count:
            break
    for channel in spare:
        channel.close()
    assert len(channels) == count, f"connections went to {sorted(channels)} only"
    return channels


def test_the_front_end_workers_import_no_tensorflow_and_the_model_process_does(
    workers: ServeProcess,
) -> None:
    pids = workers.pids()
    assert sorted(pids) == ["model", "worker 1", "worker 2"]

    def has_tensorflow(pid: int) -> bool:
        return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()

    assert has_tensorflow(pids["model"])
    assert not has_tensorflow(pids["worker 1"]) and not has_tensorflow(pids["worker 2"])
    assert not has_tensorflow(workers.process.pid)  # the supervisor neither
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, plexserve.supervisor, plexserve.frontend; "
            "print('tensorflow' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == "False"


def test_traffic_spreads_over_the_workers_and_each_gets_the_keras_numbers(
    workers: ServeProcess, repository: tuple[Path, dict[str, DemoModel]]
) -> None:
    """The 200-request mixed-row concurrency test, through both workers: every request gets
    what the model computes for its own rows alone, and batches merge requests of both."""
    model = repository[1]["multi_task"]
    channels = one_channel_per_worker(workers)
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels.values()]
    samples = [model.sample(rows=1 + i % 5, seed=100 + i) for i in range(200)]
    futures = [
        stubs[i % 2].ModelInfer.future(infer_request("multi_task", s))
        for i, s in enumerate(samples)
    ]
    expected = model.predict({n: np.concatenate([s[n] for s in samples]) for n in samples[0]})
    offset = 0
    for sample, future in zip(samples, futures, strict=True):
        got, rows = output_arrays(future.result(timeout=60)), len(sample["numeric"])
        for output, values in expected.items():
            np.testing.assert_allclose(
                got[output], values[offset : offset + rows], atol=ATOL, err_msg=output
            )
        offset += rows
    statistics = stubs[0].ModelStatistics(pb.ModelStatisticsRequest(name="multi_task"))
    (stats,) = statistics.model_stats
    assert stats.inference_stats.success.count >= 200
    assert stats.execution_count < stats.inference_stats.success.count  # batches merged
    for channel in channels.values():
        channel.close()


def test_string_tensors_cross_to_the_model_process_and_back(
    workers: ServeProcess, repository: tuple[Path, dict[str, DemoModel]]
) -> None:
    model = repository[1]["text_classifier"]
    inputs = model.sample(rows=4, seed=5)
    got = output_arrays(workers.stub.ModelInfer(infer_request("text_classifier", inputs)))
    for output, values in model.predict(inputs).items():
        np.testing.assert_allclose(got[output], values, atol=ATOL, err_msg=output)


def test_metrics_count_every_request_of_every_worker_exactly(workers: ServeProcess) -> None:
    channels = one_channel_per_worker(workers)
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels.values()]

    def count(code: str, model: str = "echo") -> float:
        return workers.metric("plexserve_requests_total", model=model, code=code)

    before = {code: count(code) for code in ("OK", "INVALID_ARGUMENT")}
    unknown = count("NOT_FOUND", "(unknown)")
    good = infer_request("echo", {"x": np.ones((3, 16), np.float32)})
    bad = infer_request("echo", {"x": np.ones((3, 5), np.float32)})
    for stub in stubs:
        for _ in range(7):
            stub.ModelInfer(good, timeout=30)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(bad, timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "input 'x'" in (refused.value.details() or "")
        with pytest.raises(grpc.RpcError) as missing:
            stub.ModelInfer(infer_request("nope", {"x": np.ones((1, 16), np.float32)}), timeout=30)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # one scrape, right after the last answer: every worker's counts are in it
    assert count("OK") - before["OK"] == 14
    assert count("INVALID_ARGUMENT") - before["INVALID_ARGUMENT"] == 6
    assert count("NOT_FOUND", "(unknown)") - unknown == 2
    for channel in channels.values():
        channel.close()


def test_a_64_mib_request_goes_through_shared_memory(workers: ServeProcess) -> None:
    x = np.random.default_rng(3).standard_normal((BIG_ROWS, 16)).astype(np.float32)
    assert x.nbytes > 63 * 1024 * 1024
    limit = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(f"127.0.0.1:{workers.grpc_port}", options=limit) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(infer_request("echo", {"x": x}), timeout=120)
    np.testing.assert_array_equal(output_arrays(reply)["y"], x)


def test_killing_a_worker_fails_only_its_requests_and_it_is_restarted(
    workers: ServeProcess, repository: tuple[Path, dict[str, DemoModel]]
) -> None:
    channels = one_channel_per_worker(workers)
    victim = workers.pids()["worker 1"]
    stubs = {name: pb_grpc.GRPCInferenceServiceStub(c) for name, c in channels.items()}
    request = infer_request("multi_task", repository[1]["multi_task"].sample(rows=2))

    def load(stub: Any, seconds: float) -> list[grpc.StatusCode]:
        codes = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:  # (a call waits for a connection: only calls in flight can fail)
                stub.ModelInfer(request, timeout=30, wait_for_ready=True)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
        return codes

    with ThreadPoolExecutor(4) as pool:
        on_victim = [pool.submit(load, stubs["worker 1"], 3.0) for _ in range(2)]
        on_survivor = [pool.submit(load, stubs["worker 2"], 3.0) for _ in range(2)]
        wait_until(lambda: workers.metric("plexserve_requests_total", model="multi_task") > 20)
        os.kill(victim, signal.SIGKILL)
        survived = [code for future in on_survivor for code in future.result()]
        cut = [code for future in on_victim for code in future.result()]
    assert set(survived) == {grpc.StatusCode.OK}, "the other worker's clients lose nothing"
    # the killed worker's clients: what was in flight fails UNAVAILABLE, then they reconnect
    assert set(cut) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    assert cut.count(grpc.StatusCode.UNAVAILABLE) <= 2 * 2, cut  # at most the calls in flight
    workers.wait_for_line(r"worker 1 \(pid \d+\) exited with status -9: restarting")
    wait_until(lambda: workers.pids()["worker 1"] != victim)
    fresh = one_channel_per_worker(workers)  # the new worker 1 takes connections again
    reply = pb_grpc.GRPCInferenceServiceStub(fresh["worker 1"]).ModelInfer(request, timeout=30)
    assert "score" in output_arrays(reply)
    for channel in [*channels.values(), *fresh.values()]:
        channel.close()


def test_killing_the_model_process_answers_unavailable_until_it_is_back(
    workers: ServeProcess,
) -> None:
    model = workers.pids()["model"]
    request = infer_request("echo", {"x": np.ones((2, 16), np.float32)})
    workers.stub.ModelInfer(request, timeout=30)
    codes: list[grpc.StatusCode] = []
    messages: set[str] = set()

    def answered() -> bool:
        try:
            workers.stub.ModelInfer(request, timeout=30)
            codes.append(grpc.StatusCode.OK)
            return True
        except grpc.RpcError as error:
            codes.append(error.code())
            messages.add(error.details() or "")
            return False

    os.kill(model, signal.SIGKILL)
    wait_until(lambda: not answered(), timeout=30)  # the workers noticed at once
    assert "model process restarting: retry shortly" in messages
    check = health_pb2.HealthCheckRequest(service="")
    assert workers.health.Check(check, timeout=10).status == NOT_SERVING
    assert not workers.stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    wait_until(answered, timeout=120)  # restarted, models loaded, pushed to the workers
    assert {code for code in codes if code != grpc.StatusCode.OK} == {grpc.StatusCode.UNAVAILABLE}
    wait_until(lambda: workers.health.Check(check, timeout=10).status == SERVING)
    assert workers.pids()["model"] != model
    workers.wait_for_line(r"model \(pid \d+\) exited with status -9: restarting")


def test_a_load_or_unload_through_one_worker_is_seen_by_every_worker(
    repository: tuple[Path, dict[str, DemoModel]],
) -> None:
    server = ServeProcess(repository[0], "--workers=2", "--model-control=explicit")
    try:
        wait_until(lambda: len(server.pids()) == 3)
        channels = one_channel_per_worker(server)
        one, two = (pb_grpc.GRPCInferenceServiceStub(channels[w]) for w in ("worker 1", "worker 2"))
        request = infer_request("echo", {"x": np.ones((1, 16), np.float32)})

        def ready(stub: Any) -> bool:
            try:
                return bool(stub.ModelReady(pb.ModelReadyRequest(name="echo"), timeout=10).ready)
            except grpc.RpcError as error:  # not loaded: an unknown model
                assert error.code() == grpc.StatusCode.NOT_FOUND
                return False

        assert not ready(one) and not ready(two)

        one.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="echo"), timeout=60)
        # the model process pushes the new state to every worker
        wait_until(lambda: ready(two))
        assert output_arrays(two.ModelInfer(request, timeout=30))["y"].shape == (1, 16)
        index = two.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        assert {(m.name, m.state) for m in index.models} == {
            ("echo", "AVAILABLE"),
            ("multi_task", "UNAVAILABLE"),
            ("text_classifier", "UNAVAILABLE"),
        }

        two.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="echo"), timeout=60)
        wait_until(lambda: not ready(one))
        with pytest.raises(grpc.RpcError) as gone:
            one.ModelInfer(request, timeout=30)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        for channel in channels.values():
            channel.close()
    finally:
        server.close()
