"""TF Serving's REST API on plexserve's HTTP port, as TF Serving's REST documentation uses it:
curl-style requests (form-urlencoded, as `curl -d` sends them), row and columnar forms, b64
strings, model status and metadata, versions and labels, and every error as {"error": ...}."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from plexserve.export import export_model
from tests.conftest import DemoModel
from tests.harness import Reply, RunningServer, rest

ATOL = 1e-5
CURL = {"Content-Type": "application/x-www-form-urlencoded"}  # what `curl -d` sends


def half_plus(offset: float) -> keras.Model:
    """TF Serving's example models: y = 0.5 * x + 2 (half_plus_two) or + 3 (half_plus_three)."""
    x = keras.Input((), name="x")
    return keras.Model({"x": x}, {"y": keras.layers.Rescaling(0.5, offset=offset)(x)})


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """half_plus_two as the documentation serves it; `halves` version 1 (+2) and 2 (+3), both
    served, labelled stable and canary."""
    root: Path = tmp_path_factory.mktemp("tfserving_rest")
    export_model(half_plus(2.0), root, "half_plus_two")
    export_model(half_plus(2.0), root, "halves", 1)
    export_model(half_plus(3.0), root, "halves", 2)
    (root / "halves" / "config.yaml").write_text(
        "version_policy: all\nversion_labels: {stable: 1, canary: 2}\n"
    )
    server = RunningServer(root)
    yield server
    server.close()


def predict(server: RunningServer, path: str, body: object) -> Reply:
    return rest(server, path, json.dumps(body), headers=CURL)


def error_of(reply: Reply, status: int) -> str:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    (message,) = reply.json().values()
    assert list(reply.json()) == ["error"]
    return str(message)


def test_the_documented_curl_example_answers_as_tf_serving(examples: RunningServer) -> None:
    # curl -d '{"instances": [1.0, 2.0, 5.0]}' -X POST \
    #     http://localhost:8501/v1/models/half_plus_two:predict
    reply = rest(
        examples, "/v1/models/half_plus_two:predict", '{"instances": [1.0, 2.0, 5.0]}', "POST", CURL
    )
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json() == {"predictions": [2.5, 3.0, 4.5]}
    assert b"3.0" in reply.body  # whole floats keep their ".0", as TF Serving writes them


def test_the_columnar_form_answers_outputs(examples: RunningServer) -> None:
    reply = predict(examples, "/v1/models/half_plus_two:predict", {"inputs": [1.0, 2.0, 5.0]})
    assert reply.json() == {"outputs": [2.5, 3.0, 4.5]}
    named = predict(examples, "/v1/models/half_plus_two:predict", {"inputs": {"x": [4, 6]}})
    assert named.json() == {"outputs": [4.0, 5.0]}  # JSON integers are fine for a float input


def test_versions_and_labels_pick_the_version(examples: RunningServer) -> None:
    body = {"instances": [2.0]}
    assert predict(examples, "/v1/models/halves:predict", body).json() == {"predictions": [4.0]}
    for path, expected in [
        ("/v1/models/halves/versions/1:predict", 3.0),
        ("/v1/models/halves/versions/2:predict", 4.0),
        ("/v1/models/halves/labels/stable:predict", 3.0),
        ("/v1/models/halves/labels/canary:predict", 4.0),
    ]:
        assert predict(examples, path, body).json() == {"predictions": [expected]}, path


def test_model_status_lists_the_versions_as_tf_serving_prints_them(examples: RunningServer) -> None:
    reply = rest(examples, "/v1/models/halves")
    assert reply.status == 200
    available = {"error_code": "OK", "error_message": ""}
    assert reply.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": available},
            {"version": "2", "state": "AVAILABLE", "status": available},
        ]
    }
    one = rest(examples, "/v1/models/halves/versions/2").json()["model_version_status"]
    assert [v["version"] for v in one] == ["2"]
    message = error_of(rest(examples, "/v1/models/nope"), 404)
    assert "Could not find any versions of model nope" in message
    message = error_of(rest(examples, "/v1/models/halves/versions/7"), 404)
    assert "Could not find version 7 of model halves" in message


def test_metadata_is_the_signature_def_map(examples: RunningServer) -> None:
    reply = rest(examples, "/v1/models/half_plus_two/metadata")
    assert reply.status == 200
    document = reply.json()
    assert document["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "1"}
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    (x,) = signature["inputs"].values()
    assert (x["name"], x["dtype"]) == ("x", "DT_FLOAT")
    assert x["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    labelled = rest(examples, "/v1/models/halves/labels/canary/metadata").json()
    assert labelled["model_spec"]["version"] == "2"


def test_row_form_with_named_inputs_gives_one_object_per_row(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    model = demo_models["multi_task"]
    inputs = model.sample(rows=3, seed=4)
    instances = [{name: array[i].tolist() for name, array in inputs.items()} for i in range(3)]
    reply = predict(server, "/v1/models/multi_task:predict", {"instances": instances})
    assert reply.status == 200, reply.body
    predictions = reply.json()["predictions"]
    expected = model.predict(inputs)
    assert len(predictions) == 3
    for i, row in enumerate(predictions):
        assert sorted(row) == sorted(expected)
        for output, values in expected.items():
            np.testing.assert_allclose(row[output], values[i], atol=ATOL, err_msg=output)


def test_columnar_form_with_several_outputs_gives_one_tensor_per_output(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    model = demo_models["multi_output"]
    inputs = model.sample(rows=2, seed=5)
    body = {"inputs": {name: array.tolist() for name, array in inputs.items()}}
    outputs = predict(server, "/v1/models/multi_output:predict", body).json()["outputs"]
    expected = model.predict(inputs)
    assert sorted(outputs) == sorted(expected)
    for output, values in expected.items():
        np.testing.assert_allclose(outputs[output], values, atol=ATOL, err_msg=output)


def test_strings_plain_and_b64_give_the_keras_numbers(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    texts = [b"the movie was great", b"bad bad movie"]
    instances = [texts[0].decode(), {"b64": base64.b64encode(texts[1]).decode()}]
    reply = predict(server, "/v1/models/text_classifier:predict", {"instances": instances})
    assert reply.status == 200, reply.body
    expected = demo_models["text_classifier"].predict({"text": np.array(texts, dtype=object)})
    np.testing.assert_allclose(reply.json()["predictions"], expected["probabilities"], atol=ATOL)
    columnar = {"inputs": {"text": [{"b64": base64.b64encode(t).decode()} for t in texts]}}
    outputs = predict(server, "/v1/models/text_classifier:predict", columnar).json()["outputs"]
    np.testing.assert_allclose(outputs, expected["probabilities"], atol=ATOL)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ("{not json", 400, "not valid JSON"),
        ("", 400, "The document is empty"),
        ('["instances"]', 400, "must be a JSON object"),
        ('{"rows": [1.0]}', 400, "missing 'inputs' or 'instances' key"),
        ('{"instances": [1.0], "inputs": [1.0]}', 400, "only one of 'inputs' or 'instances'"),
        ('{"instances": 1.0}', 400, "'instances' to be a list"),
        ('{"instances": []}', 400, "no values in 'instances'"),
        ('{"instances": ["one"]}', 400, "input 'x': 'instances' holds strings; FP32 takes numbers"),
        ('{"instances": [[1.0], 2.0]}', 400, "input 'x': 'instances' is a ragged nested list"),
        ('{"instances": [{"y": 1.0}]}', 400, "missing inputs ['x'] and unexpected inputs ['y']"),
        ('{"instances": [{"x": 1.0}, 2.0]}', 400, "expecting object but got value/list at item 1"),
        ('{"instances": [1e39]}', 400, "does not fit FP32"),
        ('{"instances": [[1.0, 2.0]]}', 400, "input 'x': expected shape [-1], received [1, 2]"),
        ('{"inputs": {"x": [1.0], "z": [2.0]}}', 400, "unexpected inputs ['z']"),
        ('{"signature_name": 3, "instances": [1.0]}', 400, "'signature_name' key must be a string"),
        (
            '{"signature_name": "classify_x_to_y", "instances": [1.0]}',
            400,
            'Serving signature key "classify_x_to_y" not found',
        ),
    ],
)
def test_each_bad_predict_request_gets_400_naming_the_problem(
    examples: RunningServer, body: str, status: int, fragment: str
) -> None:
    reply = rest(examples, "/v1/models/half_plus_two:predict", body, "POST", CURL)
    assert fragment in error_of(reply, status)


def test_unknown_models_versions_and_labels_are_404(examples: RunningServer) -> None:
    body = {"instances": [1.0]}
    message = error_of(predict(examples, "/v1/models/nope:predict", body), 404)
    assert "unknown model 'nope'" in message
    assert "no version '9'" in error_of(
        predict(examples, "/v1/models/halves/versions/9:predict", body), 404
    )
    assert "no version label 'beta'" in error_of(
        predict(examples, "/v1/models/halves/labels/beta:predict", body), 404
    )
    assert "no endpoint" in error_of(rest(examples, "/v1/elsewhere"), 404)


def test_classify_and_regress_answer_501_pointing_at_predict(examples: RunningServer) -> None:
    for method in ("classify", "regress"):
        reply = predict(examples, f"/v1/models/half_plus_two:{method}", {"examples": [{}]})
        message = error_of(reply, 501)
        assert f"does not implement :{method}" in message and ":predict" in message


def test_wrong_methods_are_405(examples: RunningServer) -> None:
    reply = rest(examples, "/v1/models/half_plus_two:predict")
    assert "GET is not allowed" in error_of(reply, 405)
    assert reply.headers["Allow"] == "POST"
    assert error_of(rest(examples, "/v1/models/half_plus_two", {}, "POST"), 405)


def test_the_documented_requests_example_with_a_single_image_input(
    server: RunningServer, demo_models: dict[str, DemoModel]
) -> None:
    # data = json.dumps({"signature_name": "serving_default", "instances": images.tolist()})
    # requests.post(url, data=data, headers={"content-type": "application/json"})
    model = demo_models["inception"]
    images = model.sample(rows=3, seed=6)["image"]
    data = json.dumps({"signature_name": "serving_default", "instances": images.tolist()})
    reply = rest(
        server, "/v1/models/inception:predict", data, "POST", {"content-type": "application/json"}
    )
    assert reply.status == 200, reply.body
    predictions = reply.json()["predictions"]
    np.testing.assert_allclose(
        predictions, model.predict({"image": images})["probabilities"], atol=ATOL
    )
