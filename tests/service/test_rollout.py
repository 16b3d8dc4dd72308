"""Rollouts (service/server.py `start`, `stop` and `serve`; docs/rollouts.md): rolling restarts
behind round-robin clients fail no request; the gRPC port opens only once the start-up models
are loaded; a busy gRPC port stops the server at start; SIGTERM ends no accepted call CANCELLED;
renewed TLS certificates are taken without a restart (tests/service/test_tls.py)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plexserve.cli import main
from plexserve.export import export_model
from plexserve.loop import ServingEventLoop
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc
from plexserve.repository import load_runner
from plexserve.server import Server, ServerSettings
from plexserve.settings import SettingsError
from tests.harness import RunningServer, constant_model, infer_request, output_arrays, wait_until
from tests.rolling import SETUPS, RollingRestart, free_ports, this_checkout_command

X = {"x": np.ones((1, 2), np.float32)}
SERVING = health_pb2.HealthCheckResponse.SERVING
DOCS = Path(__file__).resolve().parents[2] / "docs" / "rollouts.md"
K8S_TARGET = "dns:///plexserve-grpc.plexserve.svc.cluster.local:8500"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rollout")
    export_model(constant_model(1.0), root, "m")
    return root


def test_a_rolling_restart_fails_no_request_of_health_checking_round_robin_clients(
    repository: Path, tmp_path: Path
) -> None:
    """Three replicas, two restarted in turn under load; one round_robin channel over all
    three for each client set-up: round_robin alone, and with gRPC health checking (and a
    retry policy for UNAVAILABLE: docs/rollouts.md)."""
    rolling = RollingRestart(
        this_checkout_command(),
        repository,
        "m",
        flags=["--lame-duck=1", "--grace-period=10", "--tf-intra-op-threads=1"],
        clients=2,
        setups=("plain", "health"),
        warmup=0.5,
    )
    outcomes = rolling.run(tmp_path)
    health, plain = outcomes["health"], outcomes["plain"]
    # Health checking: the clients leave each replica at the start of its lame duck.
    assert health.failures == [], health.summary()
    # round_robin alone leaves at GOAWAY: nothing is refused and nothing is NOT_FOUND. A call
    # it sent in the instant before reading the GOAWAY reaches a gRPC server that has begun to
    # stop, which gRPC core ends CANCELLED (no server can answer it): at most the one call each
    # closed-loop client has in flight, per restart.
    assert set(plain.failures) <= {"CANCELLED: CANCELLED"}, plain.summary()
    assert len(plain.failures) <= rolling.clients * rolling.restarts, plain.summary()
    assert health.answered > 100 and plain.answered > 100
    assert rolling.exit_codes == [0] * 5  # two restarted, then all three stopped


class Starting:
    """A Server on its own loop thread whose model loads wait for `loaded` to be set: the
    moment between `plexserve serve` and its models being ready, held still."""

    def __init__(self, repository: Path, grpc_port: int) -> None:
        self.loaded = threading.Event()
        self.loop = ServingEventLoop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        settings = ServerSettings(repository, host="127.0.0.1", grpc_port=grpc_port, http_port=0)
        self.server = self.run(self._create(settings))
        self.starting = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop)

    async def _create(self, settings: ServerSettings) -> Server:
        server = Server(settings)

        def gated(path: Path, threads: int):  # type: ignore[no-untyped-def]
            self.loaded.wait(60)
            return load_runner(path, threads)

        server.repository.load_runner = gated
        return server

    def run(self, coroutine, timeout: float = 60):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def http(self, path: str, body: dict[str, object] | None = None) -> tuple[int, str]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.server.http.port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def close(self) -> None:
        self.loaded.set()
        try:
            self.starting.result(60)
        except Exception:  # noqa: BLE001 - a test about a failed start already checked it
            pass
        self.run(self.server.stop(grace=0, lame_duck=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def two_models(tmp_path: Path) -> Path:
    export_model(constant_model(1.0), tmp_path, "first")
    export_model(constant_model(2.0), tmp_path, "second")
    return tmp_path


def test_the_grpc_port_opens_once_the_start_up_models_are_loaded(two_models: Path) -> None:
    (port,) = free_ports(1)
    starting = Starting(two_models, port)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        wait_until(lambda: "first" in starting.server.repository)  # loading, held at the gate
        # Closed, not open-and-answering NOT_FOUND: no client reaches a server that does not
        # know its model yet; a gRPC client sees UNAVAILABLE (no connection) and goes elsewhere.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(infer_request("first", X), timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        # The HTTP port is open for probes: alive, not ready. Its inference says UNAVAILABLE
        # for the model loading and for the one waiting its turn, never NOT_FOUND.
        assert starting.http("/v2/health/live")[0] == 200
        assert starting.http("/v2/health/ready")[0] == 503
        body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 1]}]}
        status, text = starting.http("/v2/models/first/infer", body)
        assert status == 503 and "1 LOADING" in text, text
        status, text = starting.http("/v2/models/second/infer", body)
        assert status == 503 and "'second' is waiting to load" in text, text
        assert starting.http("/v2/models/third/infer", body)[0] == 404  # unknown stays unknown

        starting.loaded.set()
        starting.starting.result(60)
        # (wait_for_ready: the channel retries its connection after a backoff)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30, wait_for_ready=True).ready
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == SERVING
        for name, value in (("first", 1.0), ("second", 2.0)):
            response = stub.ModelInfer(infer_request(name, X), timeout=10)
            assert output_arrays(response)["y"].tolist() == [[value]]
        assert starting.http("/v2/health/ready")[0] == 200
    finally:
        channel.close()
        starting.close()


@pytest.fixture
def running(repository: Path) -> Iterator[RunningServer]:
    server = RunningServer(repository)
    yield server
    server.close()


def serve(repository: Path, port: int) -> int:
    """`plexserve serve` in-process on `port`; its exit status (it must stop at start)."""
    argv = ["serve", f"--repo={repository}", "--host=127.0.0.1", f"--grpc-port={port}"]
    return main([*argv, "--http-port=0"])


def test_a_second_server_on_a_busy_grpc_port_stops_at_start(
    repository: Path, running: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    port = running.server.grpc_port
    assert serve(repository, port) == 2
    error = capsys.readouterr().err
    assert f"--grpc-port {port}: 127.0.0.1:{port} is already in use" in error
    # the first server was not disturbed: it takes every connection
    assert running.stub.ModelInfer(infer_request("m", X)).model_version == "1"


def test_a_port_shared_with_so_reuseport_is_busy_too(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """grpcio's own default (SO_REUSEPORT) would let two servers share the port silently."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        assert serve(repository, port) == 2
    assert "is already in use" in capsys.readouterr().err


def test_a_port_taken_while_the_models_load_stops_the_start(two_models: Path) -> None:
    (port,) = free_ports(1)
    starting = Starting(two_models, port)
    try:
        wait_until(lambda: "first" in starting.server.repository)
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            other.bind(("127.0.0.1", port))
            other.listen()
            starting.loaded.set()
            with pytest.raises(SettingsError, match="is already in use"):
                starting.starting.result(60)
    finally:
        starting.close()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), re.DOTALL)


def test_the_documented_client_set_up_is_the_one_the_rolling_restart_proves() -> None:
    (service_config,) = code_blocks("json")
    assert json.loads(service_config) == SETUPS["health"]


def test_the_documented_grpcio_and_tritonclient_examples_run(running: RunningServer) -> None:
    grpcio, tritonclient = code_blocks("python")[:2]
    target = f"ipv4:{running.address}"
    assert K8S_TARGET in grpcio and K8S_TARGET in tritonclient
    namespace: dict[str, object] = {}
    exec(grpcio.replace(K8S_TARGET, target), namespace)  # the page's own example, as it is
    channel = namespace["channel"]
    assert isinstance(channel, grpc.Channel)
    with channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30, wait_for_ready=True).ready
        response = stub.ModelInfer(infer_request("m", X), timeout=30)
        assert output_arrays(response)["y"].tolist() == [[1.0]]
    # tritonclient in a process of its own (its protobuf modules clash with ours)
    script = (
        grpcio.split("channel = ")[0]  # SERVICE_CONFIG
        + tritonclient.replace(K8S_TARGET, target)
        + "import numpy as np\n"
        "x = triton.InferInput('x', [1, 2], 'FP32')\n"
        "x.set_data_from_numpy(np.ones((1, 2), np.float32))\n"
        "print(client.is_server_ready(), client.infer('m', [x]).as_numpy('y').tolist())\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert finished.stdout.split(maxsplit=1) == ["True", "[[1.0]]\n"], finished.stderr
