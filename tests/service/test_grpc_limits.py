"""The gRPC port's share of the process: idle connections are closed, and clients that hold
connections open cannot take every file descriptor (health on the HTTP port keeps answering, and
nothing floods the log)."""

from __future__ import annotations

import http.client
import socket
import time
from pathlib import Path

import grpc
import pytest

from plexserve.export import export_model
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc
from tests.harness import RunningServer, ServeProcess, constant_model, wait_until


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

    server = ServeProcess(repository, open_files=384)
    lines = server.lines
    try:
        http_port, grpc_port = server.http_port, server.grpc_port
        server.wait_for_line("m version 1: WARMING -> AVAILABLE")
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
        server.close()


def _answers(call: object) -> bool:
    try:
        return bool(call())  # type: ignore[operator]
    except grpc.RpcError:
        return False
