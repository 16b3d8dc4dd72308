"""Built-in builder ``inception``: one inception module (four parallel branches, channel concat).

Contract: input ``image`` float32 ``(batch, height, width, channels)`` with
``image_shape = (height, width, channels)``; output ``probabilities`` float32 ``(batch, classes)``,
a softmax. Every branch uses "same" padding and stride 1 so the spatial shapes stay equal and the
branches can be concatenated on the channel axis. Randomly initialised, never trained.
"""

from __future__ import annotations

import keras

from plexserve.models.registry import register_builder


def inception_block(x: keras.KerasTensor, filters: int, prefix: str) -> keras.KerasTensor:
    """1x1 | 1x1->3x3 | 1x1->5x5 | 3x3 max-pool->1x1, concatenated: ``4 * filters`` channels."""

    def conv(t: keras.KerasTensor, size: int, name: str) -> keras.KerasTensor:
        layer = keras.layers.Conv2D(
            filters, size, padding="same", activation="relu", name=f"{prefix}_{name}"
        )
        return layer(t)

    branch_1 = conv(x, 1, "1x1")
    branch_3 = conv(conv(x, 1, "3x3_reduce"), 3, "3x3")
    branch_5 = conv(conv(x, 1, "5x5_reduce"), 5, "5x5")
    pooled = keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{prefix}_pool")(x)
    branch_pool = conv(pooled, 1, "pool_proj")
    return keras.layers.Concatenate(axis=-1, name=f"{prefix}_concat")(
        [branch_1, branch_3, branch_5, branch_pool]
    )


@register_builder("inception")
def inception(
    filters: int = 16, image_shape: tuple[int, int, int] = (32, 32, 3), classes: int = 10
) -> keras.Model:
    """Inception module: four parallel conv/pool branches concatenated -> softmax probabilities."""
    image = keras.Input(shape=image_shape, dtype="float32", name="image")
    x = inception_block(image, filters, "inception")
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    probabilities = keras.layers.Dense(classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs=image, outputs={"probabilities": probabilities}, name="inception")
