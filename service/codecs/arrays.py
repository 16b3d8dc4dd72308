"""Protocol-neutral pieces of the codecs: claimed shapes, byte buffers and value lists turned into
numpy arrays, with the checks every protocol makes before allocating anything a shape claims.

Each protocol codec (oip.py, tfserving.py) names its own fields and type names in the messages;
the rules are these ones. Stateless and thread-safe.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

import numpy as np

from plexserve.errors import InvalidInput
from plexserve.signature import format_shape

# More dimensions than any served tensor has (numpy itself stops at 64).
MAX_RANK = 32
# Elements numpy can lay out even in an empty array: with a 0 among the dimensions, the others
# must still multiply, times the element size (at most 8 bytes), to what fits in an intp.
MAX_ELEMENTS = 2**60


def element_count(name: str, shape: Sequence[int]) -> int:
    """The number of elements of a claimed shape. Refused before anything is allocated: a
    negative dimension, more than MAX_RANK dimensions, and a shape numpy could not lay out
    ([0, 2**62] is empty, yet numpy refuses it as "too big")."""
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        _refuse_shape(name, shape)
    count = math.prod(shape)
    if count == 0 and shape and math.prod(d for d in shape if d) > MAX_ELEMENTS:
        _refuse_shape(name, shape)
    return count


def _refuse_shape(name: str, shape: Sequence[int]) -> None:
    if len(shape) > MAX_RANK:
        raise InvalidInput(
            f"input '{name}': shape has {len(shape)} dimensions; at most {MAX_RANK} are taken"
        )
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': shape {format_shape(shape)} has a negative dimension")
    raise InvalidInput(
        f"input '{name}': shape {format_shape(shape)} is too large: its dimensions other than "
        f"0 multiply to more than {MAX_ELEMENTS} elements"
    )


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


_LENGTH = struct.Struct("<I")


def from_length_prefixed(
    name: str, raw: bytes | memoryview, shape: Sequence[int], where: str
) -> np.ndarray:
    """BYTES elements each preceded by its 4-byte little-endian length (the OIP raw form), as a
    numpy `object` array of `bytes`. Every element costs at least its prefix, so a claimed
    element count larger than the content allows is refused before allocating."""
    count = element_count(name, shape)
    end = len(raw)
    if count * _LENGTH.size > end:
        raise InvalidInput(
            f"input '{name}': {end} bytes of {where} cannot hold {count} BYTES elements "
            "(each needs a 4-byte length prefix)"
        )
    elements = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + _LENGTH.size > end:
            raise InvalidInput(
                f"input '{name}': {where} ends before the length prefix of element {i} of {count}"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > end:
            raise InvalidInput(
                f"input '{name}': BYTES element {i} in {where} claims {length} bytes but only "
                f"{end - offset} remain"
            )
        elements[i] = bytes(raw[offset : offset + length])
        offset += length
    if offset != end:
        raise InvalidInput(
            f"input '{name}': {end - offset} bytes of {where} left over after the {count} BYTES "
            f"elements of shape {format_shape(shape)}"
        )
    return elements.reshape(shape)


def to_length_prefixed(array: np.ndarray) -> bytes:
    """The elements of a BYTES array (bytes or str), each preceded by its 4-byte length."""
    parts = []
    for element in array.flat:
        data = element.encode() if isinstance(element, str) else bytes(element)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def to_little_endian_bytes(array: np.ndarray) -> bytes:
    """A fixed-width array's elements as little-endian bytes, row-major."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


# What numpy makes of a JSON list, in words, for the messages.
_JSON_KINDS = {
    "b": "booleans",
    "i": "integers",
    "u": "integers",
    "f": "non-integer numbers",
    "U": "strings",
    "O": "nulls, objects or numbers out of range",
}
_JSON_ACCEPTS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_NEEDS = {"b": "true or false", "i": "integers", "u": "integers", "f": "numbers"}
MAX_JSON_DEPTH = 32


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def from_json_numbers(
    name: str, values: object, target: np.dtype, where: str, type_name: str
) -> np.ndarray:
    """A JSON number or boolean, or nested lists of them (`where` names the field), as a
    `target` array shaped as the nesting. Refused rather than converted: strings and nulls for
    numbers, non-integers for integers, numbers for booleans, integers outside the target's
    range, finite numbers beyond a float type's range, and ragged nesting."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"input '{name}': {where} is a ragged nested list: the lists at each depth must "
            "all have the same length"
        ) from None
    if array.size == 0:
        return np.empty(array.shape, dtype=target)
    kind = array.dtype.kind
    if kind not in _JSON_ACCEPTS[target.kind]:
        raise InvalidInput(
            f"input '{name}': {where} holds {_JSON_KINDS.get(kind, 'other values')}; "
            f"{type_name} takes {_NEEDS[target.kind]}"
        )
    if target.kind in "iu":
        limits = np.iinfo(target)
        low, high = array.min(), array.max()
        if low < limits.min or high > limits.max:
            bad = low if low < limits.min else high
            raise InvalidInput(
                f"input '{name}': value {bad} in {where} does not fit "
                f"{type_name} [{limits.min}, {limits.max}]"
            )
    elif target.itemsize < array.dtype.itemsize:
        finite = np.abs(array[np.isfinite(array)]) if kind == "f" else np.abs(array)
        if finite.size and finite.max() > np.finfo(target).max:
            raise InvalidInput(
                f"input '{name}': value {finite.max()} in {where} does not fit {type_name}"
            )
    return array.astype(target, copy=False)


def from_json_strings(
    name: str,
    values: object,
    where: str,
    element: Callable[[object], bytes | None],
    expected: str,
) -> np.ndarray:
    """A JSON string, or nested lists of them, as a numpy `object` array of `bytes` shaped as the
    nesting. `element` turns one leaf into bytes, or None when the leaf is not an element
    (`expected` says what is, for the message)."""
    shape: list[int] = []
    probe = values
    while isinstance(probe, list):
        shape.append(len(probe))
        if len(shape) > MAX_JSON_DEPTH:
            raise InvalidInput(f"input '{name}': {where} nests lists deeper than {MAX_JSON_DEPTH}")
        if not probe:
            break
        probe = probe[0]
    flat: list[bytes] = []

    def walk(value: object, depth: int) -> None:
        if depth == len(shape):
            data = element(value)
            if data is None:
                raise InvalidInput(
                    f"input '{name}': {where} holds {_preview(value)}; expected {expected}"
                )
            flat.append(data)
            return
        if not isinstance(value, list) or len(value) != shape[depth]:
            raise InvalidInput(
                f"input '{name}': {where} is a ragged nested list: the lists at each depth must "
                "all have the same length"
            )
        for item in value:
            walk(item, depth + 1)

    walk(values, 0)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)
