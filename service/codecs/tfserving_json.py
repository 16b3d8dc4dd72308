"""TF Serving's REST API bodies <-> the internal form, `dict[str, numpy.ndarray]`.

`:predict` takes one of two forms, and answers in the matching one, as TF Serving does:
- row (`instances`): a list with one element per row. An element is an object keyed by input
  name, or, when the model has a single input, that input's value. Rows are stacked: an input's
  tensor is [rows, *the shape of one row's value]. Answer: `predictions`, a list with one element
  per row: the row of the only output, or an object keyed by output name when there are several.
- columnar (`inputs`): an object keyed by input name, each value a whole tensor (batch dimension
  included), or, for a single input, that tensor itself. Answer: `outputs`, the only output's
  tensor, or an object keyed by output name.
Values are parsed as the signature's dtype says (a JSON number is a float for a float input);
strings are JSON strings or `{"b64": "..."}` for binary data, and string outputs whose name ends
in `_bytes` are answered in that form. Floats are written at their shortest round-trip form (a
float32 0.1 is `0.1`), whole ones with a `.0`.

Also TF Serving's JSON of its metadata and model status messages (built by
service/codecs/tfserving.py): protobuf's JSON printer with default values printed. Stateless and
thread-safe.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from plexserve.codecs.arrays import from_json_numbers, from_json_strings
from plexserve.codecs.oip_json import dumps, loads
from plexserve.codecs.tfserving import signature_def_map
from plexserve.errors import InvalidInput, name_list
from plexserve.proto.tfserving import tf_serving_pb2
from plexserve.signature import Signature, Tensors

INSTANCES, INPUTS = "instances", "inputs"
BYTES_SUFFIX = "_bytes"


@dataclass(frozen=True)
class PredictRequest:
    signature_name: str
    row: bool  # `instances` (row form) or `inputs` (columnar form)
    value: Any


def parse_predict_request(body: bytes) -> PredictRequest:
    """The body's own structure; the tensors are decoded against the model's signature later."""
    if not body:
        raise InvalidInput("JSON Parse error: The document is empty")
    document = loads(body)
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object with 'instances' or 'inputs'")
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidInput("'signature_name' key must be a string value")
    if INSTANCES in document and INPUTS in document:
        raise InvalidInput("expecting only one of 'inputs' or 'instances' keys to exist")
    if INSTANCES in document:
        instances = document[INSTANCES]
        if not isinstance(instances, list):
            raise InvalidInput("expecting 'instances' to be a list/array")
        if not instances:
            raise InvalidInput("no values in 'instances' array")
        return PredictRequest(signature_name, True, instances)
    if INPUTS in document:
        return PredictRequest(signature_name, False, document[INPUTS])
    raise InvalidInput("missing 'inputs' or 'instances' key")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named(value: Any) -> bool:
    """An object keyed by input name (a {"b64": ...} object is a value, not names)."""
    return isinstance(value, dict) and not _is_b64(value)


def _string_element(value: object) -> bytes | None:
    if isinstance(value, str):
        return value.encode()
    if _is_b64(value):
        assert isinstance(value, dict)
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


def _tensor(name: str, value: Any, signature: Signature, where: str) -> np.ndarray:
    spec = signature.inputs[name]
    if spec.dtype == object:
        return from_json_strings(
            name, value, where, _string_element, 'strings or {"b64": "<base64 data>"} objects'
        )
    return from_json_numbers(name, value, spec.dtype, where, spec.datatype)


def _check_names(names: set[str], signature: Signature, where: str) -> None:
    expected = set(signature.inputs)
    if names != expected:
        missing, unexpected = sorted(expected - names), sorted(names - expected)
        parts = [f"missing inputs {name_list(missing)}"] if missing else []
        parts += [f"unexpected inputs {name_list(unexpected)}"] if unexpected else []
        raise InvalidInput(
            f"{where}: {' and '.join(parts)}; the model takes {name_list(sorted(expected))}"
        )


def _single_input(signature: Signature, form: str) -> str:
    if len(signature.inputs) != 1:
        raise InvalidInput(
            f"{form} is a plain value/list, but the model takes several inputs "
            f"{sorted(signature.inputs)}: send an object keyed by input name"
        )
    return next(iter(signature.inputs))


def decode_predict_request(request: PredictRequest, signature: Signature) -> Tensors:
    """The request's tensors, parsed as the signature's dtypes say."""
    value = request.value
    if not request.row:
        if not _is_named(value):
            name = _single_input(signature, "'inputs'")
            return {name: _tensor(name, value, signature, "'inputs'")}
        _check_names(set(value), signature, "'inputs' object")
        return {n: _tensor(n, v, signature, f"inputs['{n}']") for n, v in value.items()}
    if not _is_named(value[0]):
        name = _single_input(signature, "'instances'")
        for index, instance in enumerate(value):
            if _is_named(instance):
                raise InvalidInput(
                    f"expecting value/list but got object at item {index} of 'instances'"
                )
        return {name: _tensor(name, value, signature, "'instances'")}
    for index, instance in enumerate(value):
        if not _is_named(instance):
            raise InvalidInput(
                f"expecting object but got value/list at item {index} of 'instances'"
            )
        _check_names(set(instance), signature, f"item {index} of 'instances'")
    return {
        name: _tensor(
            name, [instance[name] for instance in value], signature, f"'instances' '{name}'"
        )
        for name in signature.inputs
    }


def _strings(name: str, array: np.ndarray) -> Any:
    """A string tensor as nested lists: `{"b64": ...}` objects for a `_bytes` output, else text
    (bytes that are not UTF-8 are replaced, as JSON strings must be text)."""
    flat: list[Any]
    if name.endswith(BYTES_SUFFIX):
        flat = [{"b64": base64.b64encode(bytes(e)).decode()} for e in array.flat]
    else:
        flat = [e.decode(errors="replace") if isinstance(e, bytes) else str(e) for e in array.flat]
    values = np.empty(len(flat), dtype=object)
    values[:] = flat
    return values.reshape(array.shape).tolist()


def _json_value(name: str, array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind in "SU":
        return _strings(name, array)
    if array.ndim == 0:
        return array[()]
    return np.ascontiguousarray(array)


def encode_predict_response(outputs: Tensors, row: bool) -> bytes:
    """`predictions` (row form) or `outputs` (columnar form), shaped as TF Serving shapes them."""
    values = {name: _json_value(name, array) for name, array in outputs.items()}
    if not row:
        if len(values) == 1:
            return dumps({"outputs": next(iter(values.values()))})
        return dumps({"outputs": values})
    if len(values) == 1:
        return dumps({"predictions": next(iter(values.values()))})
    rows = len(next(iter(outputs.values())))
    return dumps({"predictions": [{n: v[i] for n, v in values.items()} for i in range(rows)]})


def _message_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def status_json(response: Message) -> bytes:
    """GetModelStatusResponse as TF Serving's REST API prints it."""
    return dumps(_message_json(response))


def metadata_json(name: str, version: int, signature_name: str, signature: Signature) -> bytes:
    """GET .../metadata as TF Serving answers it: the model spec and the SignatureDefMap."""
    spec = tf_serving_pb2.ModelSpec(name=name, version={"value": version})
    return dumps(
        {
            "model_spec": _message_json(spec),
            "metadata": {
                "signature_def": _message_json(signature_def_map(signature_name, signature))
            },
        }
    )
