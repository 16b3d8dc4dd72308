"""The HTTP port itself: body limit, content types, read timeouts, the connection cap, metrics
and statistics labelled by protocol, REST and gRPC requests sharing batches, deadlines, and a
process whose stalled HTTP clients cannot take all its file descriptors."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest

from plexserve.export import export_model
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc
from tests.harness import (
    Reply,
    RunningServer,
    ServeProcess,
    infer_request,
    output_arrays,
    rest,
    wait_until,
)
from tests.service.test_observability import sample, scrape

LIMIT = 2048
Start = Callable[..., RunningServer]


def linear_model() -> keras.Model:
    x = keras.Input((2,), name="x")
    return keras.Model({"x": x}, {"y": keras.layers.Dense(1)(x)})


def oip_body(rows: int = 1) -> dict[str, object]:
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 2], "data": [1.0] * 2 * rows}]
    }


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rest_http")
    export_model(linear_model(), root, "m")
    export_model(linear_model(), root, "merged")
    # Up to 4 rows wait (long) for each other: the batch closes when the 4th row arrives.
    (root / "merged" / "config.yaml").write_text(
        "batching: {max_batch_size: 4, max_queue_delay_us: 30000000}\n"
    )
    return root


@pytest.fixture
def start(repository: Path) -> Iterator[Start]:
    started: list[RunningServer] = []

    def run(**settings: object) -> RunningServer:
        started.append(RunningServer(repository, **settings))
        return started[-1]

    yield run
    for server in started:
        server.close()


def error_of(reply: Reply, status: int) -> str:
    assert reply.status == status, reply.body
    return str(reply.json()["error"])


def connect(server: RunningServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.server.http.port), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_body_over_the_limit_is_413_and_the_server_keeps_serving(start: Start) -> None:
    server = start(max_message_bytes=LIMIT)
    big = json.dumps(oip_body(rows=200))
    assert len(big) > LIMIT
    reply = rest(server, "/v2/models/m/infer", big)
    assert f"more than the server's limit of {LIMIT} bytes" in error_of(reply, 413)
    assert reply.headers["Connection"] == "close"
    assert "limit" in error_of(rest(server, "/v1/models/m:predict", big), 413)
    # without a Content-Length (chunked), the limit is checked while reading
    connection = http.client.HTTPConnection("127.0.0.1", server.server.http.port, timeout=10)
    chunks = (big[i : i + 512].encode() for i in range(0, len(big), 512))
    connection.request("POST", "/v2/models/m/infer", chunks, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413
    assert "exceeds the server's limit" in json.loads(response.read())["error"]
    connection.close()
    assert rest(server, "/v2/models/m/infer", oip_body()).status == 200


def test_a_wrong_content_type_is_415(server: RunningServer) -> None:
    for content_type in ("application/xml", "multipart/form-data; boundary=x", "image/png"):
        reply = rest(server, "/v2/models/mlp/infer", "{}", headers={"Content-Type": content_type})
        message = error_of(reply, 415)
        assert f"Content-Type {content_type.split(';')[0]} is not accepted" in message
        reply = rest(server, "/v1/models/mlp:predict", "{}", headers={"Content-Type": content_type})
        assert error_of(reply, 415)
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8], "data": [0] * 8}]}
    for content_type in ("application/json", "text/plain;charset=UTF-8", "application/vnd+json"):
        reply = rest(server, "/v2/models/mlp/infer", body, headers={"Content-Type": content_type})
        assert reply.status == 200, (content_type, reply.body)


def test_stalled_heads_and_bodies_are_cut_off_after_the_read_timeout(start: Start) -> None:
    server = start(http_read_timeout=0.3)
    body = json.dumps(oip_body()).encode()
    with connect(server) as sock:  # the body stops after 10 bytes
        sock.sendall(
            b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert f"10 of {len(body)} bytes arrived, then nothing for 0.3 s".encode() in answer
    for partial in (b"GET /v2/health/live HTTP/1.1\r\nHost:", b""):  # a stalled head, or nothing
        with connect(server) as sock:
            sock.sendall(partial)
            started = time.monotonic()
            assert read_all(sock) == b""  # closed by the server, without an answer
            assert time.monotonic() - started < 5
    assert rest(server, "/v2/models/m/infer", oip_body()).status == 200


def test_connections_beyond_the_cap_are_answered_503_and_closed(start: Start) -> None:
    server = start(http_max_connections=3)
    held = [connect(server) for _ in range(3)]
    wait_until(lambda: server.server.http.open_connections == 3)
    with connect(server) as refused:
        answer = read_all(refused)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"too many open HTTP connections" in answer
    assert server.server.http.refused_connections == 1
    held[0].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")  # held ones still work
    assert held[0].recv(65536).startswith(b"HTTP/1.1 200 ")
    for sock in held:
        sock.close()
    wait_until(lambda: server.server.http.open_connections == 0)
    assert rest(server, "/v2/health/live").status == 200


def test_metrics_and_statistics_count_rest_requests_by_protocol(start: Start) -> None:
    server = start(max_message_bytes=LIMIT)
    for _ in range(2):
        assert rest(server, "/v2/models/m/infer", oip_body(rows=2)).status == 200
    assert rest(server, "/v1/models/m:predict", {"instances": [[1, 2]]}).status == 200
    assert rest(server, "/v2/models/m/infer", "{oops").status == 400
    assert rest(server, "/v1/models/m:predict", {"instances": ["a"]}).status == 400
    assert rest(server, "/v2/models/nope/infer", oip_body()).status == 404
    assert rest(server, "/v2/models/m/infer", "x" * (LIMIT + 1)).status == 413
    samples = scrape(server)
    count = "plexserve_requests_total"
    for protocol, code, expected in [
        ("v2-rest", "OK", 2),
        ("tfserving-rest", "OK", 1),
        ("v2-rest", "INVALID_ARGUMENT", 1),
        ("tfserving-rest", "INVALID_ARGUMENT", 1),
        ("v2-rest", "RESOURCE_EXHAUSTED", 1),
    ]:
        labels = {"model": "m", "version": "1", "protocol": protocol, "code": code}
        assert sample(samples, count, **labels) == expected, (protocol, code)
    unknown = {"model": "(unknown)", "version": "", "protocol": "v2-rest", "code": "NOT_FOUND"}
    assert sample(samples, count, **unknown) == 1
    (stats,) = rest(server, "/v2/models/m/stats").json()["model_stats"]
    assert (stats["inference_count"], stats["execution_count"]) == (5, 3)
    assert stats["inference_stats"]["fail"]["count"] == 3
    everything = rest(server, "/v2/models/stats").json()["model_stats"]
    assert {s["name"] for s in everything} == {"m", "merged"}


def test_rest_and_grpc_requests_for_one_model_share_executions(start: Start) -> None:
    server = start()
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    x = np.array([[1.0, 2.0]], np.float32)

    def over_grpc() -> np.ndarray:
        return output_arrays(stub.ModelInfer(infer_request("merged", {"x": x}), timeout=60))["y"]

    def over_oip_rest() -> np.ndarray:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
        return np.array(rest(server, "/v2/models/merged/infer", body).json()["outputs"][0]["data"])

    def over_tfserving_rest() -> np.ndarray:
        reply = rest(server, "/v1/models/merged:predict", {"instances": [[1.0, 2.0]]})
        return np.array(reply.json()["predictions"])

    calls = [over_grpc, over_grpc, over_oip_rest, over_tfserving_rest]
    with ThreadPoolExecutor(len(calls)) as pool:
        results = [f.result(60) for f in [pool.submit(call) for call in calls]]
    channel.close()
    for result in results[1:]:
        np.testing.assert_allclose(result.ravel(), results[0].ravel(), atol=1e-6)
    (stats,) = rest(server, "/v2/models/merged/stats").json()["model_stats"]
    assert stats["inference_count"] == 4
    assert stats["execution_count"] == 1  # one batch of 4 rows from three protocols
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [
        (4, 1)
    ]


def test_a_deadline_that_passes_in_the_queue_is_504(server: RunningServer) -> None:
    body = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8], "data": [0] * 8}],
        "parameters": {"timeout": 1},  # microseconds, as Triton counts them
    }
    message = error_of(rest(server, "/v2/models/mlp/infer", body), 504)
    assert "deadline passed" in message and "not computed" in message


def test_shutting_down_answers_503_and_closes_connections(start: Start) -> None:
    server = start()
    server.server.http.refuse_new_requests()  # shutdown, once the lame duck is over
    reply = rest(server, "/v2/models/m/infer", oip_body())
    assert "shutting down" in error_of(reply, 503)
    assert reply.headers["Connection"] == "close"
    assert "shutting down" in error_of(
        rest(server, "/v1/models/m:predict", {"inputs": [[1, 2]]}), 503
    )


def test_head_works_like_get_and_other_methods_are_405(server: RunningServer) -> None:
    head = rest(server, "/metrics", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Type"].startswith("text/plain")
    assert b"plexserve_requests_total" in rest(server, "/metrics").body
    reply = rest(server, "/v2/models/mlp/infer")
    assert reply.status == 405 and reply.headers["Allow"] == "POST"
    assert "GET is not allowed on /v2/models/mlp/infer" in reply.json()["error"]


def test_stalled_clients_cannot_take_every_file_descriptor(repository: Path) -> None:
    """A process limited to 384 open files: 300 silent HTTP clients get 128 connections (half
    what is left after 128 reserved), the rest a 503; gRPC still accepts; the silent ones are
    cut off after the read timeout, and the refusals are logged once, not once per connection."""

    server = ServeProcess(repository, "--http-read-timeout=2", open_files=384)
    lines = server.lines
    try:
        server.wait_for_line(r"HTTP listening on [\d.]+:\d+ .*at most 128 connections")
        http_port, grpc_port = server.http_port, server.grpc_port
        server.wait_for_line("merged version 1: WARMING -> AVAILABLE")
        silent = [
            socket.create_connection(("127.0.0.1", http_port), timeout=10) for _ in range(300)
        ]
        refused = 0
        for sock in silent:
            sock.setblocking(False)
        time.sleep(0.5)  # the server answers the refused ones at once
        for sock in silent:
            try:
                refused += sock.recv(64).startswith(b"HTTP/1.1 503")
            except BlockingIOError:
                pass
        assert refused == 300 - 128
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        for sock in silent:
            sock.setblocking(True)
            read_all(sock)  # the held ones are closed by the server after the read timeout
            sock.close()
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        connection.request("GET", "/v2/health/live")
        assert connection.getresponse().status == 200
        connection.close()
        assert sum("connections open, the limit" in line for line in lines) == 1
    finally:
        server.close()


def test_the_access_log_names_the_rest_protocol(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    server = start(access_log_sample=1.0)
    with caplog.at_level(logging.INFO, logger="plexserve.access"):
        assert rest(server, "/v2/models/m/infer", oip_body()).status == 200
        assert rest(server, "/v1/models/m:predict", {"instances": [[1, 2], [3, 4]]}).status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "plexserve.access"]
    assert [line.split(" ms=")[0] for line in lines] == [
        "v2-rest model=m version=1 code=OK rows=1",
        "tfserving-rest model=m version=1 code=OK rows=2",
    ]
