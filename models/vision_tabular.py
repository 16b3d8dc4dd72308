"""Built-in builder ``vision_tabular``: an image and a feature vector in, a class and a score out.

Contract: inputs ``image`` float32 ``(batch, height, width, channels)`` (``image_shape``) and
``features`` float32 ``(batch, feature_dim)``; outputs ``class_probabilities`` float32
``(batch, classes)`` (a softmax) and ``score`` float32 ``(batch, 1)`` (linear).

The image goes through a strided stem conv and a pooling step, an inception block (four
parallel branches concatenated) and a residual block (1x1 projection shortcut, Add), then is
pooled; the features go through a dense branch; the two are concatenated into the heads. At
the defaults the model has 49,099 parameters and takes 32x32x3 images; one row costs about
0.2 ms of CPU: the model the serving-cost benchmark (bench/overhead.py) measures.
Randomly initialised, never trained.
"""

from __future__ import annotations

import keras

from plexserve.models.inception import inception_block
from plexserve.models.registry import register_builder
from plexserve.models.residual import residual_block


@register_builder("vision_tabular")
def vision_tabular(
    filters: int = 16,
    image_shape: tuple[int, int, int] = (32, 32, 3),
    feature_dim: int = 32,
    hidden_units: int = 64,
    classes: int = 10,
) -> keras.Model:
    """Image (inception + residual blocks) and feature vector (dense) -> class and score heads."""
    image = keras.Input(shape=image_shape, dtype="float32", name="image")
    features = keras.Input(shape=(feature_dim,), dtype="float32", name="features")

    # A strided stem and a pooling step: the blocks run at 1/4 of the image's side, which keeps
    # one row at about 0.2 ms of CPU, the cost the benchmarks are sized for.
    x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name="stem")(
        image
    )
    x = keras.layers.MaxPooling2D(2, name="stem_pool")(x)
    x = inception_block(x, filters, "inception")  # 4 * filters channels
    x = residual_block(x, 2 * filters, "residual")  # projection: 4 * filters -> 2 * filters
    image_features = keras.layers.GlobalAveragePooling2D(name="image_pool")(x)
    dense = keras.layers.Dense(hidden_units, activation="relu", name="features_dense")(features)

    merged = keras.layers.Concatenate(name="merge")([image_features, dense])
    trunk = keras.layers.Dense(hidden_units, activation="relu", name="trunk")(merged)
    class_probabilities = keras.layers.Dense(
        classes, activation="softmax", name="class_probabilities"
    )(trunk)
    score = keras.layers.Dense(1, name="score")(trunk)
    return keras.Model(
        inputs=[image, features],
        outputs={"class_probabilities": class_probabilities, "score": score},
        name="vision_tabular",
    )
