"""Requests built from a real server's ModelMetadata for every built-in model, and sent to it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from plexserve.bench import BenchError
from plexserve.bench.inputs import InputData, build_pool, request_shape
from plexserve.bench.protocols import InputSpec, V2Protocol
from tests.conftest import BUILTINS, DemoModel
from tests.harness import RunningServer

NUMPY_DTYPES = {"float32": np.float32, "int32": np.int32, "string": object}


def expected_inputs(model: DemoModel, rows: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """name -> (dtype, shape) of a request of `rows` rows: a scalar per row is sent as [rows, 1],
    the shape ModelMetadata publishes for it."""
    expected = {}
    for tensor in model.keras_model.inputs:
        row = tuple(tensor.shape[1:]) or (1,)
        expected[tensor.name] = (np.dtype(NUMPY_DTYPES[tensor.dtype]), (rows, *row))
    return expected


@pytest.mark.parametrize("name", BUILTINS)
def test_requests_from_metadata_have_the_models_names_dtypes_and_shapes(
    server: RunningServer, demo_models: dict[str, DemoModel], name: str
) -> None:
    async def build_and_send() -> tuple[list[InputSpec], dict[str, np.ndarray], list[str]]:
        client = V2Protocol(server.address, name)
        try:
            specs = await client.metadata()
            arrays = InputData(specs, "random", seed=3).arrays(rows=3)
            pool = build_pool(client, specs, rows=3, source="random", size=4)
            statuses = [await client.call(request, timeout=30) for request in pool]
        finally:
            await client.close()
        return specs, arrays, statuses

    specs, arrays, statuses = asyncio.run(build_and_send())
    expected = expected_inputs(demo_models[name], rows=3)
    assert {spec.name for spec in specs} == set(expected) == set(arrays)
    for input_name, (dtype, shape) in expected.items():
        array = arrays[input_name]
        assert (array.dtype, array.shape) == (dtype, shape), input_name
        if dtype.kind == "O":
            assert all(isinstance(v, bytes) and v for v in array.ravel()), input_name
        elif dtype.kind == "i":
            assert array.min() >= 0 and array.max() <= 9, input_name  # safe for any Embedding
    assert statuses == ["OK"] * 4  # the server accepts what was built


def test_free_dimensions_become_one_and_the_batch_becomes_rows() -> None:
    assert request_shape(InputSpec("x", "FP32", (-1, 16)), 5) == (5, 16)
    assert request_shape(InputSpec("x", "FP32", (-1, -1, 3)), 2) == (2, 1, 3)
    assert request_shape(InputSpec("x", "FP32", (4, -1)), 2) == (4, 1)  # no batch dimension


def test_zeros_are_zeros_and_empty_strings() -> None:
    specs = [InputSpec("a", "FP16", (-1, 2)), InputSpec("t", "BYTES", (-1,))]
    data = InputData(specs, "zeros")
    arrays = data.arrays(rows=3)
    assert arrays["a"].dtype == np.float16 and not arrays["a"].any()
    assert arrays["t"].tolist() == [b"", b"", b""]
    assert not data.distinct


def test_a_json_file_gives_one_row_or_rows_in_turn(tmp_path: Path) -> None:
    specs = [
        InputSpec("numeric", "FP32", (-1, 2)),
        InputSpec("category", "INT32", (-1, 1)),
        InputSpec("text", "BYTES", (-1,)),
    ]
    path = tmp_path / "in.json"
    path.write_text(
        json.dumps({"numeric": [0.5, 1.5], "category": [3, 42, 7], "text": ["good", "bad"]})
    )
    data = InputData(specs, str(path))
    first, second = data.arrays(rows=2, index=0), data.arrays(rows=2, index=1)
    np.testing.assert_array_equal(first["numeric"], [[0.5, 1.5], [0.5, 1.5]])  # one row, repeated
    assert first["category"].tolist() == [[3], [42]]  # three rows of one id, taken in turn
    assert second["category"].tolist() == [[7], [3]]
    assert first["text"].tolist() == [b"good", b"bad"]
    assert first["category"].dtype == np.int32 and first["numeric"].dtype == np.float32


def test_a_json_file_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    specs = [InputSpec("numeric", "FP32", (-1, 2))]
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"numerc": [1, 2]}))
    with pytest.raises(BenchError, match=r"missing \['numeric'\], unexpected \['numerc'\]"):
        InputData(specs, str(path))
    path.write_text(json.dumps({"numeric": [1, 2, 3]}))
    with pytest.raises(BenchError, match=r"'numeric' has shape \[3\]"):
        InputData(specs, str(path))
