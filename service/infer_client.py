"""`plexserve infer`: a one-shot Open Inference Protocol v2 client, for a quick check of a model.

Called by service/cli.py with the parsed flags. `run_infer` reads the inputs named on the command
line (`NAME=FILE.npy`, `NAME=FILE.json` or `NAME=<JSON literal>`), asks the server for the model's
metadata (the datatype and shape of every input), sends one inference request over gRPC
(ModelInfer) or REST (`POST /v2/models/NAME[/versions/V]/infer`), and prints every output: name,
datatype, shape and values.

Never imports TensorFlow: the generated OIP stubs (service/proto), numpy and the standard
library's HTTP client are all it needs, so it starts in well under a second. Synchronous, one
request, no state: a tool for a person at a terminal, not a load generator (`plexserve bench`).

Exit statuses (the CLI returns them): 0 answered; 1 the server refused or could not be reached
(its message is printed); 2 the command line itself is wrong (a bad NAME=VALUE, an unreadable
file, a value that does not fit the input's datatype).
"""

from __future__ import annotations

import http.client
import json
import struct
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

PROTOCOLS = ("grpc", "rest")
DEFAULT_PORTS = {"grpc": 8500, "rest": 8501}
# The Open Inference Protocol's datatypes and the numpy dtypes that hold them.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}


class UsageError(Exception):
    """The command line is wrong: fix it before asking the server anything (exit status 2)."""


class ServerError(Exception):
    """The server refused the request or could not be reached (exit status 1)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Metadata:
    name: str
    versions: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class Output:
    name: str
    datatype: str
    array: np.ndarray


@dataclass(frozen=True)
class Answer:
    model: str
    version: str
    outputs: tuple[Output, ...]


# --- the command line's inputs ----------------------------------------------------------------


def read_value(spec: str) -> tuple[str, Any]:
    """`NAME=FILE.npy`, `NAME=FILE.json` or `NAME=<JSON literal>` -> (name, value)."""
    name, separator, text = spec.partition("=")
    if not separator or not name:
        raise UsageError(f"--input {spec!r}: expected NAME=FILE.npy, NAME=FILE.json or NAME=JSON")
    if text.endswith(".npy"):
        try:
            return name, np.load(text, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise UsageError(f"--input {name}: cannot read {text}: {error}") from None
    if text.endswith(".json"):
        try:
            return name, json.loads(Path(text).read_text())
        except (OSError, ValueError) as error:
            raise UsageError(f"--input {name}: cannot read {text}: {error}") from None
    try:
        return name, json.loads(text)
    except ValueError:
        raise UsageError(
            f"--input {name}: {text!r} is neither JSON nor a file ending in .npy or .json"
        ) from None


def to_array(name: str, value: Any, spec: TensorSpec | None) -> tuple[str, np.ndarray]:
    """The value as an array of the input's datatype, with a batch dimension.

    A value with one dimension fewer than the model's input (one row) gets a batch dimension of 1;
    for an input of one value per row (shape [-1, 1], as OIP publishes a scalar per row), a list
    is one value per row.
    An input the model does not have is sent as it is (the server then names it), typed by its
    values: the server's answer is the useful error message, not ours.
    """
    if spec is None:
        array = np.asarray(value)
        if array.dtype.kind in "OSU":
            return "BYTES", _bytes_array(name, array)
        datatype = next((d for d, t in NUMPY_DTYPES.items() if t == array.dtype), "FP64")
        return datatype, array
    dtype = NUMPY_DTYPES.get(spec.datatype)
    if dtype is None:
        raise UsageError(f"input {name}: datatype {spec.datatype} is not one this client knows")
    try:
        array = np.asarray(value)
        if spec.datatype == "BYTES":
            array = _bytes_array(name, array)
        else:
            # same_kind: 0.5 may become FP32, but not INT32; 3 may become FP32 or INT8
            array = array.astype(dtype, casting="same_kind")
    except (TypeError, ValueError) as error:
        raise UsageError(f"input {name}: cannot be {spec.datatype}: {error}") from None
    if len(spec.shape) == 2 and spec.shape[1] == 1 and array.ndim <= 1:
        array = array.reshape(-1, 1)  # one value per row: a list is rows, a scalar is one row
    elif array.ndim == len(spec.shape) - 1:
        array = array[np.newaxis, ...]
    return spec.datatype, array


def _bytes_array(name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "OSU":
        raise UsageError(f"input {name}: BYTES values must be strings, got {array.dtype}")
    flat = [e.encode() if isinstance(e, str) else bytes(e) for e in array.ravel().tolist()]
    return np.array(flat, dtype=object).reshape(array.shape)


# --- gRPC --------------------------------------------------------------------------------------


class GrpcClient:
    """ModelMetadata and ModelInfer over one insecure channel to HOST:PORT."""

    def __init__(self, url: str, timeout: float) -> None:
        import grpc

        from plexserve.proto import grpc_service_pb2 as pb
        from plexserve.proto import grpc_service_pb2_grpc as pb_grpc

        self._grpc = grpc
        self._pb = pb
        self._timeout = timeout
        self._channel = grpc.insecure_channel(url)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self._timeout)
        except self._grpc.RpcError as error:
            raise ServerError(f"{error.code().name}: {error.details()}") from None

    def metadata(self, model: str, version: str) -> Metadata:
        pb = self._pb
        answer = self._call(
            self._stub.ModelMetadata, pb.ModelMetadataRequest(name=model, version=version)
        )
        return Metadata(
            answer.name,
            tuple(answer.versions),
            tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in answer.inputs),
        )

    def infer(self, model: str, version: str, inputs: dict[str, tuple[str, np.ndarray]]) -> Answer:
        pb = self._pb
        request = pb.ModelInferRequest(model_name=model, model_version=version)
        for name, (datatype, array) in inputs.items():
            request.inputs.add(name=name, datatype=datatype, shape=array.shape)
            request.raw_input_contents.append(raw_bytes(datatype, array))
        answer = self._call(self._stub.ModelInfer, request)
        outputs = []
        for index, tensor in enumerate(answer.outputs):
            shape = tuple(tensor.shape)
            if index < len(answer.raw_output_contents):
                array = from_raw(tensor.datatype, answer.raw_output_contents[index], shape)
            else:  # typed contents: the protocol allows them, plexserve sends raw
                array = _from_contents(tensor, shape)
            outputs.append(Output(tensor.name, tensor.datatype, array))
        return Answer(answer.model_name, answer.model_version, tuple(outputs))


def raw_bytes(datatype: str, array: np.ndarray) -> bytes:
    """The protocol's raw form: little-endian elements, BYTES each behind a 4-byte length."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(e)) + e for e in array.ravel().tolist())
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def from_raw(datatype: str, raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    if datatype == "BYTES":
        elements, offset = [], 0
        while offset < len(raw):
            (length,) = struct.unpack_from("<I", raw, offset)
            elements.append(raw[offset + 4 : offset + 4 + length])
            offset += 4 + length
        return np.array(elements, dtype=object).reshape(shape)
    dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
    return np.frombuffer(raw, dtype).astype(dtype.newbyteorder("=")).reshape(shape)


_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _from_contents(tensor: Any, shape: tuple[int, ...]) -> np.ndarray:
    values = list(getattr(tensor.contents, _CONTENTS.get(tensor.datatype, "bytes_contents")))
    return np.array(values, dtype=NUMPY_DTYPES[tensor.datatype]).reshape(shape)


# --- REST --------------------------------------------------------------------------------------


class RestClient:
    """GET /v2/models/M[/versions/V] and POST .../infer, JSON tensors, to HOST:PORT."""

    def __init__(self, url: str, timeout: float) -> None:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme != "http" or not parsed.hostname:
            raise UsageError(f"--url {url}: expected HOST:PORT or http://HOST:PORT")
        self._host = parsed.hostname
        self._port = parsed.port or DEFAULT_PORTS["rest"]
        self._timeout = timeout

    def close(self) -> None:
        pass

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {} if body is None else {"Content-Type": "application/json"}
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            text = response.read()
        except OSError as error:
            raise ServerError(f"{self._host}:{self._port}: {error}") from None
        finally:
            connection.close()
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {"error": text.decode(errors="replace")}
        if response.status != 200:
            message = answer.get("error", answer) if isinstance(answer, dict) else answer
            raise ServerError(f"HTTP {response.status} {response.reason}: {message}")
        return answer

    @staticmethod
    def _path(model: str, version: str) -> str:
        path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
        return f"{path}/versions/{urllib.parse.quote(version, safe='')}" if version else path

    def metadata(self, model: str, version: str) -> Metadata:
        answer = self._request("GET", self._path(model, version))
        return Metadata(
            answer["name"],
            tuple(answer.get("versions", ())),
            tuple(
                TensorSpec(t["name"], t["datatype"], tuple(int(d) for d in t["shape"]))
                for t in answer.get("inputs", ())
            ),
        )

    def infer(self, model: str, version: str, inputs: dict[str, tuple[str, np.ndarray]]) -> Answer:
        tensors = []
        for name, (datatype, array) in inputs.items():
            if datatype == "BYTES":
                try:
                    data: list[Any] = [e.decode() for e in array.ravel().tolist()]
                except UnicodeDecodeError:
                    raise UsageError(
                        f"input {name}: BYTES that are not UTF-8 cannot travel in JSON: "
                        "use --protocol grpc"
                    ) from None
            else:
                data = array.ravel().tolist()
            tensors.append(
                {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}
            )
        answer = self._request("POST", self._path(model, version) + "/infer", {"inputs": tensors})
        outputs = []
        for tensor in answer.get("outputs", ()):
            datatype, shape = tensor["datatype"], tuple(tensor["shape"])
            if datatype == "BYTES":
                data = [e.encode() if isinstance(e, str) else e for e in tensor["data"]]
                array = np.array(data, dtype=object).reshape(shape)
            else:
                array = np.array(tensor["data"], dtype=NUMPY_DTYPES[datatype]).reshape(shape)
            outputs.append(Output(tensor["name"], datatype, array))
        return Answer(answer["model_name"], str(answer.get("model_version", "")), tuple(outputs))


# --- the command -------------------------------------------------------------------------------


def run_infer(
    model: str,
    input_specs: Sequence[str],
    version: str = "",
    url: str | None = None,
    protocol: str = "grpc",
    timeout: float = 30.0,
    out: TextIO | None = None,
) -> Answer:
    """One inference; prints the answer to `out` (default: standard output) and returns it.
    Raises UsageError or ServerError with the message to show."""
    values = [read_value(spec) for spec in input_specs]  # before any network: fail fast
    target = url or f"localhost:{DEFAULT_PORTS[protocol]}"
    client: GrpcClient | RestClient = (
        GrpcClient(target, timeout) if protocol == "grpc" else RestClient(target, timeout)
    )
    try:
        metadata = client.metadata(model, version)
        specs = {spec.name: spec for spec in metadata.inputs}
        inputs = {name: to_array(name, value, specs.get(name)) for name, value in values}
        answer = client.infer(model, version, inputs)
    finally:
        client.close()
    print_answer(answer, out or sys.stdout)  # sys.stdout now, not at import: it may be replaced
    return answer


def print_answer(answer: Answer, out: TextIO) -> None:
    out.write(f"model {answer.model} version {answer.version}\n")
    for output in answer.outputs:
        shape = ", ".join(str(d) for d in output.array.shape)
        out.write(f"{output.name} {output.datatype} [{shape}]\n")
        out.write(np.array2string(output.array, separator=", ") + "\n")
