"""Protocol-neutral pieces of the codecs: claimed shapes, byte buffers and value lists turned into
numpy arrays, with the checks every protocol makes before allocating anything a shape claims.

Each protocol codec (oip.py, tfserving.py) names its own fields and type names in the messages;
the rules are these ones. Stateless and thread-safe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from service.errors import InvalidInput
from service.signature import format_shape


def element_count(name: str, shape: Sequence[int]) -> int:
    """The number of elements of a claimed shape; a negative dimension is refused."""
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': shape {format_shape(shape)} has a negative dimension")
    return math.prod(shape)


def from_bytes(
    name: str, raw: bytes, shape: Sequence[int], dtype: np.dtype, where: str, type_name: str
) -> np.ndarray:
    """Little-endian fixed-width elements in `raw` (`where` names the field), viewed without a
    copy; the byte length must be exactly what the shape needs."""
    expected = element_count(name, shape) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': {where} has {len(raw)} bytes, but shape "
            f"{format_shape(shape)} of {type_name} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def _check_count(name: str, values: Sequence[object], shape: Sequence[int], where: str) -> int:
    count = element_count(name, shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {format_shape(shape)} needs {count} elements, "
            f"{where} has {len(values)}"
        )
    return count


def from_values(
    name: str,
    values: Sequence[object],
    shape: Sequence[int],
    wire: np.dtype,
    target: np.dtype,
    where: str,
    type_name: str,
) -> np.ndarray:
    """A repeated protobuf field (`where`) whose elements are `wire` wide, as a `target` array.

    The count must match the shape exactly (checked before converting anything). numpy would
    wrap 300 into an int8 silently, so a narrowing integer conversion is range-checked first.
    """
    _check_count(name, values, shape, where)
    wide = np.array(values, dtype=wire)
    if target.kind in "iu" and target.itemsize < wire.itemsize and wide.size:
        limits = np.iinfo(target)
        low, high = wide.min(), wide.max()
        if low < limits.min or high > limits.max:
            bad = low if low < limits.min else high
            raise InvalidInput(
                f"input '{name}': value {bad} in {where} does not fit "
                f"{type_name} [{limits.min}, {limits.max}]"
            )
    return wide.astype(target, copy=False).reshape(shape)


def from_strings(
    name: str, values: Sequence[bytes], shape: Sequence[int], where: str
) -> np.ndarray:
    """A repeated bytes field as a numpy `object` array of `bytes`, one element per value."""
    count = _check_count(name, values, shape, where)
    array = np.empty(count, dtype=object)
    array[:] = list(values)
    return array.reshape(shape)
