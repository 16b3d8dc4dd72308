"""Built-in builder ``multi_task``: the showcase -- three inputs of different dtypes, three outputs.

Contract: inputs ``image`` float32 ``(batch, height, width, channels)`` (``image_shape``),
``numeric`` float32 ``(batch, numeric_dim)`` and ``category`` int32 ``(batch,)`` (one id per row,
``0 <= id < categories``); outputs ``class_probabilities`` float32 ``(batch, classes)`` (a softmax),
``score`` float32 ``(batch, 1)`` (linear) and ``embedding`` float32 ``(batch, embedding_dim)``.

The image goes through a stem conv, an inception block (four parallel branches concatenated) and a
residual block (two 3x3 convs + 1x1 projection shortcut, Add); it is pooled and merged with the
numeric and category branches into a shared trunk, which itself has a residual (Add) connection.
At the defaults the model has 51,995 parameters and one exported ``serving_default`` call costs
about a millisecond at batch 1 (the figures the serving benchmarks are sized for). ``filters``
scales the whole model, so ``filters=2`` gives a tiny variant for tests.
Randomly initialised, never trained.
"""

from __future__ import annotations

import keras

from plexserve.models.inception import inception_block
from plexserve.models.registry import register_builder
from plexserve.models.residual import residual_block


@register_builder("multi_task")
def multi_task(
    filters: int = 16,
    image_shape: tuple[int, int, int] = (16, 16, 3),
    numeric_dim: int = 16,
    categories: int = 100,
    category_dim: int = 8,
    embedding_dim: int = 16,
    classes: int = 10,
) -> keras.Model:
    """Showcase: image + numeric + category inputs, inception and residual blocks, three heads."""
    image = keras.Input(shape=image_shape, dtype="float32", name="image")
    numeric = keras.Input(shape=(numeric_dim,), dtype="float32", name="numeric")
    category = keras.Input(shape=(), dtype="int32", name="category")

    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="stem")(image)
    x = inception_block(x, filters, "inception")  # 4 * filters channels
    x = residual_block(x, 2 * filters, "residual")  # projection: 4 * filters -> 2 * filters
    image_features = keras.layers.GlobalAveragePooling2D(name="image_pool")(x)

    numeric_features = keras.layers.Dense(2 * filters, activation="relu", name="numeric_dense")(
        numeric
    )
    category_features = keras.layers.Embedding(categories, category_dim, name="category_embedding")(
        category
    )

    merged = keras.layers.Concatenate(name="merge")(
        [image_features, numeric_features, category_features]
    )
    trunk = keras.layers.Dense(4 * filters, activation="relu", name="trunk_1")(merged)
    trunk_2 = keras.layers.Dense(4 * filters, activation="relu", name="trunk_2")(trunk)
    trunk = keras.layers.Add(name="trunk_add")([trunk, trunk_2])

    class_probabilities = keras.layers.Dense(
        classes, activation="softmax", name="class_probabilities"
    )(trunk)
    score = keras.layers.Dense(1, name="score")(trunk)
    embedding = keras.layers.Dense(embedding_dim, name="embedding")(trunk)
    return keras.Model(
        inputs=[image, numeric, category],
        outputs={
            "class_probabilities": class_probabilities,
            "score": score,
            "embedding": embedding,
        },
        name="multi_task",
    )
