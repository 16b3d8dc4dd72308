"""Model lifecycle end to end: version swaps under continuous load (poll and explicit control),
failure isolation, unload with requests in flight, version policies, name validation."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plexserve.export import export_model
from plexserve.proto import grpc_service_pb2 as pb
from tests.harness import RunningServer, constant_model, infer_request, output_arrays, wait_until

X = np.ones((1, 2), np.float32)


def index(server: RunningServer) -> set[tuple[str, str, str]]:
    models = server.stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    return {(m.name, m.version, m.state) for m in models}


class Client(threading.Thread):
    """Sends one request after another until stopped; records (version, value) or the error."""

    def __init__(self, server: RunningServer, model: str) -> None:
        super().__init__(daemon=True)
        self.stub, self.model = server.stub, model
        self.answers: list[tuple[str, float]] = []
        self.failures: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                response = self.stub.ModelInfer(infer_request(self.model, {"x": X}), timeout=30)
                self.answers.append(
                    (response.model_version, float(output_arrays(response)["y"][0, 0]))
                )
            except grpc.RpcError as error:
                self.failures.append(f"{error.code()}: {error.details()}")

    def seen(self, version: str) -> bool:
        return any(v == version for v, _ in self.answers)

    def stop(self) -> None:
        self.stopped.set()
        self.join(30)


def assert_switched_cleanly(client: Client) -> None:
    assert client.failures == []
    versions = [v for v, _ in client.answers]
    assert versions[0] == "1" and versions[-1] == "2"
    first_v2 = versions.index("2")
    assert set(versions[first_v2:]) == {"2"}  # one client in sequence: never back to 1
    assert {(v, value) for v, value in client.answers} == {("1", 1.0), ("2", 2.0)}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    export_model(constant_model(1.0), root, "swap")
    return root


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    """Version 2, built elsewhere, to be copied in."""
    export_model(constant_model(2.0), tmp_path / "staging", "swap", version=2)
    return tmp_path / "staging" / "swap" / "2"


def test_a_version_copied_into_a_polled_repository_swaps_in_without_a_failed_request(
    repo: Path, staged: Path
) -> None:
    server = RunningServer(repo, model_control="poll", poll_interval=0.05)
    client = Client(server, "swap")
    try:
        client.start()
        wait_until(lambda: client.seen("1"))
        shutil.copytree(staged, repo / "swap" / "2")  # not atomic: the poller must wait it out
        wait_until(lambda: client.seen("2"))
        wait_until(lambda: ("swap", "1", "AVAILABLE") not in index(server))
        count = len(client.answers)
        wait_until(lambda: len(client.answers) > count + 20)
        client.stop()
        assert_switched_cleanly(client)
        assert index(server) == {("swap", "2", "AVAILABLE")}
    finally:
        client.stop()
        server.close()


def test_explicit_load_and_unload_swap_without_a_failed_request(repo: Path, staged: Path) -> None:
    server = RunningServer(repo, model_control="explicit", load_models=("swap",))
    client = Client(server, "swap")
    try:
        client.start()
        wait_until(lambda: client.seen("1"))
        shutil.copytree(staged, repo / "swap" / "2")
        server.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="swap"))
        count = len(client.answers)
        wait_until(lambda: len(client.answers) > count + 20)
        client.stop()
        assert_switched_cleanly(client)
        assert index(server) == {("swap", "2", "AVAILABLE")}

        server.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="swap"))
        assert index(server) == {("swap", "", "UNAVAILABLE")}
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.ModelInfer(infer_request("swap", {"x": X}))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert not server.stub.ServerReady(pb.ServerReadyRequest()).ready
        health = health_pb2_grpc.HealthStub(server.channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="swap")).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        client.stop()
        server.close()


def test_requests_in_flight_finish_on_the_version_being_unloaded(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    export_model(constant_model(3.0), root, "busy")
    (root / "busy" / "config.yaml").write_text(
        "batching: {max_batch_size: 8, max_queue_size: 100000}\n"
    )
    server = RunningServer(root, model_control="explicit", load_models=("busy",))
    try:
        big = {"x": np.ones((8_000, 2), np.float32)}  # 1,000 executions: long enough to overlap
        futures = [server.stub.ModelInfer.future(infer_request("busy", big)) for _ in range(4)]
        model = server.server.repository.resolve("busy")
        wait_until(lambda: model.inflight > 0)
        server.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="busy"))
        assert model.inflight == 0 and model.state.value == "END"  # unload waited for them
        finished = 0
        for future in futures:
            try:
                assert output_arrays(future.result())["y"].shape == (8_000, 1)
                finished += 1
            except grpc.RpcError as error:  # arrived after the unload began: refused cleanly
                assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
        assert finished >= 1
    finally:
        server.close()


def test_a_corrupt_version_fails_alone_and_a_later_good_version_recovers(
    repo: Path, tmp_path: Path
) -> None:
    broken = repo / "swap" / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    export_model(constant_model(5.0), repo, "other")
    server = RunningServer(repo, model_control="explicit", load_models=("swap", "other"))
    try:
        assert ("swap", "2", "FAILED") in index(server)
        assert ("swap", "1", "AVAILABLE") in index(server)  # the version it had keeps serving
        response = server.stub.ModelInfer(infer_request("swap", {"x": X}))
        assert response.model_version == "1"
        assert server.stub.ModelInfer(infer_request("other", {"x": X})).model_version == "1"

        with pytest.raises(grpc.RpcError) as caught:  # loading again says what failed
            server.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="swap"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "version 2:" in caught.value.details()
        assert "still serving versions [1]" in caught.value.details()

        export_model(constant_model(3.0), repo, "swap", version=3)
        server.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="swap"))
        assert {e for e in index(server) if e[0] == "swap"} == {("swap", "3", "AVAILABLE")}
        value = output_arrays(server.stub.ModelInfer(infer_request("swap", {"x": X})))["y"]
        assert value.tolist() == [[3.0]]
    finally:
        server.close()


@pytest.mark.parametrize(
    ("policy", "loaded"),
    [
        ("", {"3": 3.0}),
        ("version_policy: {latest: 2}", {"2": 2.0, "3": 3.0}),
        ("version_policy: all", {"1": 1.0, "2": 2.0, "3": 3.0}),
        ("version_policy: {specific: [1, 3]}", {"1": 1.0, "3": 3.0}),
    ],
)
def test_version_policies_choose_what_serves(
    tmp_path: Path, policy: str, loaded: dict[str, float]
) -> None:
    for value in (1.0, 2.0, 3.0):
        export_model(constant_model(value), tmp_path, "m")
    (tmp_path / "m" / "config.yaml").write_text(policy + "\n")
    server = RunningServer(tmp_path)
    try:
        assert index(server) == {("m", v, "AVAILABLE") for v in loaded}
        for version, value in loaded.items():
            response = server.stub.ModelInfer(infer_request("m", {"x": X}, version=version))
            assert output_arrays(response)["y"].tolist() == [[value]]
        newest = server.stub.ModelInfer(infer_request("m", {"x": X}))
        assert newest.model_version == max(loaded, key=int)
    finally:
        server.close()


@pytest.fixture
def explicit_server(repo: Path) -> Iterator[RunningServer]:
    outside = repo.parent / "outside"
    export_model(constant_model(9.0), outside, "secret")
    (repo / "escape").symlink_to(outside / "secret")
    server = RunningServer(repo, model_control="explicit")
    yield server
    server.close()


@pytest.mark.parametrize(
    "name", ["../outside/secret", "a/b", "/etc", "", "..", "tab\there", "escape"]
)
def test_model_names_that_leave_the_repository_are_invalid_argument(
    explicit_server: RunningServer, name: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        explicit_server.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "invalid model name" in caught.value.details()
    assert not any(e[0] == "secret" for e in index(explicit_server))


def test_infer_with_a_path_as_model_name_is_invalid_argument(
    explicit_server: RunningServer,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        explicit_server.stub.ModelInfer(infer_request("../outside/secret", {"x": X}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_load_and_unload_need_explicit_control(repo: Path) -> None:
    server = RunningServer(repo)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="swap"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--model-control explicit" in caught.value.details()
    finally:
        server.close()


def test_explicit_mode_loads_only_what_is_asked(repo: Path) -> None:
    export_model(constant_model(4.0), repo, "second")
    server = RunningServer(repo, model_control="explicit", load_models=("second",))
    try:
        assert index(server) == {("second", "1", "AVAILABLE"), ("swap", "", "UNAVAILABLE")}
        assert server.stub.ServerReady(pb.ServerReadyRequest()).ready  # all it was asked for
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="absent"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "models: ['second', 'swap']" in caught.value.details()
    finally:
        server.close()
