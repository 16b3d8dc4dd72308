"""TF Serving API messages <-> the internal form, `dict[str, numpy.ndarray]`.

The only module that touches TensorFlow's TensorProto. Inputs come in `tensor_content` (raw
little-endian bytes) or in the typed `*_val` field of their dtype (`half_val` holds float16 bit
patterns; `string_val` holds DT_STRING elements); outputs go out as TF Serving sends them:
`tensor_content` for numeric dtypes, `string_val` for strings. Decoding makes the OIP codec's
protocol-level checks (service/codecs/arrays.py) before allocating anything sized by a claimed
shape; checks against the model are Signature.validate's, shared with the other protocols.

The messages are plexserve's own stubs of TF Serving's API (protos/tfserving/, wire-compatible
with tensorflow-serving-api's and TensorFlow's): no TensorFlow import. Stateless and thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from plexserve.codecs.arrays import from_bytes, from_strings, from_values
from plexserve.errors import InvalidInput
from plexserve.proto.tfserving import tf_error_codes_pb2, tf_framework_pb2, tf_serving_pb2
from plexserve.signature import Signature, Tensors, TensorSpec

if TYPE_CHECKING:
    from plexserve.repository import ModelState

PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE_DEF = "signature_def"  # the one GetModelMetadata field TF Serving knows

# TensorFlow dtype -> numpy dtype, for every dtype plexserve serves (DT_STRING is `object`
# holding `bytes`).
_NUMPY_OF: dict[tf_framework_pb2.DataType, np.dtype] = {
    tf_framework_pb2.DT_BOOL: np.dtype(np.bool_),
    tf_framework_pb2.DT_UINT8: np.dtype(np.uint8),
    tf_framework_pb2.DT_UINT16: np.dtype(np.uint16),
    tf_framework_pb2.DT_UINT32: np.dtype(np.uint32),
    tf_framework_pb2.DT_UINT64: np.dtype(np.uint64),
    tf_framework_pb2.DT_INT8: np.dtype(np.int8),
    tf_framework_pb2.DT_INT16: np.dtype(np.int16),
    tf_framework_pb2.DT_INT32: np.dtype(np.int32),
    tf_framework_pb2.DT_INT64: np.dtype(np.int64),
    tf_framework_pb2.DT_HALF: np.dtype(np.float16),
    tf_framework_pb2.DT_FLOAT: np.dtype(np.float32),
    tf_framework_pb2.DT_DOUBLE: np.dtype(np.float64),
    tf_framework_pb2.DT_STRING: np.dtype(object),
}
_DTYPE_OF: dict[np.dtype, tf_framework_pb2.DataType] = {
    dtype: dt for dt, dtype in _NUMPY_OF.items()
}

# The typed field each dtype travels in (TensorFlow's own choice: the narrow integers share
# int_val) and the width of that field's elements on the wire.
_VALUE_FIELD: dict[tf_framework_pb2.DataType, str] = {
    tf_framework_pb2.DT_BOOL: "bool_val",
    tf_framework_pb2.DT_UINT8: "int_val",
    tf_framework_pb2.DT_UINT16: "int_val",
    tf_framework_pb2.DT_UINT32: "uint32_val",
    tf_framework_pb2.DT_UINT64: "uint64_val",
    tf_framework_pb2.DT_INT8: "int_val",
    tf_framework_pb2.DT_INT16: "int_val",
    tf_framework_pb2.DT_INT32: "int_val",
    tf_framework_pb2.DT_INT64: "int64_val",
    tf_framework_pb2.DT_HALF: "half_val",
    tf_framework_pb2.DT_FLOAT: "float_val",
    tf_framework_pb2.DT_DOUBLE: "double_val",
    tf_framework_pb2.DT_STRING: "string_val",
}
_WIRE_DTYPE: dict[str, np.dtype] = {
    "bool_val": np.dtype(np.bool_),
    "int_val": np.dtype(np.int32),
    "int64_val": np.dtype(np.int64),
    "uint32_val": np.dtype(np.uint32),
    "uint64_val": np.dtype(np.uint64),
    "half_val": np.dtype(np.int32),  # float16 bit patterns, widened to int32 by the proto
    "float_val": np.dtype(np.float32),
    "double_val": np.dtype(np.float64),
}
# plexserve's lifecycle states as TF Serving's ModelVersionStatus.State. TF Serving warms a
# version up inside its load, so WARMING is LOADING; it has no failed state: a version that
# failed to load is END with an error status.
_VersionState = tf_serving_pb2.ModelVersionStatus.State
# Keyed by the state's name: this module imports nothing of the server (no TensorFlow), so that
# TF Serving clients (`plexserve bench --protocol tfserving`) stay small.
_STATE_OF: dict[str, tf_serving_pb2.ModelVersionStatus.State] = {
    "LOADING": _VersionState.LOADING,
    "WARMING": _VersionState.LOADING,
    "AVAILABLE": _VersionState.AVAILABLE,
    "UNLOADING": _VersionState.UNLOADING,
    "END": _VersionState.END,
    "FAILED": _VersionState.END,
}


def numpy_dtype(dtype: tf_framework_pb2.DataType) -> np.dtype | None:
    """The numpy dtype of a TensorFlow dtype plexserve serves (DT_STRING: `object`), else None."""
    return _NUMPY_OF.get(dtype)


def dtype_name(dtype: int) -> str:
    try:
        return str(tf_framework_pb2.DataType.Name(dtype))
    except ValueError:
        return f"dtype {dtype}"


def decode_model_spec(spec: tf_serving_pb2.ModelSpec) -> tuple[str, str, str]:
    """(name, version, label) of a ModelSpec; version "" and label "" = the newest version."""
    if not spec.name:
        raise InvalidInput("ModelSpec has no name specified.")
    version = ""
    if spec.HasField("version"):
        if spec.version.value < 0:
            raise InvalidInput(
                f"model_spec.version is {spec.version.value}, not a version: versions are "
                "whole numbers >= 0"
            )
        version = str(spec.version.value)
    return spec.name, version, spec.version_label


def _decode_tensor(name: str, tensor: tf_framework_pb2.TensorProto) -> np.ndarray:
    dtype = _NUMPY_OF.get(tensor.dtype)
    if dtype is None:
        supported = ", ".join(dtype_name(dt) for dt in _NUMPY_OF)
        raise InvalidInput(
            f"input '{name}': {dtype_name(tensor.dtype)} is not supported; "
            f"plexserve serves {supported}"
        )
    type_name = dtype_name(tensor.dtype)
    if tensor.tensor_shape.unknown_rank:
        raise InvalidInput(f"input '{name}': tensor_shape has unknown_rank; send the shape")
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    field = _VALUE_FIELD[tensor.dtype]
    # Every *_val field that holds values, whatever the dtype: values sent in a field that does
    # not belong to the dtype are refused rather than ignored.
    sent = [fd.name for fd, _ in tensor.ListFields() if fd.name.endswith("_val")]
    if tensor.tensor_content:
        if sent:
            raise InvalidInput(f"input '{name}' has both tensor_content and {sent[0]}; send one")
        if tensor.dtype == tf_framework_pb2.DT_STRING:
            raise InvalidInput(
                f"input '{name}': {type_name} cannot be sent in tensor_content; use {field}"
            )
        return from_bytes(name, tensor.tensor_content, shape, dtype, "tensor_content", type_name)
    stray = [f for f in sent if f != field]
    if stray:
        raise InvalidInput(
            f"input '{name}': {type_name} cannot be sent in {stray[0]}; "
            f"use {field} or tensor_content"
        )
    values = getattr(tensor, field)
    if tensor.dtype == tf_framework_pb2.DT_STRING:
        return from_strings(name, values, shape, field)
    if tensor.dtype == tf_framework_pb2.DT_HALF:
        bits = from_values(
            name, values, shape, _WIRE_DTYPE[field], np.dtype(np.uint16), field, "float16 bits"
        )
        return bits.view(np.float16)
    return from_values(name, values, shape, _WIRE_DTYPE[field], dtype, field, type_name)


def decode_tensors(tensors: Mapping[str, tf_framework_pb2.TensorProto]) -> Tensors:
    """PredictRequest.inputs as arrays keyed by input name."""
    return {name: _decode_tensor(name, tensor) for name, tensor in tensors.items()}


def _shape_proto(shape: Iterable[int | None]) -> tf_framework_pb2.TensorShapeProto:
    return tf_framework_pb2.TensorShapeProto(
        dim=[tf_framework_pb2.TensorShapeProto.Dim(size=-1 if d is None else d) for d in shape]
    )


def fill_tensor(target: tf_framework_pb2.TensorProto, array: np.ndarray) -> None:
    """`array` into `target` as TF Serving answers: string_val for strings, else
    tensor_content (little-endian bytes)."""
    target.tensor_shape.CopyFrom(_shape_proto(array.shape))
    if array.dtype.kind in "OSU":
        target.dtype = tf_framework_pb2.DT_STRING
        target.string_val.extend(e.encode() if isinstance(e, str) else bytes(e) for e in array.flat)
        return
    target.dtype = _DTYPE_OF[np.dtype(array.dtype.type)]
    target.tensor_content = np.ascontiguousarray(
        array, dtype=array.dtype.newbyteorder("<")
    ).tobytes()


def _model_spec(name: str, version: int, signature_name: str = "") -> tf_serving_pb2.ModelSpec:
    return tf_serving_pb2.ModelSpec(
        name=name,
        version={"value": version},
        signature_name=signature_name,
    )


def encode_predict_response(
    name: str, version: int, signature_name: str, outputs: Tensors
) -> tf_serving_pb2.PredictResponse:
    """The outputs of the version that answered; its name, version and signature in model_spec."""
    response = tf_serving_pb2.PredictResponse(model_spec=_model_spec(name, version, signature_name))
    for output, array in outputs.items():
        fill_tensor(response.outputs[output], array)
    return response


def encode_predict_request(
    model_spec: tf_serving_pb2.ModelSpec, inputs: Mapping[str, np.ndarray]
) -> tf_serving_pb2.PredictRequest:
    """A client's PredictRequest (the load generator's), `inputs` encoded as `fill_tensor` does."""
    request = tf_serving_pb2.PredictRequest(model_spec=model_spec)
    for name, array in inputs.items():
        fill_tensor(request.inputs[name], array)
    return request


def _tensor_info(spec: TensorSpec) -> tf_framework_pb2.TensorInfo:
    """TensorInfo.name carries the signature key: TF Serving clients address tensors by key,
    and the graph-internal tensor name means nothing outside the graph."""
    return tf_framework_pb2.TensorInfo(
        name=spec.name, dtype=_DTYPE_OF[spec.dtype], tensor_shape=_shape_proto(spec.shape)
    )


def signature_def_map(signature_name: str, signature: Signature) -> tf_serving_pb2.SignatureDefMap:
    """The SignatureDefMap of the one signature plexserve serves, as GetModelMetadata returns
    it (dimension -1 = any size; dimension 0 is the batch)."""
    signature_def = tf_framework_pb2.SignatureDef(
        method_name=PREDICT_METHOD,
        inputs={name: _tensor_info(spec) for name, spec in signature.inputs.items()},
        outputs={name: _tensor_info(spec) for name, spec in signature.outputs.items()},
    )
    return tf_serving_pb2.SignatureDefMap(signature_def={signature_name: signature_def})


def check_metadata_fields(fields: Iterable[str]) -> None:
    fields = list(fields)
    if not fields:
        raise InvalidInput(
            "GetModelMetadataRequest must specify at least one metadata_field "
            f"(plexserve knows '{SIGNATURE_DEF}')"
        )
    for field in fields:
        if field != SIGNATURE_DEF:
            raise InvalidInput(
                f"Metadata field {field} is not supported; plexserve knows '{SIGNATURE_DEF}'"
            )


def encode_model_metadata(
    name: str, version: int, signature_name: str, signature: Signature
) -> tf_serving_pb2.GetModelMetadataResponse:
    """metadata["signature_def"] is the SignatureDefMap packed in Any, as TF Serving has it."""
    response = tf_serving_pb2.GetModelMetadataResponse(model_spec=_model_spec(name, version))
    response.metadata[SIGNATURE_DEF].Pack(signature_def_map(signature_name, signature))
    return response


def model_version_status(
    version: int, state: ModelState, reason: str = ""
) -> tf_serving_pb2.ModelVersionStatus:
    """A version's state in TF Serving's terms; a FAILED version is END with its reason."""
    status = tf_serving_pb2.StatusProto()
    if state.value == "FAILED":
        status.error_code = tf_error_codes_pb2.UNKNOWN
        status.error_message = reason or "the version failed to load"
    return tf_serving_pb2.ModelVersionStatus(
        version=version, state=_STATE_OF[state.value], status=status
    )
