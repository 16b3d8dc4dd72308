"""TF Serving's gRPC API on plexserve's port, through tensorflow-serving-api's own stubs and
TensorFlow's own make_tensor_proto / make_ndarray: real SavedModels, a real server on port 0."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import wrappers_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from plexserve.export import export_model
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.repository import ModelState
from tests.conftest import BUILTINS, DemoModel
from tests.harness import RunningServer, constant_model, infer_request, output_arrays

ATOL = 1e-5
State = get_model_status_pb2.ModelVersionStatus.State

# The typed field TensorFlow puts each dtype in; written here independently of the server's codec.
TYPED_FIELD = {
    np.dtype(np.bool_): ("bool_val", types_pb2.DT_BOOL),
    np.dtype(np.int8): ("int_val", types_pb2.DT_INT8),
    np.dtype(np.int16): ("int_val", types_pb2.DT_INT16),
    np.dtype(np.int32): ("int_val", types_pb2.DT_INT32),
    np.dtype(np.uint8): ("int_val", types_pb2.DT_UINT8),
    np.dtype(np.uint16): ("int_val", types_pb2.DT_UINT16),
    np.dtype(np.int64): ("int64_val", types_pb2.DT_INT64),
    np.dtype(np.uint32): ("uint32_val", types_pb2.DT_UINT32),
    np.dtype(np.uint64): ("uint64_val", types_pb2.DT_UINT64),
    np.dtype(np.float16): ("half_val", types_pb2.DT_HALF),
    np.dtype(np.float32): ("float_val", types_pb2.DT_FLOAT),
    np.dtype(np.float64): ("double_val", types_pb2.DT_DOUBLE),
    np.dtype(object): ("string_val", types_pb2.DT_STRING),
}


def shape_proto(*dims: int) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
    )


def typed_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """`array` with every element in its dtype's *_val field (float16 as uint16 bit patterns)."""
    field, dtype = TYPED_FIELD[array.dtype]
    values = array.view(np.uint16) if array.dtype == np.float16 else array
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape_proto(*array.shape))
    getattr(proto, field).extend(values.ravel().tolist())
    return proto


def content_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """`array` in tensor_content (strings, which have no such form, in string_val)."""
    if array.dtype.kind == "O":
        return typed_proto(array)
    _, dtype = TYPED_FIELD[array.dtype]
    return tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=shape_proto(*array.shape), tensor_content=array.tobytes()
    )


def predict_request(
    model: str,
    inputs: Mapping[str, np.ndarray | tensor_pb2.TensorProto],
    version: int | None = None,
    label: str = "",
    signature: str = "",
    output_filter: tuple[str, ...] = (),
) -> predict_pb2.PredictRequest:
    """Arrays go through TensorFlow's own make_tensor_proto, as a TF Serving client sends them."""
    request = predict_pb2.PredictRequest(output_filter=output_filter)
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    for name, value in inputs.items():
        proto = value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        request.inputs[name].CopyFrom(proto)
    return request


def outputs_of(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


class TFServingClient:
    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(server.channel)

    def predict(self, *args: Any, **kwargs: Any) -> predict_pb2.PredictResponse:
        return self.predictions.Predict(predict_request(*args, **kwargs), timeout=60)

    def error(self, call: Any, request: Any) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=60)
        return caught.value


@pytest.fixture(scope="module")
def client(server: RunningServer) -> TFServingClient:
    return TFServingClient(server)


# --- a second repository: a float16 model, an all-dtypes echo, two labelled versions, a broken one


def half_model() -> keras.Model:
    """A float16 input (Dense computes in float32 behind it)."""
    h = keras.Input((4,), dtype="float16", name="h")
    return keras.Model({"h": h}, {"y": keras.layers.Dense(3, name="dense")(h)})


ECHO_DTYPES = [np.dtype(d) for d in TYPED_FIELD]


def echo_name(dtype: np.dtype) -> str:
    return "string" if dtype.kind == "O" else dtype.name


class Echo(tf.Module):
    """Returns every input unchanged: each dtype crosses the wire both ways."""

    @tf.function(
        input_signature=[
            {
                echo_name(d): tf.TensorSpec(
                    [None, 2], tf.string if d.kind == "O" else tf.as_dtype(d), name=echo_name(d)
                )
                for d in ECHO_DTYPES
            }
        ]
    )
    def serve(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {f"{name}_out": tf.identity(tensor) for name, tensor in inputs.items()}


def echo_inputs(rows: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = {}
    for dtype in ECHO_DTYPES:
        if dtype.kind == "O":
            array = np.array([f"s{i}".encode() for i in range(rows * 2)], dtype=object)
        elif dtype == np.bool_:
            array = rng.integers(0, 2, rows * 2).astype(bool)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            array = np.array([info.min, info.max] * rows, dtype=dtype)  # the extremes
        else:
            array = rng.standard_normal(rows * 2).astype(dtype)
        arrays[echo_name(dtype)] = array.reshape(rows, 2)
    return arrays


@pytest.fixture(scope="module")
def extra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, keras.Model]]:
    root: Path = tmp_path_factory.mktemp("tfserving_repository")
    half = half_model()
    export_model(half, root, "half")
    echo = Echo()
    tf.saved_model.save(echo, str(root / "echo" / "1"), signatures={"serving_default": echo.serve})
    export_model(constant_model(1.0), root, "labelled")
    export_model(constant_model(2.0), root, "labelled")
    (root / "labelled" / "config.yaml").write_text(
        "version_policy: all\nversion_labels: {stable: 1, canary: 2}\n"
    )
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    running = RunningServer(root)
    yield running, half
    running.close()


@pytest.fixture(scope="module")
def extra_client(extra: tuple[RunningServer, keras.Model]) -> TFServingClient:
    return TFServingClient(extra[0])


# --- Predict ---


@pytest.mark.parametrize("name", BUILTINS)
def test_predict_on_every_builtin_gives_the_keras_and_the_oip_numbers(
    server: RunningServer, client: TFServingClient, demo_models: dict[str, DemoModel], name: str
) -> None:
    model = demo_models[name]
    inputs = model.sample(rows=5, seed=3)
    response = client.predict(name, inputs)
    assert (response.model_spec.name, response.model_spec.version.value) == (name, 1)
    assert response.model_spec.signature_name == "serving_default"
    got = outputs_of(response)
    expected = model.predict(inputs)
    oip = output_arrays(server.stub.ModelInfer(infer_request(name, inputs)))
    assert sorted(got) == sorted(expected) == sorted(oip)
    for output, values in expected.items():
        assert got[output].dtype == oip[output].dtype, output
        np.testing.assert_array_equal(got[output], oip[output], err_msg=output)
        np.testing.assert_allclose(got[output], values, atol=ATOL, err_msg=output)


@pytest.mark.parametrize("name", ["multi_input", "text_classifier", "multi_task"])
def test_typed_val_fields_give_the_same_numbers_as_tensor_content(
    client: TFServingClient, demo_models: dict[str, DemoModel], name: str
) -> None:
    model = demo_models[name]
    inputs = model.sample(rows=4, seed=4)
    typed = {n: typed_proto(a) for n, a in inputs.items()}
    got = outputs_of(client.predict(name, typed))
    for output, values in model.predict(inputs).items():
        np.testing.assert_allclose(got[output], values, atol=ATOL, err_msg=output)


def test_responses_use_tensor_content_for_numbers_and_string_val_for_strings(
    extra_client: TFServingClient,
) -> None:
    response = extra_client.predict("echo", echo_inputs())
    for name, proto in response.outputs.items():
        if name == "string_out":
            assert proto.dtype == types_pb2.DT_STRING and len(proto.string_val) == 6
        else:
            assert proto.tensor_content and not proto.float_val and not proto.int_val, name


@pytest.mark.parametrize("encoding", ["tensor_content", "typed"])
def test_every_dtype_crosses_the_wire_both_ways(
    extra_client: TFServingClient, encoding: str
) -> None:
    arrays = echo_inputs()
    inputs = {
        name: typed_proto(a) if encoding == "typed" else content_proto(a)
        for name, a in arrays.items()
    }
    got = outputs_of(extra_client.predict("echo", inputs))
    assert sorted(got) == sorted(f"{name}_out" for name in arrays)
    for name, array in arrays.items():
        echoed = got[f"{name}_out"]
        assert echoed.dtype == (np.dtype(object) if array.dtype == object else array.dtype)
        np.testing.assert_array_equal(echoed, array, err_msg=name)


@pytest.mark.parametrize("encoding", ["tensor_content", "half_val"])
def test_float16_input_in_both_encodings(
    extra: tuple[RunningServer, keras.Model], extra_client: TFServingClient, encoding: str
) -> None:
    _, keras_model = extra
    h = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float16)
    sent = typed_proto(h) if encoding == "half_val" else content_proto(h)
    assert (encoding == "half_val") == bool(sent.half_val)
    got = outputs_of(extra_client.predict("half", {"h": sent}))
    expected = np.asarray(keras_model({"h": tf.constant(h)}, training=False)["y"])
    np.testing.assert_allclose(got["y"], expected, atol=ATOL)


def test_output_filter_returns_only_the_named_outputs(
    client: TFServingClient, demo_models: dict[str, DemoModel]
) -> None:
    model = demo_models["multi_task"]
    inputs = model.sample(rows=2, seed=6)
    response = client.predict("multi_task", inputs, output_filter=("score", "embedding"))
    got = outputs_of(response)
    assert sorted(got) == ["embedding", "score"]
    expected = model.predict(inputs)
    for output in got:
        np.testing.assert_allclose(got[output], expected[output], atol=ATOL, err_msg=output)


def test_a_scalar_per_row_input_may_come_as_batch_by_one(
    client: TFServingClient, demo_models: dict[str, DemoModel]
) -> None:
    model = demo_models["multi_input"]
    inputs = model.sample(rows=3, seed=8)
    as_column = {**inputs, "category": inputs["category"].reshape(3, 1)}
    got = outputs_of(client.predict("multi_input", as_column))
    np.testing.assert_allclose(got["score"], model.predict(inputs)["score"], atol=ATOL)


def test_version_and_version_label_route_to_their_version(
    extra_client: TFServingClient,
) -> None:
    x = {"x": np.ones((2, 2), np.float32)}
    cases: list[tuple[dict[str, Any], int]] = [
        ({}, 2),  # no version: the newest
        ({"version": 1}, 1),
        ({"version": 2}, 2),
        ({"label": "stable"}, 1),
        ({"label": "canary"}, 2),
    ]
    for spec, version in cases:
        response = extra_client.predict("labelled", x, **spec)
        assert response.model_spec.version.value == version, spec
        assert outputs_of(response)["y"].tolist() == [[float(version)]] * 2, spec


def test_zero_rows_return_empty_outputs(
    client: TFServingClient, demo_models: dict[str, DemoModel]
) -> None:
    model = demo_models["inception"]
    got = outputs_of(client.predict("inception", model.sample(rows=0)))
    assert got["probabilities"].shape == (0, 3)


def test_both_protocols_at_once_share_the_model_and_each_get_their_own_numbers(
    server: RunningServer, client: TFServingClient, demo_models: dict[str, DemoModel]
) -> None:
    model = demo_models["multi_task"]
    samples = [model.sample(rows=1 + i % 3, seed=200 + i) for i in range(24)]
    futures = [
        client.predictions.Predict.future(predict_request("multi_task", s), timeout=60)
        if i % 2
        else server.stub.ModelInfer.future(infer_request("multi_task", s), timeout=60)
        for i, s in enumerate(samples)
    ]
    for i, (sample, future) in enumerate(zip(samples, futures, strict=True)):
        response = future.result()
        got = outputs_of(response) if i % 2 else output_arrays(response)
        for output, values in model.predict(sample).items():
            np.testing.assert_allclose(got[output], values, atol=ATOL, err_msg=output)


# --- GetModelMetadata ---


def metadata_request(
    model: str, fields: tuple[str, ...] = ("signature_def",), label: str = ""
) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    request.model_spec.name = model
    if label:
        request.model_spec.version_label = label
    return request


def test_get_model_metadata_returns_the_signature_def_map_in_any(client: TFServingClient) -> None:
    response = client.predictions.GetModelMetadata(metadata_request("multi_task"), timeout=60)
    assert (response.model_spec.name, response.model_spec.version.value) == ("multi_task", 1)
    assert list(response.metadata) == ["signature_def"]
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert list(signature_map.signature_def) == ["serving_default"]
    signature = signature_map.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"

    def described(infos: Any) -> dict[str, tuple[int, list[int]]]:
        return {
            key: (info.dtype, [d.size for d in info.tensor_shape.dim])
            for key, info in infos.items()
        }

    assert described(signature.inputs) == {
        "image": (types_pb2.DT_FLOAT, [-1, 16, 16, 3]),
        "numeric": (types_pb2.DT_FLOAT, [-1, 16]),
        "category": (types_pb2.DT_INT32, [-1]),
    }
    assert set(described(signature.outputs)) == {"class_probabilities", "score", "embedding"}
    assert all(dtype == types_pb2.DT_FLOAT for dtype, _ in described(signature.outputs).values())


def test_get_model_metadata_follows_a_version_label(extra_client: TFServingClient) -> None:
    response = extra_client.predictions.GetModelMetadata(
        metadata_request("labelled", label="stable"), timeout=60
    )
    assert response.model_spec.version.value == 1


# --- GetModelStatus ---


def status_request(model: str, version: int | None = None) -> Any:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    return request


def statuses(client: TFServingClient, model: str, version: int | None = None) -> list[Any]:
    response = client.models.GetModelStatus(status_request(model, version), timeout=60)
    return [
        (s.version, s.state, s.status.error_code, s.status.error_message)
        for s in response.model_version_status
    ]


def test_get_model_status_lists_every_version_and_filters_by_version(
    extra_client: TFServingClient,
) -> None:
    assert statuses(extra_client, "labelled") == [
        (1, State.AVAILABLE, 0, ""),
        (2, State.AVAILABLE, 0, ""),
    ]
    assert statuses(extra_client, "labelled", version=1) == [(1, State.AVAILABLE, 0, "")]


def test_a_failed_version_is_end_with_its_error(extra_client: TFServingClient) -> None:
    [(version, state, code, message)] = statuses(extra_client, "broken")
    assert (version, state) == (1, State.END)
    assert code == 2  # tensorflow.error.UNKNOWN
    assert message.startswith("OSError: Cannot parse file") and "broken/1" in message


def test_get_model_status_follows_the_version_state_over_time(
    extra: tuple[RunningServer, keras.Model], extra_client: TFServingClient
) -> None:
    """States are read at each call: every plexserve state shows as its TF Serving state."""
    running, _ = extra
    version = running.server.repository.versions("labelled")[0]

    async def set_state(state: ModelState) -> None:
        version.state = state

    expected = {
        ModelState.LOADING: State.LOADING,
        ModelState.WARMING: State.LOADING,
        ModelState.UNLOADING: State.UNLOADING,
        ModelState.END: State.END,
        ModelState.AVAILABLE: State.AVAILABLE,
    }
    try:
        for state, tf_state in expected.items():
            running.run(set_state(state))
            assert statuses(extra_client, "labelled", version=1)[0][1] == tf_state, state
    finally:
        running.run(set_state(ModelState.AVAILABLE))


def test_get_model_status_through_a_version_swap(tmp_path: Path) -> None:
    """A TF Serving client watching a model while a new version is loaded explicitly: it sees
    version 1 AVAILABLE, then only version 2 once 1 is unloaded, and Predict follows."""
    export_model(constant_model(1.0), tmp_path, "swap")
    running = RunningServer(tmp_path, model_control="explicit", load_models=("swap",))
    client = TFServingClient(running)
    try:
        assert statuses(client, "swap") == [(1, State.AVAILABLE, 0, "")]
        export_model(constant_model(2.0), tmp_path, "swap")
        running.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="swap"))
        assert statuses(client, "swap") == [(2, State.AVAILABLE, 0, "")]
        response = client.predict("swap", {"x": np.ones((1, 2), np.float32)})
        assert response.model_spec.version.value == 2
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [[2.0]]
    finally:
        running.close()


# --- bad requests: TF Serving's status codes, a message naming the bad thing, serving goes on ---


def mlp_features(rows: int = 2) -> np.ndarray:
    return np.ones((rows, 8), np.float32)


def raw_proto(dtype: int, dims: list[int], content: bytes = b"", **values: Any) -> Any:
    return tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=shape_proto(*dims), tensor_content=content, **values
    )


BAD_PREDICTS: dict[str, tuple[predict_pb2.PredictRequest, grpc.StatusCode, list[str]]] = {
    "unknown model": (
        predict_request("nope", {"features": mlp_features()}),
        grpc.StatusCode.NOT_FOUND,
        ["unknown model 'nope'", "'mlp'"],
    ),
    "unknown version": (
        predict_request("mlp", {"features": mlp_features()}, version=7),
        grpc.StatusCode.NOT_FOUND,
        ["'mlp' has no version '7'", "versions: [1]"],
    ),
    "unknown version label": (
        predict_request("mlp", {"features": mlp_features()}, label="canary"),
        grpc.StatusCode.NOT_FOUND,
        ["'mlp' has no version label 'canary'"],
    ),
    "no model name": (
        predict_request("", {"features": mlp_features()}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["ModelSpec has no name specified"],
    ),
    "unknown signature name": (
        predict_request("mlp", {"features": mlp_features()}, signature="classify"),
        grpc.StatusCode.FAILED_PRECONDITION,
        ['Serving signature key "classify" not found', '"serving_default"'],
    ),
    "missing and unexpected inputs": (
        predict_request(
            "multi_input",
            {"numeric": np.ones((1, 4), np.float32), "colour": np.ones((1,), np.int32)},
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["missing inputs ['category']", "unexpected inputs ['colour']"],
    ),
    "wrong dtype": (
        predict_request("mlp", {"features": mlp_features().astype(np.float64)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "expected datatype FP32", "received FP64"],
    ),
    "wrong rank": (
        predict_request("mlp", {"features": np.ones((2, 8, 1), np.float32)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "expected shape [-1, 8]", "received [2, 8, 1]"],
    ),
    "wrong fixed dimension": (
        predict_request("mlp", {"features": np.ones((2, 7), np.float32)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "expected shape [-1, 8]", "received [2, 7]"],
    ),
    "tensor_content length does not match shape": (
        predict_request("mlp", {"features": raw_proto(types_pb2.DT_FLOAT, [2, 8], b"\0" * 60)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "tensor_content has 60 bytes", "needs 64"],
    ),
    "typed value count does not match shape": (
        predict_request(
            "mlp", {"features": raw_proto(types_pb2.DT_FLOAT, [2, 8], float_val=[1.0] * 15)}
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "needs 16 elements", "float_val has 15"],
    ),
    "negative dimension": (
        predict_request("mlp", {"features": raw_proto(types_pb2.DT_FLOAT, [-2, 8])}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "negative dimension"],
    ),
    "huge claimed shape, tensor_content": (
        predict_request(
            "mlp", {"features": raw_proto(types_pb2.DT_FLOAT, [2**40, 2**40], b"\0" * 64)}
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "64 bytes"],
    ),
    "huge claimed shape, float_val": (
        predict_request(
            "mlp", {"features": raw_proto(types_pb2.DT_FLOAT, [2**40, 8], float_val=[1.0] * 16)}
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "needs 8796093022208 elements", "float_val has 16"],
    ),
    "huge claimed shape, string_val": (
        predict_request(
            "text_classifier",
            {"text": raw_proto(types_pb2.DT_STRING, [2**50], string_val=[b"a", b"b"])},
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'text'", "string_val has 2"],
    ),
    "inputs disagree on batch": (
        predict_request(
            "multi_input",
            {"numeric": np.ones((3, 4), np.float32), "category": np.ones((2,), np.int32)},
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["batch dimension", "'numeric' has 3", "'category' has 2"],
    ),
    "tensor_content and a typed field for one input": (
        predict_request(
            "mlp",
            {"features": raw_proto(types_pb2.DT_FLOAT, [1, 8], b"\0" * 32, float_val=[0.0] * 8)},
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "both tensor_content and float_val"],
    ),
    "values in a field of another dtype": (
        predict_request(
            "mlp", {"features": raw_proto(types_pb2.DT_FLOAT, [1, 8], int_val=[0] * 8)}
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "DT_FLOAT cannot be sent in int_val", "float_val"],
    ),
    "strings in tensor_content": (
        predict_request("text_classifier", {"text": raw_proto(types_pb2.DT_STRING, [1], b"ab")}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'text'", "DT_STRING cannot be sent in tensor_content", "string_val"],
    ),
    "unsupported dtype": (
        predict_request("mlp", {"features": raw_proto(types_pb2.DT_COMPLEX64, [1, 8], b"\0" * 64)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "DT_COMPLEX64 is not supported", "DT_FLOAT"],
    ),
    "no dtype": (
        predict_request("mlp", {"features": raw_proto(types_pb2.DT_INVALID, [1, 8])}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "DT_INVALID is not supported"],
    ),
    "unknown rank": (
        predict_request(
            "mlp",
            {
                "features": tensor_pb2.TensorProto(
                    dtype=types_pb2.DT_FLOAT,
                    tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True),
                )
            },
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "unknown_rank"],
    ),
    "int_val out of range for DT_INT8": (
        predict_request(
            "multi_input",
            {
                "numeric": np.zeros((1, 4), np.float32),
                "category": raw_proto(types_pb2.DT_INT8, [1], int_val=[300]),
            },
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'category'", "value 300 in int_val does not fit DT_INT8 [-128, 127]"],
    ),
    "half_val that is no float16 bit pattern": (
        predict_request(
            "mlp", {"features": raw_proto(types_pb2.DT_HALF, [1, 8], half_val=[70000] * 8)}
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "value 70000 in half_val does not fit float16 bits"],
    ),
    "unknown output_filter name": (
        predict_request(
            "multi_output", {"features": mlp_features()}, output_filter=("value", "colour")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["unknown requested outputs ['colour']", "'class_probabilities'"],
    ),
    "out-of-range embedding id": (
        predict_request(
            "multi_input",
            {"numeric": np.ones((1, 4), np.float32), "category": np.array([10_000], np.int32)},
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["indices[0] = 10000 is not in [0, 10)"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PREDICTS))
def test_bad_predict_gets_tf_servings_code_and_a_message_naming_it(
    client: TFServingClient, case: str
) -> None:
    request, code, fragments = BAD_PREDICTS[case]
    error = client.error(client.predictions.Predict, request)
    assert error.code() == code, error.details()
    for fragment in fragments:
        assert fragment in error.details()
    # and the server keeps serving
    got = outputs_of(client.predict("mlp", {"features": mlp_features()}))
    assert got["probabilities"].shape == (2, 3)


def test_bad_metadata_and_status_requests(client: TFServingClient) -> None:
    cases = [
        (
            client.predictions.GetModelMetadata,
            metadata_request("mlp", fields=("signature_def", "colour")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Metadata field colour is not supported",
        ),
        (
            client.predictions.GetModelMetadata,
            metadata_request("mlp", fields=()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "must specify at least one metadata_field",
        ),
        (
            client.predictions.GetModelMetadata,
            get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Missing ModelSpec",
        ),
        (
            client.predictions.GetModelMetadata,
            metadata_request("nope"),
            grpc.StatusCode.NOT_FOUND,
            "unknown model 'nope'",
        ),
        (
            client.models.GetModelStatus,
            status_request("nope"),
            grpc.StatusCode.NOT_FOUND,
            "Could not find any versions of model nope",
        ),
        (
            client.models.GetModelStatus,
            status_request("mlp", version=7),
            grpc.StatusCode.NOT_FOUND,
            "Could not find version 7 of model mlp",
        ),
        (
            client.models.GetModelStatus,
            get_model_status_pb2.GetModelStatusRequest(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Missing ModelSpec",
        ),
    ]
    for call, request, code, fragment in cases:
        error = client.error(call, request)
        assert error.code() == code, (request, error.details())
        assert fragment in error.details(), error.details()


def test_calls_plexserve_does_not_offer_say_what_to_use(client: TFServingClient) -> None:
    spec = model_pb2.ModelSpec(name="mlp", version=wrappers_pb2.Int64Value(value=1))
    cases = [
        (client.predictions.Classify, classification_pb2.ClassificationRequest(model_spec=spec)),
        (client.predictions.Regress, regression_pb2.RegressionRequest(model_spec=spec)),
        (client.predictions.MultiInference, inference_pb2.MultiInferenceRequest()),
    ]
    for call, request in cases:
        error = client.error(call, request)
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "call Predict" in error.details()
    error = client.error(
        client.models.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest()
    )
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "RepositoryModelLoad" in error.details() and "--model-control" in error.details()


def test_reflection_lists_the_tf_serving_services(server: RunningServer) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    answer = next(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"} <= names


def test_grpcurl_predicts_through_reflection_alone(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    """grpcurl knows nothing of TF Serving: it reads the messages from server reflection (our
    own stubs' pool, served beside the OIP protos), writes the request from JSON, and reads the
    answer back."""
    tools = Path(__file__).resolve().parents[2] / ".tools-venv" / "bin"
    grpcurl = shutil.which("grpcurl") or shutil.which("grpcurl", path=str(tools))
    if grpcurl is None:
        pytest.skip("grpcurl is not installed (`make tools` installs it into .tools-venv)")
    model = demo_models["mlp"]
    features = model.sample(rows=2, seed=5)["features"]
    request = {
        "model_spec": {"name": "mlp"},
        "inputs": {
            "features": {
                "dtype": "DT_FLOAT",
                "tensor_shape": {"dim": [{"size": n} for n in features.shape]},
                "float_val": features.ravel().tolist(),
            }
        },
    }
    result = subprocess.run(
        [grpcurl, "-plaintext", "-d", json.dumps(request), server.address,
         "tensorflow.serving.PredictionService/Predict"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    probabilities = answer["outputs"]["probabilities"]
    assert probabilities["dtype"] == "DT_FLOAT"
    expected = model.predict({"features": features})["probabilities"]
    assert [int(d["size"]) for d in probabilities["tensor_shape"]["dim"]] == list(expected.shape)
    raw = base64.b64decode(probabilities["tensor_content"])
    got = np.frombuffer(raw, "<f4").reshape(expected.shape)
    np.testing.assert_allclose(got, expected, atol=ATOL)
