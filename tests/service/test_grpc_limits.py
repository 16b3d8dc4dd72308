"""The gRPC port's share of the process: idle connections are closed, and clients that hold
connections open cannot take every file descriptor (health on the HTTP port keeps answering, and
nothing floods the log)."""

from __future__ import annotations

import http.client
import re
import resource
import socket
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from plexserve.export import export_model
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc
from tests.harness import RunningServer, constant_model, wait_until
from tests.service.test_shutdown import plexserve_command


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc_limits")
    export_model(constant_model(1.0), root, "m")
    return root


def test_an_idle_connection_is_closed_and_the_client_reconnects(repository: Path) -> None:
    server = RunningServer(repository, max_connection_idle=0.5)
    states: list[grpc.ChannelConnectivity] = []
    try:
        assert server.stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
        server.channel.subscribe(states.append)
        wait_until(lambda: grpc.ChannelConnectivity.IDLE in states, 30)  # the server's GOAWAY
        assert server.stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
    finally:
        server.channel.unsubscribe(states.append)
        server.close()


def test_held_grpc_connections_leave_health_and_the_log_alone(repository: Path) -> None:
    """A process limited to 384 open files: 300 connections that never say anything get 128
    (half of what is left after 128 reserved; the HTTP port has the other half); beyond, the
    gRPC port closes new connections at once, health still answers on the HTTP port, grpc
    does not log a line per accept() retry, and gRPC serves again once they are gone."""

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (384, 384))

    process = subprocess.Popen(
        [
            *plexserve_command(),
            "serve",
            f"--repo={repository}",
            "--host=127.0.0.1",
            "--grpc-port=0",
            "--http-port=0",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit_files,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or []), daemon=True)
    reader.start()
    try:

        def port(pattern: str) -> int:
            wait_until(lambda: any(re.search(pattern, line) for line in lines), 120)
            return int(next(m.group(1) for line in lines if (m := re.search(pattern, line))))

        http_port = port(r"HTTP listening on [\d.]+:(\d+)")
        grpc_port = port(r"gRPC listening on [\d.]+:(\d+)")
        wait_until(lambda: any("m version 1: WARMING -> AVAILABLE" in line for line in lines))
        before = len(lines)
        held = [socket.create_connection(("127.0.0.1", grpc_port), timeout=10) for _ in range(300)]
        time.sleep(3)  # long enough for grpc to retry accept() a few times, were it out of files

        def live(timeout: float = 10) -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                return stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout).live

        with pytest.raises(grpc.RpcError) as caught:
            live(timeout=3)
        assert caught.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        connection.request("GET", "/v2/health/ready")
        assert connection.getresponse().status == 200
        connection.close()
        assert not [line for line in lines[before:] if "limit" in line or "Traceback" in line]
        for sock in held:
            sock.close()
        wait_until(lambda: _answers(live))
    finally:
        process.kill()
        process.wait(30)


def _answers(call: object) -> bool:
    try:
        return bool(call())  # type: ignore[operator]
    except grpc.RpcError:
        return False
