"""Built-in builder ``multi_input``: two inputs of different dtypes (where Sequential fails).

Contract: inputs ``numeric`` float32 ``(batch, numeric_dim)`` and ``category`` int32 ``(batch,)``
(one id per row, ``0 <= id < categories``); output ``score`` float32 ``(batch, 1)``, linear.
Randomly initialised, never trained.
"""

from __future__ import annotations

import keras

from plexserve.models.registry import register_builder


@register_builder("multi_input")
def multi_input(
    numeric_dim: int = 8, categories: int = 100, embedding_dim: int = 8, hidden_units: int = 32
) -> keras.Model:
    """Two inputs (numeric features + category id embedding) -> Dense -> score."""
    numeric = keras.Input(shape=(numeric_dim,), dtype="float32", name="numeric")
    category = keras.Input(shape=(), dtype="int32", name="category")
    embedded = keras.layers.Embedding(categories, embedding_dim, name="category_embedding")(
        category
    )
    x = keras.layers.Concatenate(name="concatenate")([numeric, embedded])
    x = keras.layers.Dense(hidden_units, activation="relu", name="hidden")(x)
    score = keras.layers.Dense(1, name="score")(x)
    return keras.Model(
        inputs=[numeric, category],
        outputs={"score": score},
        name="multi_input",
    )
