"""Request data built from the model's metadata, and the pool of prepared requests of a run.

`request_shape` maps a published shape to one request's: dimension 0 (the batch, -1) becomes
`rows`, any other free dimension (-1) becomes 1. `InputData` makes the arrays of one request:
- random: floats uniform in [0, 1); signed and unsigned ints uniform in 0..9 (ids often feed an
  Embedding: perf_analyzer's random 32-bit ints overflow any embedding table); BOOL at random;
  BYTES as short strings of common words.
- zeros: zeros, False, and empty strings for BYTES.
- FILE.json: {input_name: nested list}, each value either one row (the published shape without
  the batch dimension) or several rows; requests take rows in turn, wrapping around.
`build_pool` prepares `size` requests with the protocol before the load starts. Pure functions
plus one JSON read; no network.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plexserve.bench import BenchError
from plexserve.bench.protocols import BenchProtocol, InputSpec
from plexserve.signature import OIP_DATATYPES

POOL_SIZE = 32
RANDOM_INT_HIGH = 10  # exclusive: random ints are 0..9
WORDS = (b"the", b"a", b"movie", b"was", b"great", b"bad", b"food", b"service", b"not", b"fun")


def request_shape(spec: InputSpec, rows: int) -> tuple[int, ...]:
    if not spec.shape:
        return ()
    first = rows if spec.shape[0] < 0 else spec.shape[0]
    return (first, *(1 if d < 0 else d for d in spec.shape[1:]))


def row_shape(spec: InputSpec) -> tuple[int, ...]:
    return tuple(1 if d < 0 else d for d in spec.shape[1:])


def _dtype(spec: InputSpec) -> np.dtype:
    try:
        return OIP_DATATYPES[spec.datatype]
    except KeyError:
        raise BenchError(
            f"input '{spec.name}' has datatype {spec.datatype}, which the bench cannot generate"
        ) from None


def random_array(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype = _dtype(spec)
    if spec.datatype == "BYTES":
        words = rng.choice(np.array(WORDS, dtype=object), size=(*shape, 3))
        lengths = rng.integers(1, 4, size=shape)
        flat = [
            b" ".join(w[:n]) for w, n in zip(words.reshape(-1, 3), lengths.ravel(), strict=True)
        ]
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    if spec.datatype == "BOOL":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0, RANDOM_INT_HIGH, size=shape).astype(dtype)
    return rng.random(shape).astype(dtype)


def zeros_array(spec: InputSpec, shape: tuple[int, ...]) -> np.ndarray:
    if spec.datatype == "BYTES":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=_dtype(spec))


def _rows_from_json(spec: InputSpec, value: Any, path: Path) -> np.ndarray:
    """The JSON value of one input as an array of rows, shape [n, *row_shape]."""
    try:
        if spec.datatype == "BYTES":
            array = np.array(value, dtype=object)
            array = np.vectorize(
                lambda v: v.encode() if isinstance(v, str) else bytes(v), otypes=[object]
            )(array)
        else:
            array = np.array(value, dtype=_dtype(spec))
    except (TypeError, ValueError) as error:
        raise BenchError(
            f"{path}: input '{spec.name}' is not a {spec.datatype} array: {error}"
        ) from None
    want = row_shape(spec)
    candidates = [array]
    if want and want[-1] == 1:  # [3, 42] for a [-1, 1] input: rows of one scalar each
        candidates.append(array[..., np.newaxis])
    for candidate in candidates:
        if _matches(candidate.shape, spec.shape[1:]):
            return candidate[np.newaxis]
        if candidate.ndim == len(want) + 1 and _matches(candidate.shape[1:], spec.shape[1:]):
            if candidate.shape[0] == 0:
                break
            return candidate
    raise BenchError(
        f"{path}: input '{spec.name}' has shape {list(array.shape)}; expected one row "
        f"{list(spec.shape[1:])} or several rows [n, {', '.join(map(str, spec.shape[1:]))}] "
        "(-1 = any size)"
    )


def _matches(shape: Sequence[int], published: Sequence[int]) -> bool:
    return len(shape) == len(published) and all(
        want < 0 or want == got for want, got in zip(published, shape, strict=True)
    )


def load_json_rows(path: Path, specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BenchError(f"--input-data {path}: {error}") from None
    if not isinstance(document, dict):
        raise BenchError(f"{path}: expected a JSON object {{input_name: nested list}}")
    names = {spec.name for spec in specs}
    if set(document) != names:
        missing, unexpected = sorted(names - set(document)), sorted(set(document) - names)
        raise BenchError(
            f"{path}: the model takes inputs {sorted(names)}; missing {missing}, "
            f"unexpected {unexpected}"
        )
    return {spec.name: _rows_from_json(spec, document[spec.name], path) for spec in specs}


class InputData:
    """Makes the arrays of request number `index` (`arrays`); see the module docstring."""

    def __init__(self, specs: Sequence[InputSpec], source: str, seed: int = 0) -> None:
        self.specs = list(specs)
        self.source = source
        for spec in self.specs:
            _dtype(spec)  # refuse datatypes we cannot generate before anything runs
        self._rng = np.random.default_rng(seed)
        self._file_rows = (
            load_json_rows(Path(source), self.specs) if source not in ("random", "zeros") else None
        )

    @property
    def distinct(self) -> bool:
        """Whether requests differ from each other (zeros are all the same request)."""
        return self.source != "zeros"

    def arrays(self, rows: int, index: int = 0) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for spec in self.specs:
            shape = request_shape(spec, rows)
            if self.source == "random":
                out[spec.name] = random_array(spec, shape, self._rng)
            elif self.source == "zeros":
                out[spec.name] = zeros_array(spec, shape)
            else:
                assert self._file_rows is not None
                available = self._file_rows[spec.name]
                take = np.arange(index * rows, (index + 1) * rows) % len(available)
                out[spec.name] = available[take]
        return out


def build_pool(
    protocol: BenchProtocol,
    specs: Sequence[InputSpec],
    rows: int,
    source: str,
    seed: int = 0,
    size: int = POOL_SIZE,
) -> list[Any]:
    """`size` prepared requests (one when they would all be equal), sent in turn by the load."""
    data = InputData(specs, source, seed)
    count = size if data.distinct else 1
    return [protocol.build_request(data.arrays(rows, index)) for index in range(count)]
