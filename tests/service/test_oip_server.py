"""The OIP gRPC server end to end: real SavedModels from our builders, a real server on port 0,
real gRPC calls through our generated stubs."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from plexserve.proto import grpc_service_pb2 as pb
from tests.conftest import BUILTINS, DemoModel
from tests.harness import RunningServer, infer_request, output_arrays

ATOL = 1e-5


def call_error(server: RunningServer, request: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.ModelInfer(request)
    return caught.value


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_serves_the_keras_models_numbers(
    server: RunningServer, demo_models: dict[str, DemoModel], name: str
) -> None:
    model = demo_models[name]
    inputs = model.sample(rows=5, seed=1)
    response = server.stub.ModelInfer(infer_request(name, inputs, request_id="r-1"))
    assert (response.model_name, response.model_version, response.id) == (name, "1", "r-1")
    expected = model.predict(inputs)
    got = output_arrays(response)
    assert sorted(got) == sorted(expected)
    for output, values in expected.items():
        assert got[output].shape == values.shape, output
        np.testing.assert_allclose(got[output], values, atol=ATOL, err_msg=output)


def test_typed_contents_give_the_same_numbers_as_raw(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    model = demo_models["multi_input"]
    inputs = model.sample(rows=3, seed=2)
    request = pb.ModelInferRequest(
        model_name="multi_input",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="numeric",
                datatype="FP32",
                shape=inputs["numeric"].shape,
                contents=pb.InferTensorContents(fp32_contents=inputs["numeric"].ravel()),
            ),
            pb.ModelInferRequest.InferInputTensor(
                name="category",
                datatype="INT32",
                shape=inputs["category"].shape,
                contents=pb.InferTensorContents(int_contents=inputs["category"].ravel()),
            ),
        ],
    )
    got = output_arrays(server.stub.ModelInfer(request))
    np.testing.assert_allclose(got["score"], model.predict(inputs)["score"], atol=ATOL)


def test_bytes_input_in_typed_contents(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    model = demo_models["text_classifier"]
    texts = np.array([b"the movie was great", b"bad", b""], dtype=object)
    request = pb.ModelInferRequest(
        model_name="text_classifier",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="text",
                datatype="BYTES",
                shape=[3],
                contents=pb.InferTensorContents(bytes_contents=texts),
            )
        ],
    )
    got = output_arrays(server.stub.ModelInfer(request))
    np.testing.assert_allclose(
        got["probabilities"], model.predict({"text": texts})["probabilities"], atol=ATOL
    )


def test_a_scalar_per_row_input_may_come_as_batch_by_one(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    model = demo_models["multi_input"]
    inputs = model.sample(rows=3, seed=4)
    as_column = {**inputs, "category": inputs["category"].reshape(3, 1)}
    got = output_arrays(server.stub.ModelInfer(infer_request("multi_input", as_column)))
    np.testing.assert_allclose(got["score"], model.predict(inputs)["score"], atol=ATOL)


def test_requested_outputs_filter(server: RunningServer, demo_models: dict[str, DemoModel]) -> None:
    model = demo_models["multi_output"]
    inputs = model.sample(rows=2)
    response = server.stub.ModelInfer(infer_request("multi_output", inputs, outputs=("value",)))
    assert [o.name for o in response.outputs] == ["value"]
    np.testing.assert_allclose(
        output_arrays(response)["value"], model.predict(inputs)["value"], atol=ATOL
    )


@pytest.mark.parametrize("name", ["inception", "text_classifier", "multi_task"])
def test_zero_rows_return_empty_outputs(
    server: RunningServer, demo_models: dict[str, DemoModel], name: str
) -> None:
    model = demo_models[name]
    inputs = model.sample(rows=0)
    got = output_arrays(server.stub.ModelInfer(infer_request(name, inputs)))
    expected = model.predict(model.sample(rows=1))
    assert sorted(got) == sorted(expected)
    for output, values in expected.items():
        assert got[output].shape == (0, *values.shape[1:]), output


def test_stream_infer_answers_every_request_and_reports_errors_in_stream(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    model = demo_models["mlp"]
    samples = {f"id-{i}": model.sample(rows=i + 1, seed=i) for i in range(6)}
    requests = [infer_request("mlp", inputs, request_id=rid) for rid, inputs in samples.items()]
    requests.insert(3, infer_request("no_such_model", samples["id-0"], request_id="bad"))
    responses = list(server.stub.ModelStreamInfer(iter(requests)))
    assert len(responses) == len(requests)
    by_id = {r.infer_response.id: r for r in responses}
    assert "unknown model 'no_such_model'" in by_id.pop("bad").error_message
    for rid, response in by_id.items():
        assert response.error_message == ""
        np.testing.assert_allclose(
            output_arrays(response.infer_response)["probabilities"],
            model.predict(samples[rid])["probabilities"],
            atol=ATOL,
        )


def test_metadata_and_config(server: RunningServer) -> None:
    metadata = server.stub.ModelMetadata(pb.ModelMetadataRequest(name="multi_input"))
    assert (metadata.name, list(metadata.versions), metadata.platform) == (
        "multi_input",
        ["1"],
        "tensorflow_savedmodel",
    )
    assert {(t.name, t.datatype, tuple(t.shape)) for t in metadata.inputs} == {
        ("numeric", "FP32", (-1, 4)),
        ("category", "INT32", (-1, 1)),
    }
    assert [(t.name, t.datatype, tuple(t.shape)) for t in metadata.outputs] == [
        ("score", "FP32", (-1, 1))
    ]

    config = server.stub.ModelConfig(pb.ModelConfigRequest(name="text_classifier")).config
    assert (config.name, config.platform, config.max_batch_size) == (
        "text_classifier",
        "tensorflow_savedmodel",
        32,
    )
    batching = config.dynamic_batching
    assert config.HasField("dynamic_batching") and batching.max_queue_delay_microseconds == 0
    assert batching.default_queue_policy.max_queue_size == 32 * 32
    assert [g.count for g in config.instance_group] == [1]
    # one string per row: declared as Triton declares it, dims [1] reshaped to []
    assert [
        (i.name, i.data_type, list(i.dims), i.HasField("reshape"), list(i.reshape.shape))
        for i in config.input
    ] == [("text", 13, [1], True, [])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("probabilities", 11, [2])
    ]


def test_liveness_readiness_health_and_reflection(server: RunningServer) -> None:
    assert server.stub.ServerLive(pb.ServerLiveRequest()).live
    assert server.stub.ServerReady(pb.ServerReadyRequest()).ready
    assert server.stub.ModelReady(pb.ModelReadyRequest(name="mlp")).ready
    assert server.stub.ModelReady(pb.ModelReadyRequest(name="mlp", version="1")).ready
    metadata = server.stub.ServerMetadata(pb.ServerMetadataRequest())
    assert metadata.name == "plexserve" and metadata.version

    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "mlp"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service

    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    answer = next(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {
        "inference.GRPCInferenceService",
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "grpc.health.v1.Health",
    } <= names
    # every service's file comes with what it imports (TF Serving's stubs have a pool of their
    # own, the others are in protobuf's default one): what grpcurl needs to build a request
    for symbol, file in (
        ("tensorflow.serving.PredictionService", "tf_serving.proto"),
        ("tensorflow.TensorProto", "tf_framework.proto"),
        ("inference.GRPCInferenceService", "grpc_service.proto"),
    ):
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        answer = next(reflection.ServerReflectionInfo(iter([request])))
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(data).name
            for data in answer.file_descriptor_response.file_descriptor_proto
        ]
        assert files[0] == file, (symbol, files, answer.error_response.error_message)


def test_repository_index_lists_every_version_with_its_state(server: RunningServer) -> None:
    index = server.stub.RepositoryIndex(pb.RepositoryIndexRequest())
    assert {(m.name, m.version, m.state) for m in index.models} == {
        (name, "1", "AVAILABLE") for name in BUILTINS
    }


# --- bad input: the exact status code, a message naming the bad thing, and the server goes on ---


def mlp_input(rows: int = 2) -> np.ndarray:
    return np.ones((rows, 8), np.float32)


def tensor(name: str, datatype: str, shape: list[int]) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)


BAD_REQUESTS = {
    "unknown model": (
        infer_request("nope", {"features": mlp_input()}),
        grpc.StatusCode.NOT_FOUND,
        ["unknown model 'nope'", "'mlp'", "'multi_task'"],
    ),
    "unknown version": (
        infer_request("mlp", {"features": mlp_input()}, version="7"),
        grpc.StatusCode.NOT_FOUND,
        ["'mlp' has no version '7'", "versions: [1]"],
    ),
    "missing and unexpected inputs": (
        infer_request(
            "multi_input",
            {"numeric": np.ones((1, 4), np.float32), "colour": np.ones((1,), np.int32)},
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["missing inputs ['category']", "unexpected inputs ['colour']"],
    ),
    "wrong datatype": (
        infer_request("mlp", {"features": mlp_input().astype(np.float64)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "expected datatype FP32", "received FP64"],
    ),
    "wrong rank": (
        infer_request("mlp", {"features": np.ones((2, 8, 1), np.float32)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "expected shape [-1, 8]", "received [2, 8, 1]"],
    ),
    "wrong fixed dimension": (
        infer_request("mlp", {"features": np.ones((2, 7), np.float32)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "expected shape [-1, 8]", "received [2, 7]"],
    ),
    "raw length does not match shape": (
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[tensor("features", "FP32", [2, 8])],
            raw_input_contents=[b"\0" * 60],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "60 bytes", "needs 64"],
    ),
    "negative dimension": (
        pb.ModelInferRequest(
            model_name="mlp", inputs=[tensor("features", "FP32", [-2, 8])], raw_input_contents=[b""]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "negative dimension"],
    ),
    "huge claimed shape, raw": (
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[tensor("features", "FP32", [2**40, 2**40])],
            raw_input_contents=[b"\0" * 64],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "64 bytes"],
    ),
    "huge claimed shape, typed": (
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="features",
                    datatype="FP32",
                    shape=[2**40, 8],
                    contents=pb.InferTensorContents(fp32_contents=[1.0] * 16),
                )
            ],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "needs 8796093022208 elements", "has 16"],
    ),
    "huge claimed shape, BYTES": (
        pb.ModelInferRequest(
            model_name="text_classifier",
            inputs=[tensor("text", "BYTES", [2**50])],
            raw_input_contents=[b"\0" * 8],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'text'", "cannot hold"],
    ),
    "inputs disagree on batch": (
        infer_request(
            "multi_input",
            {"numeric": np.ones((3, 4), np.float32), "category": np.ones((2,), np.int32)},
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["batch dimension", "'numeric' has 3", "'category' has 2"],
    ),
    "raw and typed contents for one input": (
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="features",
                    datatype="FP32",
                    shape=[1, 8],
                    contents=pb.InferTensorContents(fp32_contents=[0.0] * 8),
                )
            ],
            raw_input_contents=[b"\0" * 32],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "both raw_input_contents and typed"],
    ),
    "unknown requested output": (
        infer_request("multi_output", {"features": mlp_input()}, outputs=("value", "colour")),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["unknown requested outputs ['colour']", "'class_probabilities'"],
    ),
    "BYTES length prefix past the end": (
        pb.ModelInferRequest(
            model_name="text_classifier",
            inputs=[tensor("text", "BYTES", [1])],
            raw_input_contents=[struct.pack("<I", 99) + b"abc"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'text'", "element 0 claims 99 bytes"],
    ),
    "BYTES prefix cut short": (
        pb.ModelInferRequest(
            model_name="text_classifier",
            inputs=[tensor("text", "BYTES", [2])],
            raw_input_contents=[struct.pack("<I", 1) + b"a" + b"\x01\x00\x00"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'text'", "length prefix of element 1"],
    ),
    "BYTES content left over": (
        pb.ModelInferRequest(
            model_name="text_classifier",
            inputs=[tensor("text", "BYTES", [1])],
            raw_input_contents=[struct.pack("<I", 1) + b"ab"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'text'", "1 bytes left over"],
    ),
    "unknown datatype": (
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[tensor("features", "FP8", [1, 8])],
            raw_input_contents=[b"\0" * 8],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "unknown datatype 'FP8'"],
    ),
    "raw contents count differs from inputs": (
        pb.ModelInferRequest(
            model_name="multi_input",
            inputs=[tensor("numeric", "FP32", [1, 4]), tensor("category", "INT32", [1])],
            raw_input_contents=[b"\0" * 16],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["raw_input_contents has 1 entries for 2 inputs"],
    ),
    "typed contents in the wrong field": (
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="features",
                    datatype="FP32",
                    shape=[1, 8],
                    contents=pb.InferTensorContents(int_contents=[0] * 8),
                )
            ],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features'", "contents.int_contents", "contents.fp32_contents"],
    ),
    "typed value out of range": (
        pb.ModelInferRequest(
            model_name="multi_input",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="numeric",
                    datatype="FP32",
                    shape=[1, 4],
                    contents=pb.InferTensorContents(fp32_contents=[0] * 4),
                ),
                pb.ModelInferRequest.InferInputTensor(
                    name="category",
                    datatype="INT8",
                    shape=[1],
                    contents=pb.InferTensorContents(int_contents=[300]),
                ),
            ],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'category'", "does not fit INT8"],
    ),
    "input sent twice": (
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[tensor("features", "FP32", [1, 8]), tensor("features", "FP32", [1, 8])],
            raw_input_contents=[b"\0" * 32, b"\0" * 32],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["input 'features' appears more than once"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_exact_code_and_a_message_naming_it(
    server: RunningServer, case: str
) -> None:
    request, code, fragments = BAD_REQUESTS[case]
    error = call_error(server, request)
    assert error.code() == code, error.details()
    for fragment in fragments:
        assert fragment in error.details()
    # and the server keeps serving
    response = server.stub.ModelInfer(infer_request("mlp", {"features": mlp_input()}))
    assert output_arrays(response)["probabilities"].shape == (2, 3)


def test_out_of_range_embedding_id_is_invalid_argument(server: RunningServer) -> None:
    error = call_error(
        server,
        infer_request(
            "multi_input",
            {"numeric": np.ones((1, 4), np.float32), "category": np.array([10_000], np.int32)},
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    expected = "the model rejected the input values: indices[0] = 10000 is not in [0, 10)"
    assert error.details() == expected


def test_message_larger_than_the_limit_is_resource_exhausted(server: RunningServer) -> None:
    rows = 65 * 1024 * 1024 // (8 * 4) + 1
    error = call_error(server, infer_request("mlp", {"features": np.zeros((rows, 8), np.float32)}))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_concurrent_requests_each_get_their_own_numbers(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    """200 requests at once, distinct inputs, 1 to 5 rows each, on the batched multi_task model:
    whatever batches form, every request gets exactly what the model computes for its own rows
    alone (no cross-talk), and the counters show executions that merged several requests."""
    model = demo_models["multi_task"]
    stats = server.server.repository.resolve("multi_task").stats
    executions, merged = stats.executions, stats.compute_per_request.count
    samples = [model.sample(rows=1 + i % 5, seed=100 + i) for i in range(200)]
    futures = [server.stub.ModelInfer.future(infer_request("multi_task", s)) for s in samples]
    # the reference: one Keras call over every row, cut back into the requests' rows
    expected = model.predict({n: np.concatenate([s[n] for s in samples]) for n in samples[0]})
    offset = 0
    for sample, future in zip(samples, futures, strict=True):
        got, rows = output_arrays(future.result()), len(sample["numeric"])
        for output, values in expected.items():
            np.testing.assert_allclose(
                got[output], values[offset : offset + rows], atol=ATOL, err_msg=output
            )
        offset += rows
    assert stats.compute_per_request.count - merged == 200  # every request executed once
    assert stats.executions - executions < 200  # some executions carried several requests


def test_a_request_larger_than_max_batch_size_gives_the_keras_numbers(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    model = demo_models["multi_output"]
    inputs = model.sample(rows=75, seed=9)  # max_batch_size 32: three executions
    got = output_arrays(server.stub.ModelInfer(infer_request("multi_output", inputs)))
    for output, values in model.predict(inputs).items():
        np.testing.assert_allclose(got[output], values, atol=ATOL, err_msg=output)
