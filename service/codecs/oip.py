"""Open Inference Protocol v2 messages <-> the internal form, `dict[str, numpy.ndarray]`.

The only module that touches OIP tensor protobufs. Decoding checks what the protocol itself can
get wrong (datatype names, negative dimensions, content that does not match the claimed shape,
malformed BYTES length prefixes, raw and typed content mixed) before allocating anything sized by
a claimed shape; checks against the model (names, dtypes, shapes) are Signature.validate's, shared
with the other protocols. Stateless and thread-safe.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from plexserve.codecs.arrays import element_count, from_bytes, from_strings, from_values
from plexserve.errors import InvalidInput
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.proto import model_config_pb2 as config_pb
from plexserve.settings import BatchingSettings
from plexserve.signature import OIP_DATATYPES, Signature, Tensors, TensorSpec
from plexserve.stats import Duration, ExecutionStats

PLATFORM = "tensorflow_savedmodel"

# Which typed-contents field carries each datatype (FP16 has none in the protocol).
_CONTENTS_FIELD = {
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
_CONTENTS_FIELDS = sorted(set(_CONTENTS_FIELD.values()))
_WIRE_DTYPE = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}
_LENGTH = struct.Struct("<I")
_OutputTensor = pb.ModelInferResponse.InferOutputTensor


def _split_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    """Split length-prefixed BYTES elements; every element costs at least its 4-byte prefix, so
    a claimed element count larger than the content allows is refused before allocating."""
    if count * _LENGTH.size > len(raw):
        raise InvalidInput(
            f"input '{name}': {len(raw)} bytes of BYTES content cannot hold "
            f"{count} elements (each needs a 4-byte length prefix)"
        )
    elements = np.empty(count, dtype=object)
    offset, end = 0, len(raw)
    for i in range(count):
        if offset + _LENGTH.size > end:
            raise InvalidInput(
                f"input '{name}': BYTES content ends before the length prefix "
                f"of element {i} of {count}"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > end:
            raise InvalidInput(
                f"input '{name}': BYTES element {i} claims {length} bytes but "
                f"only {end - offset} remain"
            )
        elements[i] = raw[offset : offset + length]
        offset += length
    if offset != end:
        raise InvalidInput(
            f"input '{name}': {end - offset} bytes left over after the "
            f"{count} BYTES elements of shape"
        )
    return elements


# Fixed-width datatypes as they travel: little-endian.
_WIRE_LE = {
    name: dtype.newbyteorder("<") for name, dtype in OIP_DATATYPES.items() if name != "BYTES"
}


def _decode_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    if datatype == "BYTES":
        return _split_bytes(name, raw, element_count(name, shape)).reshape(shape)
    dtype = _WIRE_LE[datatype]
    if len(shape) == 2 and 0 < shape[0] and 0 < shape[1]:  # the common case, checked cheaply
        if len(raw) == shape[0] * shape[1] * dtype.itemsize:
            return np.frombuffer(raw, dtype).reshape(shape)
    return from_bytes(name, raw, shape, dtype, "raw content", datatype)


def _decode_typed(
    name: str, datatype: str, shape: list[int], tensor: pb.ModelInferRequest.InferInputTensor
) -> np.ndarray:
    count = element_count(name, shape)
    field = _CONTENTS_FIELD.get(datatype)
    contents = tensor.contents
    stray = [f for f in _CONTENTS_FIELDS if f != field and len(getattr(contents, f))]
    if field is None and count == 0 and not stray:
        return np.empty(shape, dtype=OIP_DATATYPES[datatype])
    if field is None or stray:
        where = f"contents.{stray[0]}" if stray else "typed contents"
        wanted = f"contents.{field}" if field else "raw_input_contents (FP16 has no typed field)"
        raise InvalidInput(
            f"input '{name}': datatype {datatype} cannot be sent in {where}; use {wanted}"
        )
    values = getattr(contents, field)
    if datatype == "BYTES":
        return from_strings(name, values, shape, f"contents.{field}")
    return from_values(
        name,
        values,
        shape,
        _WIRE_DTYPE[field],
        OIP_DATATYPES[datatype],
        f"contents.{field}",
        datatype,
    )


def decode_infer_request(request: pb.ModelInferRequest) -> tuple[Tensors, list[str]]:
    """Inputs by name and the requested output names (empty = all)."""
    tensors = request.inputs
    raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(tensors):
        raise InvalidInput(
            f"raw_input_contents has {len(raw_contents)} entries for "
            f"{len(tensors)} inputs; send one per input, in order, or none"
        )
    inputs: Tensors = {}
    for index, tensor in enumerate(tensors):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears more than once")
        if datatype not in OIP_DATATYPES:
            raise InvalidInput(
                f"input '{name}': unknown datatype '{datatype}'; "
                f"expected one of {', '.join(OIP_DATATYPES)}"
            )
        if raw_contents:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{name}' has both raw_input_contents and typed contents; send one"
                )
            inputs[name] = _decode_raw(name, datatype, shape, raw_contents[index])
        else:
            inputs[name] = _decode_typed(name, datatype, shape, tensor)
    outputs = request.outputs
    return inputs, [output.name for output in outputs] if outputs else []


def _encode_raw(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OSU":
        parts = []
        for element in array.flat:
            data = element.encode() if isinstance(element, str) else bytes(element)
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()


def encode_infer_response(
    model_name: str, model_version: str, request_id: str, outputs: Tensors, signature: Signature
) -> pb.ModelInferResponse:
    """A response with every output in raw_output_contents, in the order of `outputs`."""
    return pb.ModelInferResponse(
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        outputs=[
            _OutputTensor(name=name, datatype=signature.outputs[name].datatype, shape=array.shape)
            for name, array in outputs.items()
        ],
        raw_output_contents=[_encode_raw(array) for array in outputs.values()],
    )


def _scalar_per_row(spec: TensorSpec) -> bool:
    return len(spec.shape) == 1 and spec.shape[0] is None


def _tensor_metadata(spec: TensorSpec, is_input: bool) -> pb.ModelMetadataResponse.TensorMetadata:
    """An input of one scalar per row is published as [-1, 1], as Triton publishes its reshaped
    inputs: clients (perf_analyzer among them) cannot build a request from an empty row shape.
    Signature.validate accepts both [batch] and [batch, 1] for it."""
    shape = [-1, 1] if is_input and _scalar_per_row(spec) else spec.shape
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=[-1 if d is None else d for d in shape]
    )


def model_metadata(
    name: str, versions: Sequence[str], signature: Signature
) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=name,
        versions=list(versions),
        platform=PLATFORM,
        inputs=[_tensor_metadata(spec, is_input=True) for spec in signature.inputs.values()],
        outputs=[_tensor_metadata(spec, is_input=False) for spec in signature.outputs.values()],
    )


def _config_datatype(spec: TensorSpec) -> config_pb.DataType:
    name = "STRING" if spec.datatype == "BYTES" else spec.datatype
    return config_pb.DataType.Value(f"TYPE_{name}")


def _dims(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    """`dims` (and `reshape`) of a tensor in Triton's ModelConfig. A batched tensor holding one
    scalar per row is declared as Triton declares it, dims [1] with reshape [] (Triton refuses
    empty dims, and so does perf_analyzer); requests may send it as [batch] or [batch, 1]."""
    dims = spec.shape[1:] if batched else spec.shape
    if batched and _scalar_per_row(spec):
        return {"dims": [1], "reshape": config_pb.ModelTensorReshape(shape=[])}
    return {"dims": [-1 if d is None else d for d in dims]}


def model_config(
    name: str, signature: Signature, batching: BatchingSettings
) -> pb.ModelConfigResponse:
    """Triton's view of the model: max_batch_size, tensors (without the batch dimension when
    max_batch_size > 0) and, when batching is on, the dynamic batcher's settings."""
    batched = batching.max_batch_size > 0
    config = config_pb.ModelConfig(
        name=name,
        platform=PLATFORM,
        max_batch_size=batching.max_batch_size,
        input=[
            config_pb.ModelInput(name=s.name, data_type=_config_datatype(s), **_dims(s, batched))
            for s in signature.inputs.values()
        ],
        output=[
            config_pb.ModelOutput(name=s.name, data_type=_config_datatype(s), **_dims(s, batched))
            for s in signature.outputs.values()
        ],
        instance_group=[config_pb.ModelInstanceGroup(count=batching.instances)],
    )
    if batching.enabled:
        config.dynamic_batching.CopyFrom(
            config_pb.ModelDynamicBatching(
                preferred_batch_size=batching.allowed_batch_sizes,
                max_queue_delay_microseconds=batching.max_queue_delay_us,
                default_queue_policy=config_pb.ModelQueuePolicy(
                    max_queue_size=batching.queue_limit
                ),
            )
        )
    return pb.ModelConfigResponse(config=config)


def _duration(duration: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=duration.count, ns=int(duration.seconds * 1e9))


def model_statistics(name: str, version: int, stats: ExecutionStats) -> pb.ModelStatistics:
    """Triton's statistics of one version: per-request success, failure, queue and compute
    (a batch's compute time counts once for each request in it), and per-batch-size compute."""
    return pb.ModelStatistics(
        name=name,
        version=str(version),
        last_inference=stats.last_inference_ms,
        inference_count=stats.inferences,
        execution_count=stats.executions,
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success),
            fail=_duration(stats.failure),
            queue=_duration(stats.queue),
            # Input assembly and output splitting are not timed apart: they are inside
            # compute_infer. perf_analyzer needs the three counts equal, hence 0 ns here.
            compute_input=pb.StatisticDuration(count=stats.compute_per_request.count),
            compute_infer=_duration(stats.compute_per_request),
            compute_output=pb.StatisticDuration(count=stats.compute_per_request.count),
        ),
        batch_stats=[
            pb.InferBatchStatistics(batch_size=rows, compute_infer=_duration(duration))
            for rows, duration in sorted(stats.by_batch_rows.items())
        ],
    )
