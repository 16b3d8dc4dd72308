"""Built-in builder ``echo``: returns its input unchanged -- the gRPC floor of the benchmarks.

Contract: input ``x`` float32 ``(batch, width)``; output ``y`` float32 ``(batch, width)``, equal to
``x``. One Keras ``Identity`` layer and no weights, so a served ``echo`` costs the front end, the
codec and one trivial TensorFlow call: what plexserve spends per request before any model work.
"""

from __future__ import annotations

import keras

from plexserve.models.registry import register_builder


@register_builder("echo")
def echo(width: int = 16) -> keras.Model:
    """Identity model: x -> y unchanged (measures the serving floor)."""
    x = keras.Input(shape=(width,), dtype="float32", name="x")
    y = keras.layers.Identity(name="y")(x)
    return keras.Model(inputs=x, outputs={"y": y}, name="echo")
