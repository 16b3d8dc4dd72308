"""Built-in builder ``residual``: one residual block (two 3x3 convs plus a shortcut, added).

Contract: input ``image`` float32 ``(batch, height, width, channels)`` with
``image_shape = (height, width, channels)``; output ``probabilities`` float32 ``(batch, classes)``,
a softmax. The shortcut is a 1x1 projection conv when ``channels != filters`` and the identity
otherwise. Randomly initialised, never trained.
"""

from __future__ import annotations

import keras

from plexserve.models.registry import register_builder


def residual_block(x: keras.KerasTensor, filters: int, prefix: str) -> keras.KerasTensor:
    """3x3 conv -> 3x3 conv, plus the shortcut (1x1-projected if channels differ), Add, ReLU."""
    main = keras.layers.Conv2D(
        filters, 3, padding="same", activation="relu", name=f"{prefix}_conv_1"
    )(x)
    main = keras.layers.Conv2D(filters, 3, padding="same", name=f"{prefix}_conv_2")(main)
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, name=f"{prefix}_projection")(x)
    added = keras.layers.Add(name=f"{prefix}_add")([main, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_relu")(added)


@register_builder("residual")
def residual(
    filters: int = 32, image_shape: tuple[int, int, int] = (32, 32, 3), classes: int = 10
) -> keras.Model:
    """Residual block: two 3x3 convs + (projected) shortcut, Add, ReLU -> softmax probabilities."""
    image = keras.Input(shape=image_shape, dtype="float32", name="image")
    x = residual_block(image, filters, "residual")
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    probabilities = keras.layers.Dense(classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs=image, outputs={"probabilities": probabilities}, name="residual")
