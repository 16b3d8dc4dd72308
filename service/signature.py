"""Names, dtypes and shapes of a served signature, and the validation of inputs against it.

Both protocol codecs decode into `dict[str, numpy.ndarray]` and hand it to `Signature.validate`,
so every protocol applies the same rules with the same messages. Pure data: no TensorFlow here
(the runner builds a Signature from the loaded function), safe from any thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidInput

Shape = tuple[int | None, ...]
Tensors = dict[str, np.ndarray]

# numpy dtype <-> Open Inference Protocol datatype. BYTES is numpy `object` holding `bytes`.
OIP_DATATYPES: dict[str, np.dtype] = {
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
_DATATYPE_OF: dict[np.dtype, str] = {dtype: name for name, dtype in OIP_DATATYPES.items()}


def datatype_of(dtype: np.dtype) -> str:
    """The OIP datatype name of a numpy dtype (`object` and bytes-like are BYTES)."""
    if dtype.kind in "OSU":
        return "BYTES"
    return _DATATYPE_OF[np.dtype(dtype)]


def format_shape(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: Shape  # None = any size; dimension 0 is the batch dimension

    @property
    def datatype(self) -> str:
        return datatype_of(self.dtype)

    def empty(self, rows: int = 0) -> np.ndarray:
        """An array of `rows` rows of this spec (unknown non-batch dimensions become 0)."""
        dims = (rows, *(0 if d is None else d for d in self.shape[1:]))
        return np.empty(dims, dtype=self.dtype)


@dataclass(frozen=True)
class Signature:
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]

    def conform(self, tensors: Tensors) -> Tensors:
        """Accept [batch, 1] for an input that takes one scalar per row ([batch]): the shape
        Triton-style clients send for such inputs (ModelConfig declares dims [1], reshape [])."""
        for name, array in tensors.items():
            spec = self.inputs.get(name)
            if (
                spec is not None
                and len(spec.shape) == 1
                and array.ndim == 2
                and array.shape[1] == 1
            ):
                tensors[name] = array.reshape(array.shape[0])
        return tensors

    def validate(self, tensors: Mapping[str, np.ndarray]) -> int:
        """Check names, dtypes and shapes; return the batch size (rows) shared by all inputs.

        Raises InvalidInput naming the offending input with the expected and received values.
        """
        expected, received = set(self.inputs), set(tensors)
        if expected != received:
            missing, unexpected = sorted(expected - received), sorted(received - expected)
            parts = []
            if missing:
                parts.append(f"missing inputs {missing}")
            if unexpected:
                parts.append(f"unexpected inputs {unexpected}")
            raise InvalidInput(f"{' and '.join(parts)}; the model takes {sorted(expected)}")
        rows: int | None = None
        first = ""
        for name, spec in self.inputs.items():
            array = tensors[name]
            if datatype_of(array.dtype) != spec.datatype:
                raise InvalidInput(
                    f"input '{name}': expected datatype {spec.datatype}, "
                    f"received {datatype_of(array.dtype)}"
                )
            if array.ndim != len(spec.shape) or any(
                want is not None and want != got
                for want, got in zip(spec.shape, array.shape, strict=True)
            ):
                raise InvalidInput(
                    f"input '{name}': expected shape {format_shape(spec.shape)}, "
                    f"received {format_shape(array.shape)}"
                )
            if rows is None:
                rows, first = array.shape[0], name
            elif array.shape[0] != rows:
                raise InvalidInput(
                    f"inputs disagree on the batch dimension: '{first}' has {rows} rows, "
                    f"'{name}' has {array.shape[0]}"
                )
        return rows or 0

    def select_outputs(self, requested: Sequence[str]) -> list[str]:
        """The output names to return: all of them when `requested` is empty."""
        if not requested:
            return list(self.outputs)
        unknown = [name for name in requested if name not in self.outputs]
        if unknown:
            raise InvalidInput(
                f"unknown requested outputs {unknown}; the model has outputs {sorted(self.outputs)}"
            )
        return list(requested)


def format_signature(signature: Signature) -> str:
    """A signature as a table, as `plexserve build` and `plexserve inspect` print it."""
    width = max(len(name) for name in [*signature.inputs, *signature.outputs, "name"])
    lines = []
    for title, specs in (("inputs", signature.inputs), ("outputs", signature.outputs)):
        lines.append(f"  {title}:")
        for spec in specs.values():
            lines.append(
                f"    {spec.name:<{width}}  {spec.datatype:<6}  {format_shape(spec.shape)}"
            )
    return "\n".join(lines)
