"""Session fixtures: small variants of every built-in builder exported into one temporary
repository, the Keras models they came from (for expected outputs), and one in-process server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from plexserve.export import export_model
from plexserve.models import default_registry
from tests.harness import RunningServer

# Small parameter values: each model builds, exports and serves in about a second.
SMALL: dict[str, dict[str, Any]] = {
    "echo": {},
    "mlp": {"input_dim": 8, "hidden_units": 4, "classes": 3},
    "multi_input": {"numeric_dim": 4, "categories": 10, "embedding_dim": 4, "hidden_units": 8},
    "inception": {"filters": 4, "image_shape": (8, 8, 3), "classes": 3},
    "residual": {"filters": 4, "image_shape": (8, 8, 3), "classes": 3},
    "shared_encoder": {"input_dim": 6, "hidden_units": 8, "embedding_dim": 4},
    "multi_output": {"input_dim": 8, "hidden_units": 8, "classes": 3},
    "text_classifier": {"sequence_length": 8, "embedding_dim": 4},
    "multi_task": {},
}
BUILTINS = sorted(SMALL)
WORDS = np.array([b"the", b"movie", b"was", b"great", b"bad", b"unknownword", b""], dtype=object)


@dataclass
class DemoModel:
    name: str
    keras_model: Any

    def sample(self, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Valid random inputs for every named input (ids small enough for any embedding)."""
        rng = np.random.default_rng(seed)
        inputs = {}
        for tensor in self.keras_model.inputs:
            shape = (rows, *tensor.shape[1:])
            dtype = np.dtype(tf.as_dtype(tensor.dtype).as_numpy_dtype)
            if tensor.dtype == "string":
                words = rng.choice(WORDS, size=(*shape, 3))
                inputs[tensor.name] = np.array(
                    [b" ".join(w) for w in words.reshape(-1, 3)], dtype=object
                ).reshape(shape)
            elif dtype.kind in "iu":
                inputs[tensor.name] = rng.integers(0, 5, size=shape).astype(dtype)
            else:
                inputs[tensor.name] = rng.standard_normal(shape).astype(dtype)
        return inputs

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        structure = self.keras_model.input  # a builder may declare its inputs as a dict or not
        if not isinstance(structure, dict):
            names = [t.name for t in (structure if isinstance(structure, list) else [structure])]
            tensors = [tensors[n] for n in names] if len(names) > 1 else tensors[names[0]]
        outputs = self.keras_model(tensors, training=False)
        return {name: np.asarray(tensor) for name, tensor in outputs.items()}


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, DemoModel]]:
    root = tmp_path_factory.mktemp("model_repository")
    models = {}
    for name in BUILTINS:
        model = default_registry.get(name).build(**SMALL[name])
        export_model(model, root, name)
        models[name] = DemoModel(name, model)
    return root, models


@pytest.fixture(scope="session")
def demo_models(demo_repository: tuple[Path, dict[str, DemoModel]]) -> dict[str, DemoModel]:
    return demo_repository[1]


@pytest.fixture(scope="session")
def server(demo_repository: tuple[Path, dict[str, DemoModel]]) -> Iterator[RunningServer]:
    running = RunningServer(demo_repository[0])
    yield running
    running.close()
