"""Open Inference Protocol v2 REST bodies <-> the internal form, `dict[str, numpy.ndarray]`.

The JSON form of KServe's and Triton's REST API: `inputs` with `name`, `datatype`, `shape` and
`data` (row-major, flat or nested; BYTES elements are strings), the request's `id`,
`parameters` and `outputs`; and Triton's binary tensor extension: when the request carries an
`Inference-Header-Content-Length` header, the body is that many bytes of JSON followed by raw
tensors, each input with `parameters.binary_data_size` taking its bytes in order (fixed-width
elements little-endian, BYTES elements each behind a 4-byte length). An output asked for with
`parameters.binary_data` (or every output, with the request's `parameters.binary_data_output`)
comes back the same way.

Decoding checks what the body itself can get wrong, and names the field (`inputs[1].shape`,
`parameters.timeout`); checks against the model are Signature.validate's, shared with every
protocol. Also the JSON form of the protocol's metadata, config and statistics messages (built
by service/codecs/oip.py), as Triton prints them. Stateless and thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

from plexserve.codecs.arrays import (
    element_count,
    from_bytes,
    from_json_numbers,
    from_json_strings,
    from_length_prefixed,
    to_length_prefixed,
    to_little_endian_bytes,
)
from plexserve.errors import InvalidInput
from plexserve.signature import OIP_DATATYPES, Signature, Tensors

HEADER_LENGTH = "Inference-Header-Content-Length"
# Request parameters whose meaning plexserve cannot give: refused, so that a client relying on
# one hears it. Others than these and the ones acted on (timeout, binary_data_output) are
# ignored, as Triton passes them to a backend that may not read them either.
_REFUSED_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> bytes:
    """JSON with numpy arrays and scalars written as numbers (float32 at its shortest)."""
    return orjson.dumps(value, option=_DUMPS_OPTIONS)


def loads(body: bytes | memoryview, what: str = "the request body") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"{what} is not valid JSON: {error}") from None


def message_json(message: Message) -> dict[str, Any]:
    """A protobuf message as Triton's REST API prints it: proto field names, every field even at
    its default, 64-bit integers as numbers, enums by name."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


@dataclass
class InferRequest:
    """The JSON header of an inference request, checked; tensors are decoded later."""

    id: str
    inputs: list[Any]
    binary: memoryview
    timeout: float | None = None  # seconds
    binary_output: bool = False  # parameters.binary_data_output
    outputs: dict[str, bool] = field(default_factory=dict)  # requested name -> binary


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{where} must be an integer >= 0, got {value!r}")
    return value


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{where} must be true or false, got {value!r}")
    return value


def _parameters(container: dict[str, Any], where: str) -> dict[str, Any]:
    return _object(container.get("parameters", {}), f"{where}parameters")


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Split the body (JSON header, then binary tensors when `header_length` is given) and check
    the header's own fields."""
    binary = memoryview(b"")
    json_part: bytes | memoryview = body
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise InvalidInput(
                f"header {HEADER_LENGTH}: {header_length!r} is not a byte count within the "
                f"{len(body)}-byte body"
            )
        view = memoryview(body)
        json_part, binary = view[:length], view[length:]
    header = _object(loads(json_part, "the inference request header"), "the inference request")
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput(f"id must be a string, got {request_id!r}")
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("inputs must be a list of tensors (name, datatype, shape, data)")
    request = InferRequest(request_id, inputs, binary)
    parameters = _parameters(header, "")
    for refused in _REFUSED_PARAMETERS:
        if refused in parameters:
            raise InvalidInput(
                f"parameters.{refused}: plexserve serves stateless models and has no sequence "
                "batcher; send each request on its own"
            )
    if "timeout" in parameters:  # Triton's request timeout, in microseconds
        request.timeout = _integer(parameters["timeout"], "parameters.timeout") / 1e6
    if "binary_data_output" in parameters:
        request.binary_output = _boolean(
            parameters["binary_data_output"], "parameters.binary_data_output"
        )
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidInput("outputs must be a list of {name, parameters}")
    for index, output in enumerate(outputs):
        where = f"outputs[{index}]"
        output = _object(output, where)
        name = output.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{where}.name must be a non-empty string")
        output_parameters = _parameters(output, f"{where}.")
        if output_parameters.get("classification"):
            raise InvalidInput(
                f"{where}.parameters.classification: plexserve does not implement the "
                "classification extension; request the output itself"
            )
        binary_data = output_parameters.get("binary_data", request.binary_output)
        request.outputs[name] = _boolean(binary_data, f"{where}.parameters.binary_data")
    return request


def _decode_input(index: int, tensor: Any, binary: memoryview, offset: int) -> tuple[str, Any, int]:
    where = f"inputs[{index}]"
    tensor = _object(tensor, where)
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}.name must be a non-empty string")
    datatype = tensor.get("datatype")
    if datatype not in OIP_DATATYPES:
        raise InvalidInput(
            f"input '{name}': unknown datatype {datatype!r} in {where}.datatype; "
            f"expected one of {', '.join(OIP_DATATYPES)}"
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or any(
        isinstance(d, bool) or not isinstance(d, int) for d in shape
    ):
        raise InvalidInput(f"input '{name}': {where}.shape must be a list of integers")
    dtype = OIP_DATATYPES[datatype]
    size = _parameters(tensor, f"{where}.").get("binary_data_size")
    if size is not None:
        size = _integer(size, f"{where}.parameters.binary_data_size")
        if "data" in tensor:
            raise InvalidInput(
                f"input '{name}' has both {where}.data and parameters.binary_data_size; send one"
            )
        if offset + size > len(binary):
            raise InvalidInput(
                f"input '{name}': {where}.parameters.binary_data_size is {size} but only "
                f"{len(binary) - offset} bytes of binary data remain after the JSON header"
            )
        raw = binary[offset : offset + size]
        where = f"the binary data of {where}"
        if datatype == "BYTES":
            return name, from_length_prefixed(name, raw, shape, where), offset + size
        return name, from_bytes(name, bytes(raw), shape, dtype, where, datatype), offset + size
    if "data" not in tensor:
        raise InvalidInput(
            f"input '{name}' has no {where}.data (or parameters.binary_data_size with "
            f"the {HEADER_LENGTH} header)"
        )
    count = element_count(name, shape)
    data = tensor["data"]
    if datatype == "BYTES":
        array = from_json_strings(
            name, data, f"{where}.data", _utf8, "strings (BYTES elements in JSON are strings)"
        )
    else:
        array = from_json_numbers(name, data, dtype, f"{where}.data", datatype)
    if array.size != count:
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {count} elements, {where}.data has {array.size}"
        )
    return name, array.reshape(shape), offset


def _utf8(value: object) -> bytes | None:
    return value.encode() if isinstance(value, str) else None


def decode_infer_request(request: InferRequest) -> tuple[Tensors, list[str]]:
    """Inputs by name and the requested output names (empty = all)."""
    inputs: Tensors = {}
    offset = 0
    for index, tensor in enumerate(request.inputs):
        name, array, offset = _decode_input(index, tensor, request.binary, offset)
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears more than once")
        inputs[name] = array
    if offset != len(request.binary):
        raise InvalidInput(
            f"{len(request.binary) - offset} bytes of binary data after the JSON header belong to "
            "no input: the inputs' parameters.binary_data_size must add up to them"
        )
    return inputs, list(request.outputs)


def _text(name: str, array: np.ndarray) -> list[str]:
    try:
        return [e.decode() if isinstance(e, bytes) else str(e) for e in array.flat]
    except UnicodeDecodeError:
        raise InvalidInput(
            f"output '{name}' holds bytes that are not UTF-8 text, which JSON cannot carry: "
            'ask for it with "parameters": {"binary_data": true}'
        ) from None


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Tensors,
    signature: Signature,
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None): outputs asked for as binary data follow the JSON
    header, in order, and the header length is then the response's HEADER_LENGTH."""
    tensors: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for name, array in outputs.items():
        datatype = signature.outputs[name].datatype
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if request.outputs.get(name, request.binary_output):
            data = (
                to_length_prefixed(array) if datatype == "BYTES" else to_little_endian_bytes(array)
            )
            tensor["parameters"] = {"binary_data_size": len(data)}
            binary.append(data)
        elif datatype == "BYTES":
            tensor["data"] = _text(name, array)
        else:
            tensor["data"] = np.ascontiguousarray(array).reshape(-1)
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id:
        response["id"] = request.id
    response["outputs"] = tensors
    header = dumps(response)
    if not binary:
        return header, None
    return b"".join([header, *binary]), len(header)


def repository_index_json(
    entries: Sequence[Any], ready_only: bool, available: str
) -> list[dict[str, str]]:
    """RepositoryIndex as Triton's REST API answers it: a list of {name, version, state,
    reason}, only the fields that are set."""
    index = []
    for entry in entries:
        if ready_only and entry.state != available:
            continue
        item = {"name": entry.name, "version": entry.version, "state": entry.state}
        item["reason"] = entry.reason
        index.append({key: value for key, value in item.items() if value})
    return index
