"""Hostile and careless input, over every protocol that takes it: the exact status each gets (a
client's mistake is never INTERNAL), messages cut to 1 KiB, versions that are not ASCII
digits, shapes numpy cannot lay out, the per-model row limit, and a log that does not grow by a
traceback per bad request."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import keras
import numpy as np
import pytest
from google.protobuf import wrappers_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from plexserve.errors import MAX_MESSAGE_BYTES
from plexserve.export import export_model
from plexserve.grpc.oip import InferenceServicer
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc
from tests.harness import (
    RunningServer,
    constant_model,
    infer_request,
    output_arrays,
    rest,
    wait_until,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
HUGE_BESIDE_ZERO = [0, 2**62]
Tensor = pb.ModelInferRequest.InferInputTensor


def grpc_error(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=60)
    return caught.value


def features(rows: int = 2) -> np.ndarray:
    return np.ones((rows, 8), np.float32)


# --- gRPC, Open Inference Protocol -------------------------------------------------------------

GRPC_CASES: dict[str, tuple[pb.ModelInferRequest, grpc.StatusCode, list[str]]] = {
    "a zero dimension beside a huge one, raw": (
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[Tensor(name="features", datatype="FP32", shape=HUGE_BESIDE_ZERO)],
            raw_input_contents=[b""],
        ),
        INVALID,
        ["input 'features'", "shape [0, 4611686018427387904] is too large"],
    ),
    "a zero dimension beside a huge one, typed": (
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[
                Tensor(
                    name="features",
                    datatype="FP32",
                    shape=HUGE_BESIDE_ZERO,
                    contents=pb.InferTensorContents(),
                )
            ],
        ),
        INVALID,
        ["input 'features'", "too large"],
    ),
    "a zero dimension beside a huge one, FP16 without content": (
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[Tensor(name="features", datatype="FP16", shape=HUGE_BESIDE_ZERO)],
        ),
        INVALID,
        ["input 'features'", "too large"],
    ),
    "BYTES [0, 2**63-1], raw": (
        pb.ModelInferRequest(
            model_name="text_classifier",
            inputs=[Tensor(name="text", datatype="BYTES", shape=[0, 2**63 - 1])],
            raw_input_contents=[b""],
        ),
        INVALID,
        ["input 'text'", "too large"],
    ),
    "BYTES [0, 2**63-1], typed": (
        pb.ModelInferRequest(
            model_name="text_classifier",
            inputs=[Tensor(name="text", datatype="BYTES", shape=[0, 2**63 - 1])],
        ),
        INVALID,
        ["input 'text'", "too large"],
    ),
    "more dimensions than numpy takes": (
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[Tensor(name="features", datatype="FP32", shape=[1] * 65)],
            raw_input_contents=[b"\0" * 4],
        ),
        INVALID,
        ["input 'features'", "65 dimensions; at most 32"],
    ),
    "a superscript digit as model_version": (
        infer_request("mlp", {"features": features()}, version="²"),
        INVALID,
        ["model_version is '²', not a version", "ASCII digits"],
    ),
    "an Arabic-Indic digit as model_version": (
        infer_request("mlp", {"features": features()}, version="١"),
        INVALID,
        ["model_version is '١', not a version"],
    ),
    "a 5,000-digit model_version": (
        infer_request("mlp", {"features": features()}, version="1" * 5000),
        INVALID,
        ["model_version is '11111111111111111111'... (5000 characters), not a version"],
    ),
    "a negative model_version": (
        infer_request("mlp", {"features": features()}, version="-1"),
        INVALID,
        ["model_version is '-1', not a version"],
    ),
    "a model_version with a space": (
        infer_request("mlp", {"features": features()}, version=" 1"),
        INVALID,
        ["model_version is ' 1', not a version"],
    ),
    "20 digits of model_version": (
        infer_request("mlp", {"features": features()}, version="9" * 20),
        INVALID,
        ["at most 19 of them"],
    ),
    "19 digits of model_version: a version, not there": (
        infer_request("mlp", {"features": features()}, version="9" * 19),
        grpc.StatusCode.NOT_FOUND,
        ["'mlp' has no version '9999999999999999999'"],
    ),
    "10,000 unexpected input names": (
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[Tensor(name="features", datatype="FP32", shape=[0, 8])]
            + [Tensor(name=f"extra_{i:05d}", datatype="FP32", shape=[0]) for i in range(10_000)],
        ),
        INVALID,
        [
            "unexpected inputs ['extra_00000', ",
            "... and 9990 more]",
            "the model takes ['features']",
        ],
    ),
    "10,000 unknown requested outputs": (
        infer_request(
            "mlp", {"features": features()}, outputs=tuple(f"out_{i:05d}" for i in range(10_000))
        ),
        INVALID,
        ["unknown requested outputs ['out_00000', ", "... and 9990 more]"],
    ),
    "a 100,000-character model name": (
        infer_request("m" * 100_000, {"features": features()}),
        grpc.StatusCode.NOT_FOUND,
        ["unknown model 'mmmm", "more characters"],
    ),
    "rows over the model's max_request_rows": (
        infer_request("echo", {"x": np.zeros((513, 16), np.float32)}),
        INVALID,
        [
            "the request has 513 rows; model 'echo' takes at most 512 per request "
            "(its max_request_rows)"
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(GRPC_CASES))
def test_hostile_model_infer_gets_its_exact_code(server: RunningServer, case: str) -> None:
    request, code, fragments = GRPC_CASES[case]
    error = grpc_error(server.stub.ModelInfer, request)
    assert error.code() == code, error.details()
    details = error.details()
    assert len(details.encode()) <= MAX_MESSAGE_BYTES, len(details)
    for fragment in fragments:
        assert fragment in details, details
    response = server.stub.ModelInfer(infer_request("mlp", {"features": features()}))
    assert output_arrays(response)["probabilities"].shape == (2, 3)


def test_the_row_limit_takes_a_request_of_exactly_max_request_rows(server: RunningServer) -> None:
    x = np.arange(512 * 16, dtype=np.float32).reshape(512, 16)
    response = server.stub.ModelInfer(infer_request("echo", {"x": x}))
    np.testing.assert_array_equal(output_arrays(response)["y"], x)


@pytest.mark.parametrize(
    "call, make",
    [
        ("ModelMetadata", lambda v: pb.ModelMetadataRequest(name="mlp", version=v)),
        ("ModelReady", lambda v: pb.ModelReadyRequest(name="mlp", version=v)),
        ("ModelConfig", lambda v: pb.ModelConfigRequest(name="mlp", version=v)),
        ("ModelStatistics", lambda v: pb.ModelStatisticsRequest(name="mlp", version=v)),
        ("ModelStatistics", lambda v: pb.ModelStatisticsRequest(version=v)),
    ],
)
@pytest.mark.parametrize("version", ["²", "١", "1" * 5000, "1e3"])
def test_every_rpc_that_takes_a_version_refuses_one_that_is_not_digits(
    server: RunningServer, call: str, make: Callable[[str], Any], version: str
) -> None:
    error = grpc_error(getattr(server.stub, call), make(version))
    assert error.code() == INVALID, error.details()
    assert error.details().startswith("version is "), error.details()
    assert "not a version" in error.details()


def test_stream_infer_errors_are_cut_to_a_kib_and_the_stream_goes_on(server: RunningServer) -> None:
    bad = infer_request(
        "mlp", {"features": features()}, outputs=tuple(f"o{i}" for i in range(10_000))
    )
    bad.id = "bad"
    good = infer_request("mlp", {"features": features()}, request_id="good")
    responses = {
        r.infer_response.id: r for r in server.stub.ModelStreamInfer(iter([bad, good]), timeout=60)
    }
    message = responses["bad"].error_message
    assert len(message.encode()) <= MAX_MESSAGE_BYTES and "... and 9990 more]" in message
    assert responses["good"].error_message == ""


# --- gRPC, TF Serving's API ---------------------------------------------------------------------


def tf_predict(model: str, tensors: dict[str, tensor_pb2.TensorProto], **spec: Any) -> Any:
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model, **spec), inputs=tensors
    )
    return request


def tf_tensor(dtype: int, dims: list[int], **values: Any) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
    )
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **values)


ZERO_ROWS = tf_tensor(types_pb2.DT_FLOAT, [0, 8])
TF_CASES: dict[str, tuple[Any, grpc.StatusCode, list[str]]] = {
    "a zero dimension beside a huge one": (
        tf_predict("mlp", {"features": tf_tensor(types_pb2.DT_FLOAT, HUGE_BESIDE_ZERO)}),
        INVALID,
        ["input 'features'", "too large"],
    ),
    "DT_STRING [0, 2**63-1]": (
        tf_predict("text_classifier", {"text": tf_tensor(types_pb2.DT_STRING, [0, 2**63 - 1])}),
        INVALID,
        ["input 'text'", "too large"],
    ),
    "a negative model_spec.version": (
        tf_predict("mlp", {"features": ZERO_ROWS}, version=wrappers_pb2.Int64Value(value=-1)),
        INVALID,
        ["model_spec.version is -1, not a version"],
    ),
    "10,000 unexpected inputs": (
        tf_predict(
            "mlp",
            {
                "features": ZERO_ROWS,
                **{f"extra_{i:05d}": tf_tensor(types_pb2.DT_FLOAT, [0]) for i in range(10_000)},
            },
        ),
        INVALID,
        ["... and 9990 more]"],
    ),
    "rows over the model's max_request_rows": (
        tf_predict(
            "echo",
            {"x": tf_tensor(types_pb2.DT_FLOAT, [513, 16], tensor_content=b"\0" * 513 * 64)},
        ),
        INVALID,
        ["the request has 513 rows; model 'echo' takes at most 512"],
    ),
}


@pytest.mark.parametrize("case", sorted(TF_CASES))
def test_hostile_predict_gets_its_exact_code(server: RunningServer, case: str) -> None:
    request, code, fragments = TF_CASES[case]
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    error = grpc_error(stub.Predict, request)
    assert error.code() == code, error.details()
    assert len(error.details().encode()) <= MAX_MESSAGE_BYTES
    for fragment in fragments:
        assert fragment in error.details(), error.details()


def test_tf_serving_output_filter_of_10000_names_is_cut(server: RunningServer) -> None:
    request = tf_predict("mlp", {"features": ZERO_ROWS})
    request.output_filter.extend(f"out_{i:05d}" for i in range(10_000))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    error = grpc_error(stub.Predict, request)
    assert error.code() == INVALID
    assert "... and 9990 more]" in error.details()
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name="mlp", version=wrappers_pb2.Int64Value(value=-3)),
        metadata_field=["signature_def"],
    )
    error = grpc_error(stub.GetModelMetadata, metadata)
    assert error.code() == INVALID and "model_spec.version is -3" in error.details()


# --- REST: the Open Inference Protocol and TF Serving's API ------------------------------------


def error_of(reply: Any, status: int) -> str:
    assert reply.status == status, reply.body
    message = str(reply.json()["error"])
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    return message


def oip_body(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


MLP_BODY = oip_body("features", "FP32", [1, 8], [0.0] * 8)


@pytest.mark.parametrize("version", ["²", "١", "1" * 5000, "abc", "-1"])
def test_rest_paths_refuse_a_version_that_is_not_digits(
    server: RunningServer, version: str
) -> None:
    quoted = quote(version, safe="")
    gets = [
        f"/v2/models/mlp/versions/{quoted}",
        f"/v2/models/mlp/versions/{quoted}/ready",
        f"/v2/models/mlp/versions/{quoted}/config",
        f"/v2/models/mlp/versions/{quoted}/stats",
        f"/v1/models/mlp/versions/{quoted}",
        f"/v1/models/mlp/versions/{quoted}/metadata",
    ]
    for path in gets:
        message = error_of(rest(server, path), 400)
        assert message.startswith("the version in the path is "), (path, message)
    posts = [
        (f"/v2/models/mlp/versions/{quoted}/infer", MLP_BODY),
        (f"/v1/models/mlp/versions/{quoted}:predict", {"instances": [[0.0] * 8]}),
    ]
    for path, body in posts:
        message = error_of(rest(server, path, body), 400)
        assert "not a version" in message, (path, message)


REST_CASES: dict[str, tuple[str, dict[str, Any], int, list[str]]] = {
    "a zero dimension beside a huge one": (
        "/v2/models/mlp/infer",
        oip_body("features", "FP32", HUGE_BESIDE_ZERO, []),
        400,
        ["too large"],
    ),
    "a zero dimension beside one past int64": (
        "/v2/models/mlp/infer",
        oip_body("features", "FP32", [0, 2**64 - 1], []),
        400,
        ["too large"],
    ),
    "a dimension past uint64 (orjson reads it as a float)": (
        "/v2/models/mlp/infer",
        oip_body("features", "FP32", [0, 10**30], []),
        400,
        ["inputs[0].shape must be a list of integers"],
    ),
    "BYTES [0, 2**63-1]": (
        "/v2/models/text_classifier/infer",
        oip_body("text", "BYTES", [0, 2**63 - 1], []),
        400,
        ["too large"],
    ),
    "10,000 unexpected inputs": (
        "/v2/models/mlp/infer",
        {
            "inputs": MLP_BODY["inputs"]
            + [
                {"name": f"extra_{i:05d}", "datatype": "FP32", "shape": [0], "data": []}
                for i in range(10_000)
            ]
        },
        400,
        ["... and 9990 more]"],
    ),
    "10,000 unknown outputs": (
        "/v2/models/mlp/infer",
        {**MLP_BODY, "outputs": [{"name": f"out_{i:05d}"} for i in range(10_000)]},
        400,
        ["... and 9990 more]"],
    ),
    "rows over the model's max_request_rows, OIP": (
        "/v2/models/echo/infer",
        oip_body("x", "FP32", [513, 16], [0.0] * 513 * 16),
        400,
        ["the request has 513 rows; model 'echo' takes at most 512"],
    ),
    "10,000 unexpected names in an instance": (
        "/v1/models/mlp:predict",
        {"instances": [{"features": [0.0] * 8, **{f"extra_{i}": 0 for i in range(10_000)}}]},
        400,
        ["... and 9990 more]"],
    ),
    "rows over the model's max_request_rows, TF Serving": (
        "/v1/models/echo:predict",
        {"instances": [[0.0] * 16] * 513},
        400,
        ["the request has 513 rows; model 'echo' takes at most 512"],
    ),
    "a 5,000-character model name": (
        "/v2/models/" + "m" * 5_000 + "/infer",
        MLP_BODY,
        404,
        ["unknown model 'mmm", "more characters"],
    ),
}


@pytest.mark.parametrize("case", sorted(REST_CASES))
def test_hostile_rest_requests_get_their_exact_status(server: RunningServer, case: str) -> None:
    path, body, status, fragments = REST_CASES[case]
    message = error_of(rest(server, path, body), status)
    for fragment in fragments:
        assert fragment in message, message


def test_rest_binary_bytes_of_a_huge_empty_shape_are_400(server: RunningServer) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [0, 2**63 - 1],
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    ).encode()
    reply = rest(
        server,
        "/v2/models/text_classifier/infer",
        header,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert "too large" in error_of(reply, 400)


# --- the log: a client's mistakes leave no traceback ------------------------------------------


def hostile_battery(server: RunningServer) -> int:
    """Every hostile request above, once; returns how many were sent."""
    sent = 0
    for request, _, _ in GRPC_CASES.values():
        with pytest.raises(grpc.RpcError):
            server.stub.ModelInfer(request, timeout=60)
        sent += 1
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    for request, _, _ in TF_CASES.values():
        with pytest.raises(grpc.RpcError):
            stub.Predict(request, timeout=60)
        sent += 1
    for path, body, status, _ in REST_CASES.values():
        assert rest(server, path, body).status == status
        sent += 1
    # not even HTTP: a request line over aiohttp's 8190 bytes, a header without a colon
    assert rest(server, "/v2/models/" + "m" * 20_000).status == 400
    with socket.create_connection(("127.0.0.1", server.server.http.port), timeout=30) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        assert sock.recv(64).split(b" ")[1] == b"400"
    sent += 2
    bad = struct.pack("<I", 99) + b"abc"
    for _ in range(5):  # and a few of the first battery's, for good measure
        with pytest.raises(grpc.RpcError):
            server.stub.ModelInfer(
                pb.ModelInferRequest(
                    model_name="text_classifier",
                    inputs=[Tensor(name="text", datatype="BYTES", shape=[1])],
                    raw_input_contents=[bad],
                ),
                timeout=60,
            )
        sent += 1
    return sent


def test_malformed_requests_do_not_grow_the_log_by_a_traceback_each(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    with caplog.at_level(logging.INFO):
        sent = sum(hostile_battery(server) for _ in range(3))
    logged = [r for r in caplog.records if r.levelno >= logging.INFO]
    size = sum(len(formatter.format(r)) for r in logged)
    assert not [r for r in logged if r.exc_info], [r.getMessage() for r in logged]
    assert not [r for r in logged if r.levelno >= logging.WARNING]
    assert size / sent < 10, (size, sent, [r.getMessage()[:200] for r in logged])


# --- a repository of its own: wide responses, a slow model, broken models -----------------------


def wide_echo() -> keras.Model:
    """16 KiB per row, both ways: a few rows fill a client's receive window."""
    x = keras.Input((4096,), name="x")
    return keras.Model({"x": x}, {"y": keras.layers.Identity()(x)})


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    export_model(wide_echo(), root, "wide")
    (root / "wide" / "config.yaml").write_text("batching: {max_batch_size: 64}\n")
    export_model(constant_model(1.0), root, "slow")
    # One row per execution: a large request takes seconds, so that what happens to its rest
    # when its client goes away can be seen.
    (root / "slow" / "config.yaml").write_text(
        "max_request_rows: 20000\nbatching: {max_batch_size: 1, max_queue_size: 40000}\n"
    )
    export_model(constant_model(2.0), root, "ok")
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    export_model(constant_model(3.0), root, "misconfigured")
    (root / "misconfigured" / "config.yaml").write_text("batching: {max_batch_size: [oops\n")
    return root


@pytest.fixture(scope="module")
def own(repository: Path) -> Iterator[RunningServer]:
    running = RunningServer(repository)
    yield running
    running.close()


# --- ModelStreamInfer: a client that does not read ---------------------------------------------


def test_a_stream_whose_client_does_not_read_is_bounded_then_cancelled(
    own: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def start() -> tuple[grpc.aio.Server, int]:
        bounded = grpc.aio.server()
        servicer = InferenceServicer(
            own.server.dataplane,
            "test",
            own.server.ready,
            stream_window=4,
            stream_stall_seconds=1.0,
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, bounded)
        port = bounded.add_insecure_port("127.0.0.1:0")
        await bounded.start()
        return bounded, port

    bounded, port = own.run(start())
    stats = own.server.repository.resolve("wide").stats
    before = stats.success.count
    request = infer_request("wide", {"x": np.ones((64, 4096), np.float32)})  # 1 MiB each way
    offered = 100
    finished = threading.Event()

    def requests() -> Iterator[pb.ModelInferRequest]:
        for _ in range(offered):
            yield request
        finished.wait(120)  # the stream stays open: the client just never reads

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        with caplog.at_level(logging.INFO, logger="plexserve.grpc.oip"):
            responses = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
                requests(), timeout=120
            )
            # The server reads no more requests than its window (4) and the client's receive
            # buffer (a few MiB of responses) hold, then, a second later, cancels the stream.
            wait_until(
                lambda: any("the stream was cancelled" in r.getMessage() for r in caplog.records)
            )
            answered = stats.success.count - before
            assert 4 <= answered <= 24, answered  # of 100 offered
            time.sleep(0.5)
            assert stats.success.count - before == answered  # nothing more was read
            assert own.server.dataplane.inflight == 0
            received = 0
            with pytest.raises(grpc.RpcError) as caught:
                for _ in responses:
                    received += 1
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "waited 1 s for the client to read them" in caught.value.details()
        assert received < answered
    finally:
        finished.set()
        channel.close()
        own.run(bounded.stop(0))


# --- a request whose client goes away stops being computed -------------------------------------

SLOW_ROWS = 20_000


def slow_rows() -> dict[str, np.ndarray]:
    return {"x": np.ones((SLOW_ROWS, 2), np.float32)}


def assert_stops_computing(server: RunningServer, started: int) -> None:
    """The rest of the request left the queue, and executions stopped long before its end."""
    model = server.server.repository.resolve("slow")
    assert model.batcher is not None
    wait_until(lambda: model.batcher.queued_rows == 0 and model.inflight == 0)
    stopped = model.stats.executions
    time.sleep(0.5)
    assert model.stats.executions - stopped <= 1  # at most the batch already running
    assert stopped - started < SLOW_ROWS // 2, stopped - started


def running_for_a_while(server: RunningServer, started: int) -> None:
    """Wait until `slow` has run 20 executions since `started`: the request is being computed."""
    model = server.server.repository.resolve("slow")
    wait_until(lambda: model.stats.executions - started >= 20)


def test_grpc_cancel_and_deadline_drop_the_rest_of_a_large_request(own: RunningServer) -> None:
    model = own.server.repository.resolve("slow")
    started = model.stats.executions
    future = own.stub.ModelInfer.future(infer_request("slow", slow_rows()))
    running_for_a_while(own, started)
    future.cancel()
    assert_stops_computing(own, started)

    started = model.stats.executions
    with pytest.raises(grpc.RpcError) as caught:
        own.stub.ModelInfer(infer_request("slow", slow_rows()), timeout=1.0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_stops_computing(own, started)


def oip_json(rows: dict[str, np.ndarray], **parameters: Any) -> bytes:
    x = rows["x"]
    body: dict[str, Any] = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }
    if parameters:
        body["parameters"] = parameters
    return json.dumps(body).encode()


def test_rest_disconnect_and_timeout_drop_the_rest_of_a_large_request(own: RunningServer) -> None:
    model = own.server.repository.resolve("slow")
    for path, body in [
        ("/v2/models/slow/infer", oip_json(slow_rows())),
        ("/v1/models/slow:predict", json.dumps({"instances": [[1.0, 1.0]] * SLOW_ROWS}).encode()),
    ]:
        started = model.stats.executions
        sock = socket.create_connection(("127.0.0.1", own.server.http.port), timeout=30)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        running_for_a_while(own, started)
        sock.close()  # the client hangs up
        assert_stops_computing(own, started)

    started = model.stats.executions
    reply = rest(own, "/v2/models/slow/infer", oip_json(slow_rows(), timeout=1_000_000))
    assert reply.status == 504, reply.body
    assert_stops_computing(own, started)


# --- no filesystem path in what a client sees ---------------------------------------------------


def test_no_client_visible_message_names_a_filesystem_path(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Broken models (a file that is not a SavedModel, a config.yaml that is not YAML): every
    message a client can read about them, over gRPC and REST, in both protocols, names the
    model and what is wrong, never where the files are; the log keeps the full text."""
    private = {str(repository), str(repository.resolve()), "/tmp/"}
    with caplog.at_level(logging.INFO):
        running = RunningServer(
            repository,
            model_control="explicit",
            load_models=("ok", "broken", "misconfigured"),
        )
    try:
        stub = running.stub
        tf_models = model_service_pb2_grpc.ModelServiceStub(running.channel)
        messages: list[str] = []
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
        reasons = {m.name: m.reason for m in index.models}
        assert reasons["broken"].startswith("OSError: Cannot parse file")
        assert "<repository>/broken/1/saved_model.pb" in reasons["broken"]
        assert reasons["misconfigured"].startswith("SettingsError: <repository>/misconfigured/")
        messages += reasons.values()
        for name in ("broken", "misconfigured", "nope"):
            for call, request in [
                (stub.ModelInfer, infer_request(name, {"x": np.ones((1, 2), np.float32)})),
                (stub.ModelMetadata, pb.ModelMetadataRequest(name=name)),
                (stub.ModelConfig, pb.ModelConfigRequest(name=name)),
                (stub.ModelReady, pb.ModelReadyRequest(name=name, version="1")),
                (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=name)),
                (
                    tf_models.GetModelStatus,
                    get_model_status_pb2.GetModelStatusRequest(
                        model_spec=model_pb2.ModelSpec(name=name)
                    ),
                ),
            ]:
                try:
                    reply = call(request, timeout=120)
                    messages.append(str(reply))
                except grpc.RpcError as error:
                    messages.append(error.details())
            stream = stub.ModelStreamInfer(
                iter([infer_request(name, {"x": np.ones((1, 2), np.float32)})]), timeout=60
            )
            messages += [r.error_message for r in stream]
            for path, body in [
                (f"/v2/models/{name}/infer", oip_body("x", "FP32", [1, 2], [0.0, 0.0])),
                (f"/v2/models/{name}", None),
                (f"/v2/models/{name}/versions/1/ready", None),
                (f"/v2/repository/models/{name}/load", {}),
                (f"/v1/models/{name}", None),
                (f"/v1/models/{name}/metadata", None),
                (f"/v1/models/{name}:predict", {"instances": [[0.0, 0.0]]}),
            ]:
                messages.append(rest(running, path, body).body.decode())
        messages.append(rest(running, "/v2/repository/index", {}).body.decode())
        assert sum("<repository>/broken/1/saved_model.pb" in m for m in messages) > 10
        for message in messages:
            for place in private:
                assert place not in message, message
    finally:
        running.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{repository}/broken/1/saved_model.pb" in logged  # the log says where
