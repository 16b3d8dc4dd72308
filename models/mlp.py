"""Built-in builder ``mlp``: the plain multi-layer model of the Functional-API guide.

Contract (the server tests rely on it): input ``features`` float32 ``(batch, input_dim)``;
output ``probabilities`` float32 ``(batch, classes)``, a softmax.
Randomly initialised, never trained.
"""

from __future__ import annotations

import keras

from plexserve.models.registry import register_builder


@register_builder("mlp")
def mlp(input_dim: int = 32, hidden_units: int = 16, classes: int = 10) -> keras.Model:
    """Plain MLP: features -> Dense -> Dense -> softmax probabilities."""
    features = keras.Input(shape=(input_dim,), dtype="float32", name="features")
    x = keras.layers.Dense(hidden_units, activation="relu", name="dense_1")(features)
    x = keras.layers.Dense(hidden_units, activation="relu", name="dense_2")(x)
    probabilities = keras.layers.Dense(classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs=features, outputs={"probabilities": probabilities}, name="mlp")
