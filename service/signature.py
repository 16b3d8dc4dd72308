"""Names, dtypes and shapes of a served signature, and the validation of inputs against it.

Both protocol codecs decode into `dict[str, numpy.ndarray]` and hand it to `Signature.validate`,
so every protocol applies the same rules with the same messages. Pure data: no TensorFlow here
(the runner builds a Signature from the loaded function), safe from any thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from plexserve.errors import InvalidInput, name_list

Shape = tuple[int | None, ...]
_Check = tuple[str, np.dtype, int, "Shape | None", tuple[tuple[int, int], ...], bool]
Tensors = dict[str, np.ndarray]
# The one signature plexserve serves of every SavedModel (TF Serving's default key).
SERVING_SIGNATURE = "serving_default"

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
    datatype: str = field(init=False)  # the OIP datatype name

    def __post_init__(self) -> None:
        object.__setattr__(self, "datatype", datatype_of(self.dtype))

    def empty(self, rows: int = 0) -> np.ndarray:
        """An array of `rows` rows of this spec (unknown non-batch dimensions become 0)."""
        dims = (rows, *(0 if d is None else d for d in self.shape[1:]))
        return np.empty(dims, dtype=self.dtype)


@dataclass(frozen=True)
class Signature:
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    # per input: (name, dtype, rank, the row shape when every dimension of it is fixed (else
    # None), the fixed (axis, size) pairs, one scalar per row): what `validate` checks
    _checks: tuple[_Check, ...] = field(init=False, repr=False, compare=False)
    _names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks = []
        for name, spec in self.inputs.items():
            rank, row = len(spec.shape), spec.shape[1:]
            fixed = tuple((axis, d) for axis, d in enumerate(spec.shape) if d is not None)
            row_shape = row if None not in row and rank > 0 and spec.shape[0] is None else None
            checks.append((name, spec.dtype, rank, row_shape, fixed, rank == 1))
        object.__setattr__(self, "_checks", tuple(checks))
        object.__setattr__(self, "_names", frozenset(self.inputs))

    def validate(self, tensors: Tensors) -> int:
        """Check names, dtypes and shapes; return the batch size (rows) shared by all inputs.

        An input that takes one scalar per row ([batch]) is also accepted as [batch, 1], the
        shape Triton-style clients send for it (ModelConfig declares dims [1], reshape []): it
        is reshaped in `tensors`. Raises InvalidInput naming the offending input with the
        expected and received values.
        """
        if tensors.keys() != self._names:
            self._refuse_names(tensors)
        rows = -1
        first = ""
        for name, dtype, rank, row_shape, fixed, scalar_rows in self._checks:
            array = tensors[name]
            shape = array.shape
            if array.dtype != dtype and not (dtype.kind == "O" and array.dtype.kind in "OSU"):
                raise InvalidInput(
                    f"input '{name}': expected datatype {datatype_of(dtype)}, "
                    f"received {datatype_of(array.dtype)}"
                )
            if scalar_rows and len(shape) == 2 and shape[1] == 1:
                array = tensors[name] = array.reshape(shape[0])
                shape = array.shape
            if row_shape is not None:  # the common case: one tuple comparison
                wrong = len(shape) != rank or shape[1:] != row_shape
            else:
                wrong = len(shape) != rank or any(shape[axis] != size for axis, size in fixed)
            if wrong:
                raise InvalidInput(
                    f"input '{name}': expected shape {format_shape(self.inputs[name].shape)}, "
                    f"received {format_shape(shape)}"
                )
            if rows < 0:
                rows, first = shape[0], name
            elif shape[0] != rows:
                raise InvalidInput(
                    f"inputs disagree on the batch dimension: '{first}' has {rows} rows, "
                    f"'{name}' has {shape[0]}"
                )
        return max(rows, 0)

    def _refuse_names(self, tensors: Mapping[str, np.ndarray]) -> None:
        expected, received = set(self.inputs), set(tensors)
        missing, unexpected = sorted(expected - received), sorted(received - expected)
        parts = []
        if missing:
            parts.append(f"missing inputs {name_list(missing)}")
        if unexpected:
            parts.append(f"unexpected inputs {name_list(unexpected)}")
        raise InvalidInput(f"{' and '.join(parts)}; the model takes {name_list(sorted(expected))}")

    def check_outputs(self, requested: Sequence[str]) -> None:
        """Refuse output names the model does not have."""
        unknown = [name for name in requested if name not in self.outputs]
        if unknown:
            raise InvalidInput(
                f"unknown requested outputs {name_list(unknown)}; the model has outputs "
                f"{name_list(sorted(self.outputs))}"
            )


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
