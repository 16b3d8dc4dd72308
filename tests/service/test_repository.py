"""Repository loading: the newest version serves, a broken model fails alone, the lifecycle
takes only its own steps, and a model being unloaded is never called unknown by name."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plexserve.errors import ModelNotFound
from plexserve.export import export_model
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.repository import (
    IllegalTransition,
    ModelRepository,
    ModelState,
    ModelVersion,
    load_runner,
)
from plexserve.runner import SignatureRunner
from tests.harness import RunningServer, constant_model, infer_request, output_arrays


@pytest.fixture(scope="module")
def mixed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("mixed")
    export_model(constant_model(1.0), root, "versioned")
    export_model(constant_model(2.0), root, "versioned")
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    running = RunningServer(root)
    yield running
    running.close()


def test_the_newest_version_serves(mixed_server: RunningServer) -> None:
    response = mixed_server.stub.ModelInfer(
        infer_request("versioned", {"x": np.ones((1, 2), np.float32)})
    )
    assert response.model_version == "2"
    assert output_arrays(response)["y"].tolist() == [[2.0]]
    with pytest.raises(grpc.RpcError) as caught:
        mixed_server.stub.ModelInfer(
            infer_request("versioned", {"x": np.ones((1, 2), np.float32)}, version="1")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "versions: [2]" in caught.value.details()


def test_a_broken_model_fails_alone_with_its_reason(mixed_server: RunningServer) -> None:
    index = {
        (m.name, m.version): m
        for m in mixed_server.stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    }
    assert index["versioned", "2"].state == "AVAILABLE"
    assert index["broken", "1"].state == "FAILED"
    assert index["broken", "1"].reason  # says why

    with pytest.raises(grpc.RpcError) as caught:
        mixed_server.stub.ModelInfer(infer_request("broken", {"x": np.ones((1, 2), np.float32)}))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "'broken' has no available version: 1 FAILED" in caught.value.details()

    assert not mixed_server.stub.ModelReady(pb.ModelReadyRequest(name="broken")).ready
    assert mixed_server.stub.ModelReady(pb.ModelReadyRequest(name="versioned")).ready
    assert not mixed_server.stub.ServerReady(pb.ServerReadyRequest()).ready  # not every model is
    health = health_pb2_grpc.HealthStub(mixed_server.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="broken")).status
        == health_pb2.HealthCheckResponse.NOT_SERVING
    )
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="versioned")).status
        == health_pb2.HealthCheckResponse.SERVING
    )


def test_a_model_with_a_bad_config_yaml_fails_alone_naming_file_and_field(tmp_path: Path) -> None:
    export_model(constant_model(1.0), tmp_path, "good")
    export_model(constant_model(1.0), tmp_path, "misconfigured")
    (tmp_path / "misconfigured" / "config.yaml").write_text("batching: {max_batch_size: -1}\n")
    running = RunningServer(tmp_path)
    try:
        index = {
            m.name: m for m in running.stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
        }
        assert index["good"].state == "AVAILABLE"
        assert index["misconfigured"].state == "FAILED"
        assert (
            "misconfigured/config.yaml: batching.max_batch_size: -1"
            in index["misconfigured"].reason
        )
    finally:
        running.close()


def test_config_yaml_batching_settings_reach_model_config(tmp_path: Path) -> None:
    export_model(constant_model(1.0), tmp_path, "padded")
    (tmp_path / "padded" / "config.yaml").write_text(
        "batching: {allowed_batch_sizes: [1, 2, 4, 8], max_queue_delay_us: 250}\n"
    )
    export_model(constant_model(1.0), tmp_path, "unbatched")
    (tmp_path / "unbatched" / "config.yaml").write_text("batching: {enabled: false}\n")
    running = RunningServer(tmp_path)
    try:
        config = running.stub.ModelConfig(pb.ModelConfigRequest(name="padded")).config
        assert config.max_batch_size == 8
        assert list(config.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8]
        assert config.dynamic_batching.max_queue_delay_microseconds == 250
        unbatched = running.stub.ModelConfig(pb.ModelConfigRequest(name="unbatched")).config
        assert not unbatched.HasField("dynamic_batching")
        response = running.stub.ModelInfer(
            infer_request("padded", {"x": np.ones((3, 2), np.float32)})
        )
        assert output_arrays(response)["y"].tolist() == [[1.0]] * 3  # padded to 4, trimmed to 3
        stats = running.server.repository.resolve("padded").stats
        assert (stats.executions, stats.rows, stats.padding_rows) == (1, 3, 1)
    finally:
        running.close()


def test_version_labels_resolve_to_their_version(tmp_path: Path) -> None:
    export_model(constant_model(1.0), tmp_path, "labelled")
    export_model(constant_model(2.0), tmp_path, "labelled")
    (tmp_path / "labelled" / "config.yaml").write_text(
        "version_policy: all\nversion_labels: {stable: 1, canary: 2}\n"
    )
    running = RunningServer(tmp_path)
    try:
        repository = running.server.repository
        assert repository.resolve_label("labelled", "stable").version == 1
        assert repository.resolve_label("labelled", "canary").version == 2
        with pytest.raises(Exception, match=r"no version label 'beta'; labels: \{'canary': 2"):
            repository.resolve_label("labelled", "beta")
    finally:
        running.close()


def test_the_lifecycle_takes_only_its_own_steps(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path)
    version = ModelVersion("m", 1, tmp_path)
    for illegal in (ModelState.AVAILABLE, ModelState.END):
        with pytest.raises(IllegalTransition, match="m version 1: LOADING -> "):
            repository._set_state(version, illegal)
    for step in (ModelState.WARMING, ModelState.AVAILABLE, ModelState.UNLOADING):
        repository._set_state(version, step)
    with pytest.raises(IllegalTransition, match="UNLOADING -> AVAILABLE"):
        repository._set_state(version, ModelState.AVAILABLE)
    repository._set_state(version, ModelState.END)
    assert version.state is ModelState.END


def test_a_version_unloaded_while_it_loads_ends_and_its_load_closes_what_it_loaded(
    tmp_path: Path,
) -> None:
    """Shutdown during start-up: the load returns after the unload, and must not revive it."""
    export_model(constant_model(1.0), tmp_path, "m")
    release = threading.Event()
    closed: list[SignatureRunner] = []

    def gated(path: Path, threads: int) -> SignatureRunner:
        release.wait(60)
        runner = load_runner(path, threads)
        close = runner.close
        runner.close = lambda: (closed.append(runner), close())[1]  # type: ignore[method-assign]
        return runner

    async def scenario() -> list[ModelState]:
        repository = ModelRepository(tmp_path, load_runner=gated)
        states: list[ModelState] = []
        repository.listeners.append(lambda mv, previous, took: states.append(mv.state))
        loading = asyncio.create_task(repository.load_all())
        while not states:
            await asyncio.sleep(0.01)
        await repository.close()
        release.set()
        await loading  # no IllegalTransition: the load sees the unload and stops there
        assert "m" not in repository and len(closed) == 1
        return states

    assert asyncio.run(scenario()) == [ModelState.LOADING, ModelState.UNLOADING, ModelState.END]


def test_a_model_whose_last_version_unloads_is_unknown_without_being_listed(
    tmp_path: Path,
) -> None:
    """The moment its last version ends, a model is gone: never "unknown model 'm'; available
    models: ['m']" (what a request arriving in that moment was told)."""
    export_model(constant_model(1.0), tmp_path, "m")
    export_model(constant_model(1.0), tmp_path, "other")

    async def scenario() -> str:
        repository = ModelRepository(tmp_path)
        repository.requested = set()  # explicit model control
        await repository.load_model("m")
        await repository.load_model("other")
        told: list[str] = []

        def ask() -> None:  # a request in the loop step right after the version ended
            try:
                repository.resolve("m")
            except ModelNotFound as error:
                told.append(error.message)

        def on_change(mv: ModelVersion, previous: ModelState, took: float) -> None:
            if mv.state is ModelState.END:
                asyncio.get_running_loop().call_soon(ask)

        repository.listeners.append(on_change)
        await repository.unload_model("m")
        await repository.close()
        return told[0]

    assert asyncio.run(scenario()) == "unknown model 'm'; available models: ['other']"
