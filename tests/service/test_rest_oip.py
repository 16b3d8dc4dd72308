"""The Open Inference Protocol's REST API on plexserve's HTTP port: JSON tensors and Triton's
binary tensor extension written here independently of the server's codec, tritonclient.http (a
client we did not write), metadata, config, health, repository control, and each bad request's
status with a message naming the field."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plexserve.export import export_model
from tests.conftest import BUILTINS, DemoModel
from tests.harness import NUMPY_OF, Reply, RunningServer, constant_model, datatype, raw_bytes, rest

ATOL = 1e-5
HEADER = "Inference-Header-Content-Length"
TRITON_HTTP_CLIENT = (
    Path(__file__).resolve().parents[1] / "clients" / "tritonclient_http_session.py"
)
TRITON_MODELS = ["multi_input", "text_classifier", "multi_task"]


def json_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    data = [e.decode() for e in array.ravel()] if array.dtype == object else array.ravel().tolist()
    return {"name": name, "datatype": datatype(array), "shape": list(array.shape), "data": data}


def json_outputs(reply: Reply) -> dict[str, np.ndarray]:
    assert reply.status == 200, reply.body
    return {
        t["name"]: np.array(t["data"], dtype=NUMPY_OF[t["datatype"]]).reshape(t["shape"])
        for t in reply.json()["outputs"]
    }


def binary_body(header: dict[str, Any], inputs: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """Triton's binary extension: every input's bytes after the JSON header."""
    header = dict(header)
    raws = [raw_bytes(a) for a in inputs.values()]
    header["inputs"] = [
        {
            "name": n,
            "datatype": datatype(a),
            "shape": list(a.shape),
            "parameters": {"binary_data_size": len(r)},
        }
        for (n, a), r in zip(inputs.items(), raws, strict=True)
    ]
    text = json.dumps(header).encode()
    return text + b"".join(raws), len(text)


def binary_outputs(reply: Reply) -> dict[str, np.ndarray]:
    assert reply.status == 200, reply.body
    length = int(reply.headers[HEADER])
    header, rest_of_body = json.loads(reply.body[:length]), reply.body[length:]
    arrays, offset = {}, 0
    for tensor in header["outputs"]:
        if "data" in tensor:
            arrays[tensor["name"]] = np.array(tensor["data"]).reshape(tensor["shape"])
            continue
        size = tensor["parameters"]["binary_data_size"]
        raw = rest_of_body[offset : offset + size]
        offset += size
        arrays[tensor["name"]] = np.frombuffer(raw, NUMPY_OF[tensor["datatype"]]).reshape(
            tensor["shape"]
        )
    assert offset == len(rest_of_body)
    return arrays


def infer_json(server: RunningServer, model: str, body: Any, **kwargs: Any) -> Reply:
    return rest(server, f"/v2/models/{model}/infer", body, "POST", **kwargs)


def error_of(reply: Reply, status: int) -> str:
    assert reply.status == status, reply.body
    assert list(reply.json()) == ["error"]
    return str(reply.json()["error"])


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_answers_the_keras_numbers_in_json(
    server: RunningServer, demo_models: dict[str, DemoModel], name: str
) -> None:
    model = demo_models[name]
    inputs = model.sample(rows=3, seed=11)
    body = {"id": "r-7", "inputs": [json_tensor(n, a) for n, a in inputs.items()]}
    reply = infer_json(server, name, body, headers={"Content-Type": "application/json"})
    assert reply.headers["Content-Type"].startswith("application/json")
    document = reply.json()
    assert (document["model_name"], document["model_version"], document["id"]) == (
        name,
        "1",
        "r-7",
    )
    got, expected = json_outputs(reply), model.predict(inputs)
    assert sorted(got) == sorted(expected)
    for output, values in expected.items():
        np.testing.assert_allclose(got[output], values, atol=ATOL, err_msg=output)


def test_binary_tensors_in_and_out_give_the_same_numbers(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    model = demo_models["multi_task"]
    inputs = model.sample(rows=4, seed=12)
    body, length = binary_body({"parameters": {"binary_data_output": True}}, inputs)
    reply = infer_json(
        server,
        "multi_task",
        body,
        headers={HEADER: str(length), "Content-Type": "application/octet-stream"},
    )
    assert reply.headers["Content-Type"] == "application/octet-stream"
    got, expected = binary_outputs(reply), model.predict(inputs)
    assert sorted(got) == sorted(expected)
    for output, values in expected.items():
        np.testing.assert_allclose(got[output], values, atol=ATOL, err_msg=output)


def test_requested_outputs_choose_their_own_encoding(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    model = demo_models["multi_output"]
    inputs = model.sample(rows=2, seed=13)
    expected = model.predict(inputs)
    first, second = sorted(expected)
    body = {
        "inputs": [json_tensor(n, a) for n, a in inputs.items()],
        "outputs": [{"name": first, "parameters": {"binary_data": True}}, {"name": second}],
    }
    reply = infer_json(server, "multi_output", body)
    got = binary_outputs(reply)  # one output binary, the other in JSON
    assert list(got) == [first, second]
    for output in (first, second):
        np.testing.assert_allclose(got[output], expected[output], atol=ATOL, err_msg=output)
    only = {"inputs": body["inputs"], "outputs": [{"name": second}]}
    assert list(json_outputs(infer_json(server, "multi_output", only))) == [second]


def test_bytes_inputs_travel_as_json_strings_or_length_prefixed_binary(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    texts = np.array([b"the movie was great", b"bad"], dtype=object)
    expected = demo_models["text_classifier"].predict({"text": texts})["probabilities"]
    reply = infer_json(server, "text_classifier", {"inputs": [json_tensor("text", texts)]})
    np.testing.assert_allclose(json_outputs(reply)["probabilities"], expected, atol=ATOL)
    body, length = binary_body({}, {"text": texts})
    reply = infer_json(server, "text_classifier", body, headers={HEADER: str(length)})
    np.testing.assert_allclose(json_outputs(reply)["probabilities"], expected, atol=ATOL)


def test_server_and_model_metadata_config_and_health(server: RunningServer) -> None:
    metadata = rest(server, "/v2").json()
    assert metadata["name"] == "plexserve"
    assert {"binary_tensor_data", "statistics", "model_configuration"} <= set(
        metadata["extensions"]
    )
    assert rest(server, "/v2/health/live").json() == {"live": True}
    assert rest(server, "/v2/health/ready").json() == {"ready": True}
    model = rest(server, "/v2/models/multi_input").json()
    assert model["name"] == "multi_input" and model["versions"] == ["1"]
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in model["inputs"]} == {
        ("numeric", "FP32", (-1, 4)),
        ("category", "INT32", (-1, 1)),  # one scalar per row, published as Triton does
    }
    assert rest(server, "/v2/models/multi_input/versions/1").json() == model
    config = rest(server, "/v2/models/multi_input/config").json()
    assert config["max_batch_size"] == 32
    assert {i["name"]: i["dims"] for i in config["input"]} == {"numeric": [4], "category": [1]}
    assert rest(server, "/v2/models/multi_input/ready").json() == {
        "name": "multi_input",
        "ready": True,
    }
    assert "no version '3'" in error_of(rest(server, "/v2/models/mlp/versions/3/ready"), 404)
    assert "unknown model 'nope'" in error_of(rest(server, "/v2/models/nope"), 404)
    assert "invalid model name" in error_of(rest(server, "/v2/models/%2E%2E/ready"), 400)
    head = rest(server, "/v2/health/ready", method="HEAD")
    assert (head.status, head.body) == (200, b"")


def test_tritonclient_http_works_unchanged(
    server: RunningServer, demo_models: dict[str, DemoModel], tmp_path: Path
) -> None:
    samples = {name: demo_models[name].sample(rows=3, seed=14) for name in TRITON_MODELS}
    np.savez(
        tmp_path / "in.npz",
        **{f"{m}/{n}": a for m, arrays in samples.items() for n, a in arrays.items()},
    )
    finished = subprocess.run(
        [
            sys.executable,
            str(TRITON_HTTP_CLIENT),
            f"127.0.0.1:{server.server.http.port}",
            str(tmp_path / "in.npz"),
            str(tmp_path / "out.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)

    assert report["live"] and report["ready"] and report["model_ready"]
    assert report["server"]["name"] == "plexserve"
    assert {t["name"] for t in report["metadata"]["inputs"]} == {"image", "numeric", "category"}
    assert report["config"]["max_batch_size"] == 32
    assert report["ids"] == {name: f"http-{name}" for name in TRITON_MODELS}
    (stats,) = report["statistics"]["model_stats"]
    assert stats["name"] == "multi_task" and stats["inference_count"] >= 6
    assert report["error"]["status"] == "404"
    assert "unknown model 'no_such_model'" in report["error"]["message"]
    with np.load(tmp_path / "out.npz") as got:
        for name in TRITON_MODELS:
            expected = demo_models[name].predict(samples[name])
            for output, values in expected.items():
                for encoding in ("binary", "json"):
                    np.testing.assert_allclose(
                        got[f"{name}/{output}/{encoding}"],
                        values,
                        atol=ATOL,
                        err_msg=f"{name}/{output}/{encoding}",
                    )


def tensor(**fields: Any) -> dict[str, Any]:
    return {"name": "features", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8, **fields}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("[1, 2", "the inference request header is not valid JSON"),
        ({"inputs": {"features": [1.0]}}, "inputs must be a list"),
        ({"inputs": ["features"]}, "inputs[0] must be a JSON object"),
        ({"inputs": [tensor(name=3)]}, "inputs[0].name must be a non-empty string"),
        ({"inputs": [tensor(datatype="FLOAT")]}, "unknown datatype 'FLOAT' in inputs[0].datatype"),
        ({"inputs": [tensor(shape="1,8")]}, "inputs[0].shape must be a list of integers"),
        ({"inputs": [tensor(shape=[1, -8])]}, "has a negative dimension"),
        ({"inputs": [tensor(data=[0.5] * 7)]}, "needs 8 elements, inputs[0].data has 7"),
        (
            {"inputs": [tensor(data=["0.5"] * 8)]},
            "inputs[0].data holds strings; FP32 takes numbers",
        ),
        ({"inputs": [tensor(data=[[0.5] * 4, [0.5] * 3])]}, "inputs[0].data is a ragged nested"),
        ({"inputs": [tensor(data=None)]}, "inputs[0].data holds nulls"),
        (
            {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8]}]},
            "no inputs[0].data",
        ),
        ({"inputs": [tensor(datatype="FP64")]}, "input 'features': expected datatype FP32"),
        ({"inputs": [tensor(name="x")]}, "missing inputs ['features'] and unexpected inputs ['x']"),
        ({"inputs": [tensor(), tensor()]}, "input 'features' appears more than once"),
        ({"inputs": [tensor()], "outputs": [{"name": "nope"}]}, "unknown requested outputs"),
        ({"inputs": [tensor()], "outputs": [{"name": 1}]}, "outputs[0].name must be"),
        ({"inputs": [tensor()], "parameters": {"timeout": "soon"}}, "parameters.timeout must be"),
        ({"inputs": [tensor()], "parameters": {"sequence_id": 4}}, "parameters.sequence_id"),
        ({"inputs": [tensor()], "id": 5}, "id must be a string"),
        (
            {"inputs": [tensor()], "outputs": [{"name": "probabilities", "parameters": 1}]},
            "outputs[0].parameters must be a JSON object",
        ),
        (
            {
                "inputs": [tensor()],
                "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
            },
            "classification extension",
        ),
    ],
)
def test_each_bad_infer_request_gets_400_naming_the_field(
    server: RunningServer, body: Any, fragment: str
) -> None:
    assert fragment in error_of(infer_json(server, "mlp", body), 400)


def test_integer_inputs_refuse_fractions_and_values_out_of_range(server: RunningServer) -> None:
    def category(values: list[Any]) -> dict[str, Any]:
        return {
            "inputs": [
                {"name": "numeric", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4},
                {"name": "category", "datatype": "INT32", "shape": [1], "data": values},
            ]
        }

    assert "holds non-integer numbers; INT32 takes integers" in error_of(
        infer_json(server, "multi_input", category([1.5])), 400
    )
    assert "value 4294967296 in inputs[1].data does not fit INT32" in error_of(
        infer_json(server, "multi_input", category([2**32])), 400
    )
    assert json_outputs(infer_json(server, "multi_input", category([3])))["score"].shape == (1, 1)


def test_binary_extension_errors_name_the_header_and_sizes(server: RunningServer) -> None:
    features = {"features": np.ones((1, 8), np.float32)}
    body, length = binary_body({}, features)
    for header, fragment in [
        ("ten", f"{HEADER}: 'ten' is not a byte count"),
        (str(len(body) + 1), "is not a byte count within"),
    ]:
        reply = infer_json(server, "mlp", body, headers={HEADER: header})
        assert fragment in error_of(reply, 400)
    reply = infer_json(server, "mlp", body + b"\0\0", headers={HEADER: str(length)})
    assert "2 bytes of binary data after the JSON header belong to no input" in error_of(reply, 400)
    reply = infer_json(server, "mlp", body[:-4], headers={HEADER: str(length)})
    assert "binary_data_size is 32 but only 28 bytes" in error_of(reply, 400)
    text = np.array([b"abc"], dtype=object)
    body, length = binary_body({}, {"text": text})
    broken = body[:length] + struct.pack("<I", 9) + b"abc"
    reply = infer_json(server, "text_classifier", broken, headers={HEADER: str(length)})
    assert "BYTES element 0 in the binary data of inputs[0] claims 9 bytes" in error_of(reply, 400)


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("explicit")
    export_model(constant_model(1.0), root, "m")
    export_model(constant_model(2.0), root, "other")
    server = RunningServer(root, model_control="explicit")
    yield server
    server.close()


def test_repository_index_load_and_unload(explicit: RunningServer) -> None:
    index = rest(explicit, "/v2/repository/index", b"").json()
    assert index == [
        {"name": "m", "state": "UNAVAILABLE", "reason": "not loaded"},
        {"name": "other", "state": "UNAVAILABLE", "reason": "not loaded"},
    ]
    assert rest(explicit, "/v2/repository/models/m/load", b"").status == 200
    assert rest(explicit, "/v2/repository/index", {"ready": True}).json() == [
        {"name": "m", "version": "1", "state": "AVAILABLE"}
    ]
    x = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [0, 0]}]}
    assert json_outputs(infer_json(explicit, "m", x))["y"].tolist() == [[1.0]]
    assert rest(explicit, "/v2/repository/models/m/unload", b"").status == 200
    assert "unknown model 'm'" in error_of(infer_json(explicit, "m", x), 404)
    message = error_of(rest(explicit, "/v2/repository/models/nope/load", b""), 404)
    assert "no model 'nope' in the repository" in message
    reply = rest(explicit, "/v2/repository/models/m/load", {"parameters": {"config": "{}"}})
    assert "load parameters" in error_of(reply, 400)


def test_repository_control_needs_explicit_mode(server: RunningServer) -> None:
    message = error_of(rest(server, "/v2/repository/models/mlp/unload", b""), 400)
    assert "--model-control explicit" in message
    index = rest(server, "/v2/repository/index", b"").json()
    assert {"name": "mlp", "version": "1", "state": "AVAILABLE"} in index
