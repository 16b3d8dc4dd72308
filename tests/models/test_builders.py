"""Tests for the built-in builders: the names, inputs, outputs and shapes the server relies on.

Each builder is built small (no export here; the service tests export and serve them) and called
on a 2-row batch of the right dtypes.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

from plexserve.models import default_registry

ROWS = 2

Inputs = dict[str, tuple[tuple[int, ...], str]]  # input name -> (shape without batch, dtype)
Outputs = dict[str, tuple[int, ...]]  # output name -> shape without batch

# name -> (small parameters, inputs, outputs)
EXPECTED: dict[str, tuple[dict[str, Any], Inputs, Outputs]] = {
    "echo": ({"width": 4}, {"x": ((4,), "float32")}, {"y": (4,)}),
    "mlp": (
        {"input_dim": 6, "hidden_units": 4, "classes": 3},
        {"features": ((6,), "float32")},
        {"probabilities": (3,)},
    ),
    "multi_input": (
        {"numeric_dim": 4, "categories": 10, "embedding_dim": 3, "hidden_units": 5},
        {"numeric": ((4,), "float32"), "category": ((), "int32")},
        {"score": (1,)},
    ),
    "inception": (
        {"filters": 2, "image_shape": (8, 8, 3), "classes": 4},
        {"image": ((8, 8, 3), "float32")},
        {"probabilities": (4,)},
    ),
    "residual": (
        {"filters": 2, "image_shape": (8, 8, 3), "classes": 4},
        {"image": ((8, 8, 3), "float32")},
        {"probabilities": (4,)},
    ),
    "shared_encoder": (
        {"input_dim": 5, "hidden_units": 4, "embedding_dim": 3},
        {"query": ((5,), "float32"), "document": ((5,), "float32")},
        {"similarity": (1,), "query_embedding": (3,)},
    ),
    "multi_output": (
        {"input_dim": 6, "hidden_units": 4, "classes": 3},
        {"features": ((6,), "float32")},
        {"class_probabilities": (3,), "value": (1,)},
    ),
    "text_classifier": (
        {"sequence_length": 5, "embedding_dim": 4, "classes": 3},
        {"text": ((), "string")},
        {"probabilities": (3,)},
    ),
    "multi_task": (
        {"filters": 2, "image_shape": (8, 8, 1), "numeric_dim": 3, "categories": 7,
         "embedding_dim": 4, "classes": 3},
        {"image": ((8, 8, 1), "float32"), "numeric": ((3,), "float32"), "category": ((), "int32")},
        {"class_probabilities": (3,), "score": (1,), "embedding": (4,)},
    ),
    "vision_tabular": (
        {"filters": 2, "image_shape": (8, 8, 3), "feature_dim": 5, "hidden_units": 4,
         "classes": 3},
        {"image": ((8, 8, 3), "float32"), "features": ((5,), "float32")},
        {"class_probabilities": (3,), "score": (1,)},
    ),
}  # fmt: skip

SOFTMAX_OUTPUTS = {"probabilities", "class_probabilities"}


def sample_inputs(inputs: Inputs) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    batch: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in inputs.items():
        if dtype == "string":
            batch[name] = np.array(
                [b"the movie is great", b"unknownword and nothing"], dtype=object
            )
        elif dtype == "int32":
            batch[name] = rng.integers(0, 3, size=(ROWS, *shape)).astype(np.int32)
        else:
            batch[name] = rng.standard_normal((ROWS, *shape)).astype(np.float32)
    return batch


def call(model: keras.Model, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # A single-input Functional model takes its tensor (a dict draws a structure warning).
    arguments: Any = next(iter(batch.values())) if len(batch) == 1 else batch
    return {name: np.asarray(value) for name, value in model(arguments, training=False).items()}


def test_every_builtin_is_registered() -> None:
    assert set(EXPECTED) <= set(default_registry.names())


def test_every_builtin_has_a_summary_and_defaults() -> None:
    for name in EXPECTED:
        builder = default_registry.get(name)
        assert builder.summary, name
        assert all(not p.required for p in builder.parameters), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builder_contract(name: str) -> None:
    params, inputs, outputs = EXPECTED[name]
    model = default_registry.get(name).build(**params)

    assert isinstance(model, keras.Model)
    assert {tensor.name for tensor in model.inputs} == set(inputs)
    for tensor in model.inputs:
        shape, dtype = inputs[tensor.name]
        assert tuple(tensor.shape[1:]) == shape, tensor.name
        assert tensor.dtype == dtype, tensor.name
    assert isinstance(model.output, dict)
    assert set(model.output) == set(outputs)

    result = call(model, sample_inputs(inputs))
    assert set(result) == set(outputs)
    for output, shape in outputs.items():
        assert result[output].shape == (ROWS, *shape), output
        assert result[output].dtype == np.float32, output
        assert np.all(np.isfinite(result[output])), output
        if output in SOFTMAX_OUTPUTS:
            np.testing.assert_allclose(result[output].sum(axis=1), 1.0, rtol=1e-5)


def test_builders_are_independent_of_each_other() -> None:
    # No global state: two builds of the same builder are separate models with their own weights.
    first = default_registry.get("mlp").build(input_dim=3, hidden_units=2, classes=2)
    second = default_registry.get("mlp").build(input_dim=3, hidden_units=2, classes=2)
    assert first is not second
    assert first.weights[0] is not second.weights[0]


def test_residual_projects_only_when_channels_differ() -> None:
    projected = default_registry.get("residual").build(filters=4, image_shape=(6, 6, 3))
    identity = default_registry.get("residual").build(filters=3, image_shape=(6, 6, 3))
    assert "residual_projection" in [layer.name for layer in projected.layers]
    assert "residual_projection" not in [layer.name for layer in identity.layers]


def test_inception_concatenates_four_branches() -> None:
    model = default_registry.get("inception").build(filters=3, image_shape=(6, 6, 2))
    assert tuple(model.get_layer("inception_concat").output.shape) == (None, 6, 6, 12)


def test_shared_encoder_embeds_both_inputs_with_one_model() -> None:
    # wide enough that no row's ReLU layer is all zeros under any random init (a zero
    # embedding has no cosine)
    model = default_registry.get("shared_encoder").build(
        input_dim=4, hidden_units=32, embedding_dim=4
    )
    encoder = model.get_layer("encoder")
    assert isinstance(encoder, keras.Model)
    assert len(model.weights) == len(encoder.weights)  # the encoder holds every weight
    x = np.random.default_rng(1).standard_normal((ROWS, 4)).astype(np.float32)
    result = call(model, {"query": x, "document": x})
    np.testing.assert_allclose(result["similarity"], 1.0, atol=1e-5)  # identical inputs: cos = 1
    np.testing.assert_allclose(result["query_embedding"], np.asarray(encoder(x)), atol=1e-6)


def test_text_classifier_uses_the_given_vocabulary() -> None:
    model = default_registry.get("text_classifier").build(
        vocabulary=("alpha", "beta"), sequence_length=4
    )
    tokens = model.get_layer("vectorize")(np.array([b"Beta alpha gamma", b""], dtype=object))
    # 0 is padding, 1 the out-of-vocabulary id, then the vocabulary in order.
    np.testing.assert_array_equal(np.asarray(tokens), [[3, 2, 1, 0], [0, 0, 0, 0]])


def test_multi_task_defaults_are_about_50k_parameters() -> None:
    model = default_registry.get("multi_task").build()
    assert 40_000 <= model.count_params() <= 60_000


def test_vision_tabular_defaults_are_about_50k_parameters() -> None:
    model = default_registry.get("vision_tabular").build()
    assert 40_000 <= model.count_params() <= 60_000


def test_echo_returns_its_input_unchanged() -> None:
    model = default_registry.get("echo").build(width=3)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(call(model, {"x": x})["y"], x)
