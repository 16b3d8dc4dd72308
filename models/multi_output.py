"""Built-in builder ``multi_output``: one shared trunk, two heads.

Contract: input ``features`` float32 ``(batch, input_dim)``; outputs ``class_probabilities`` float32
``(batch, classes)`` (a softmax) and ``value`` float32 ``(batch, 1)`` (linear).
Randomly initialised, never trained.
"""

from __future__ import annotations

import keras

from plexserve.models.registry import register_builder


@register_builder("multi_output")
def multi_output(input_dim: int = 32, hidden_units: int = 32, classes: int = 5) -> keras.Model:
    """Shared trunk -> two heads: softmax class probabilities and a linear value."""
    features = keras.Input(shape=(input_dim,), dtype="float32", name="features")
    x = keras.layers.Dense(hidden_units, activation="relu", name="trunk_1")(features)
    x = keras.layers.Dense(hidden_units, activation="relu", name="trunk_2")(x)
    class_probabilities = keras.layers.Dense(
        classes, activation="softmax", name="class_probabilities"
    )(x)
    value = keras.layers.Dense(1, name="value")(x)
    return keras.Model(
        inputs=features,
        outputs={"class_probabilities": class_probabilities, "value": value},
        name="multi_output",
    )
