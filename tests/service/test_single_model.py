"""One model served from a folder of its own (repository.SingleModel; `plexserve serve
--model-name NAME --model-dir DIR`), the layout KServe's storage initializer leaves in /mnt/models:
a SavedModel directly in DIR, or version folders; read in place; readiness follows that model."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from plexserve.cli import main
from plexserve.export import export_model
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.repository import SingleModel
from tests.harness import RunningServer, constant_model, infer_request, output_arrays

X = {"x": np.ones((1, 2), np.float32)}


def saved_model_folder(tmp_path: Path, value: float) -> Path:
    """A SavedModel's files in a folder of their own (what a storageUri points at)."""
    export_model(constant_model(value), tmp_path / "staging", "m", 1)
    folder = tmp_path / f"saved-model-{value:g}"
    shutil.move(tmp_path / "staging" / "m" / "1", folder)
    return folder


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    """Every file under `folder` with its size and mtime: serving must change none of them."""
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    )


def read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def http_status(server: RunningServer, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server.http.port}{path}") as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture()
def serve_folder() -> Iterator[list[RunningServer]]:
    servers: list[RunningServer] = []
    yield servers
    for server in servers:
        server.close()


def start(servers: list[RunningServer], name: str, folder: Path) -> RunningServer:
    running = RunningServer(folder, single_model=SingleModel(name, folder))
    servers.append(running)
    return running


def test_a_saved_model_directly_in_the_folder_serves_as_version_1(
    tmp_path: Path, serve_folder: list[RunningServer]
) -> None:
    models = saved_model_folder(tmp_path, 3.0)  # /mnt/models/saved_model.pb, variables/, ...
    read_only(models)
    before = snapshot(models)
    server = start(serve_folder, "flowers", models)

    assert server.stub.ServerReady(pb.ServerReadyRequest()).ready
    assert server.stub.ModelReady(pb.ModelReadyRequest(name="flowers")).ready
    metadata = server.stub.ModelMetadata(pb.ModelMetadataRequest(name="flowers"))
    assert list(metadata.versions) == ["1"]
    response = server.stub.ModelInfer(infer_request("flowers", X))
    assert response.model_version == "1"
    assert output_arrays(response)["y"].tolist() == [[3.0]]
    index = server.stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    assert [(m.name, m.version, m.state) for m in index] == [("flowers", "1", "AVAILABLE")]
    assert http_status(server, "/v2/health/ready") == 200
    assert http_status(server, "/v2/models/flowers/ready") == 200

    with pytest.raises(grpc.RpcError) as caught:  # the folder's own sub-folders are no models
        server.stub.ModelInfer(infer_request("variables", X))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert snapshot(models) == before  # read in place: nothing copied in, nothing written


def test_version_folders_serve_as_versions_with_the_folders_config_yaml(
    tmp_path: Path, serve_folder: list[RunningServer]
) -> None:
    models = tmp_path / "mnt-models"
    models.mkdir()
    shutil.move(saved_model_folder(tmp_path, 1.0), models / "1")
    shutil.move(saved_model_folder(tmp_path, 2.0), models / "2")
    (models / "config.yaml").write_text("version_policy: all\nbatching: {max_batch_size: 4}\n")
    server = start(serve_folder, "ranker", models)

    metadata = server.stub.ModelMetadata(pb.ModelMetadataRequest(name="ranker"))
    assert list(metadata.versions) == ["1", "2"]
    latest = server.stub.ModelInfer(infer_request("ranker", X))
    assert (latest.model_version, output_arrays(latest)["y"].tolist()) == ("2", [[2.0]])
    first = server.stub.ModelInfer(infer_request("ranker", X, version="1"))
    assert output_arrays(first)["y"].tolist() == [[1.0]]
    config = server.stub.ModelConfig(pb.ModelConfigRequest(name="ranker")).config
    assert config.max_batch_size == 4


def test_a_model_that_fails_to_load_keeps_the_server_not_ready(
    tmp_path: Path, serve_folder: list[RunningServer]
) -> None:
    models = tmp_path / "mnt-models"
    models.mkdir()
    (models / "saved_model.pb").write_bytes(b"not a SavedModel")
    server = start(serve_folder, "broken", models)

    assert not server.stub.ServerReady(pb.ServerReadyRequest()).ready
    assert not server.stub.ModelReady(pb.ModelReadyRequest(name="broken")).ready
    assert server.stub.ServerLive(pb.ServerLiveRequest()).live
    assert http_status(server, "/v2/health/ready") == 503
    assert http_status(server, "/v2/health/live") == 200


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model-name", "m"], "--model-name and --model-dir go together"),
        (["--model-dir", "{tmp}"], "--model-name and --model-dir go together"),
        (["--model-name", "m", "--model-dir", "{tmp}/nowhere"], "nowhere: no such directory"),
        (["--model-name", "m", "--model-dir", "{tmp}"], "holds no SavedModel: expected"),
        (["--model-name", "../up", "--model-dir", "{tmp}"], "invalid model name '../up'"),
    ],
)
def test_serve_refuses_a_model_folder_it_cannot_serve_naming_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    args = [flag.replace("{tmp}", str(tmp_path)) for flag in flags]
    assert main(["serve", *args, "--grpc-port", "0", "--http-port", "0"]) == 2
    assert message in capsys.readouterr().err


def test_repo_and_model_dir_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["serve", "--repo", str(tmp_path), "--model-name", "m", "--model-dir", str(tmp_path)])
    assert caught.value.code == 2
    assert "not allowed with argument --repo" in capsys.readouterr().err
