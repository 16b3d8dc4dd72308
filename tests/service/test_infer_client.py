"""`plexserve infer` against a real server: the numbers come back, errors carry the server's
message and the right exit status, and the client never imports TensorFlow."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plexserve.cli import main
from plexserve.infer_client import run_infer
from tests.conftest import DemoModel
from tests.harness import RunningServer

ROOT = Path(__file__).resolve().parents[2]


def urls(server: RunningServer) -> dict[str, str]:
    return {"grpc": server.address, "rest": f"127.0.0.1:{server.server.http.port}"}


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_one_row_as_json_comes_back_as_the_model_computes_it(
    protocol: str,
    server: RunningServer,
    demo_models: dict[str, DemoModel],
    capsys: pytest.CaptureFixture[str],
) -> None:
    row = [0.5, -1.0, 2.0, 0.25, 0.0, 3.0, -0.5, 1.5]  # one row, no batch dimension
    url = urls(server)[protocol]
    argv = ["infer", "mlp", "--url", url, "--protocol", protocol, "--input", f"features={row}"]
    assert main(argv) == 0
    expected = demo_models["mlp"].predict({"features": np.array([row], np.float32)})
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == ["model mlp version 1", "probabilities FP32 [1, 3]"]
    answer = run_infer("mlp", [f"features={row}"], url=url, protocol=protocol)
    (output,) = answer.outputs
    assert (output.name, output.datatype, output.array.dtype) == (
        "probabilities",
        "FP32",
        "float32",
    )
    np.testing.assert_allclose(output.array, expected["probabilities"], rtol=1e-6)


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_inputs_from_npy_and_json_files_are_typed_by_the_model_metadata(
    protocol: str, server: RunningServer, demo_models: dict[str, DemoModel], tmp_path: Path
) -> None:
    """float64 numbers become FP32, JSON ints become INT32, and a list for an input of one value
    per row ([-1, 1]) is one value per row."""
    numeric = np.random.default_rng(0).standard_normal((3, 4))  # float64, as np.save keeps it
    np.save(tmp_path / "numeric.npy", numeric)
    (tmp_path / "category.json").write_text(json.dumps([1, 4, 2]))
    answer = run_infer(
        "multi_input",
        [f"numeric={tmp_path / 'numeric.npy'}", f"category={tmp_path / 'category.json'}"],
        url=urls(server)[protocol],
        protocol=protocol,
    )
    expected = demo_models["multi_input"].predict(
        {"numeric": numeric.astype(np.float32), "category": np.array([1, 4, 2], np.int32)}
    )
    (output,) = answer.outputs
    assert output.name == "score" and output.array.shape == (3, 1)
    np.testing.assert_allclose(output.array, expected["score"], rtol=1e-5)


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_strings_are_bytes_inputs(
    protocol: str, server: RunningServer, demo_models: dict[str, DemoModel], tmp_path: Path
) -> None:
    texts = ["the movie was great", "bad"]
    np.save(tmp_path / "text.npy", np.array(texts))
    spec = f"text={tmp_path / 'text.npy'}" if protocol == "grpc" else f"text={json.dumps(texts)}"
    answer = run_infer(
        "text_classifier",
        [spec],
        url=urls(server)[protocol],
        protocol=protocol,
    )
    expected = demo_models["text_classifier"].predict(
        {"text": np.array([t.encode() for t in texts], dtype=object)}
    )
    np.testing.assert_allclose(
        answer.outputs[0].array, expected["probabilities"], rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize(
    ("protocol", "model", "value", "message"),
    [
        ("grpc", "nope", "[1]", "NOT_FOUND: unknown model 'nope'"),
        ("rest", "nope", "[1]", "HTTP 404 Not Found: unknown model 'nope'"),
        ("grpc", "mlp", "[1, 2, 3]", "INVALID_ARGUMENT: input 'features'"),
        ("rest", "mlp", "[1, 2, 3]", "HTTP 400 Bad Request: input 'features'"),
    ],
)
def test_what_the_server_refuses_is_printed_with_exit_status_1(
    protocol: str,
    model: str,
    value: str,
    message: str,
    server: RunningServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = urls(server)[protocol]
    argv = ["infer", model, "--url", url, "--protocol", protocol, "--input", f"features={value}"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"plexserve infer: {message}")


def test_a_server_that_is_not_there_is_exit_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for protocol in ("grpc", "rest"):
        url = f"127.0.0.1:{port}"
        argv = ["infer", "mlp", "--url", url, "--protocol", protocol, "--timeout", "5"]
        assert main(argv) == 1
        assert f"127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("features", "--input 'features': expected NAME=FILE.npy, NAME=FILE.json or NAME=JSON"),
        ("features=missing.npy", "--input features: cannot read missing.npy"),
        ("features=missing.json", "--input features: cannot read missing.json"),
        ("features=[0.5,", "--input features: '[0.5,' is neither JSON nor a file"),
        ('features=["a", "b"]', "input features: cannot be FP32"),
        ("features=[0.5, 1.5]", None),  # the server's to refuse: not a usage error
    ],
)
def test_a_bad_command_line_is_exit_status_2_naming_the_input(
    spec: str, message: str | None, server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["infer", "mlp", "--url", server.address, "--input", spec])
    err = capsys.readouterr().err
    if message is None:
        assert status == 1 and "INVALID_ARGUMENT" in err
    else:
        assert status == 2 and err.startswith(f"plexserve infer: {message}")


def test_infer_never_imports_tensorflow(server: RunningServer) -> None:
    """A client starts in well under a second only because TensorFlow stays out of it."""
    code = (
        "import sys; from plexserve.cli import main; "
        f"status = main(['infer', 'mlp', '--url', '{server.address}', "
        "'--input', 'features=[0, 1, 2, 3, 4, 5, 6, 7]']); "
        "print('status', status, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.stdout.splitlines()[-1] == "status 0 False False", result.stderr
