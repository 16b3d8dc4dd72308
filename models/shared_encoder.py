"""Built-in builder ``shared_encoder``: a Functional model used as a layer, shared by two inputs.

Contract: inputs ``query`` and ``document``, both float32 ``(batch, input_dim)``; outputs
``similarity`` float32 ``(batch, 1)`` (cosine similarity of the two embeddings, in [-1, 1]) and
``query_embedding`` float32 ``(batch, embedding_dim)``. One inner model named ``encoder`` holds the
only weights, so both inputs are embedded identically. Randomly initialised, never trained.
"""

from __future__ import annotations

import keras

from plexserve.models.registry import register_builder


@register_builder("shared_encoder")
def shared_encoder(
    input_dim: int = 16, hidden_units: int = 32, embedding_dim: int = 8
) -> keras.Model:
    """Shared encoder model applied to query and document -> cosine similarity + query embedding."""
    encoder_input = keras.Input(shape=(input_dim,), dtype="float32", name="encoder_input")
    hidden = keras.layers.Dense(hidden_units, activation="relu", name="encoder_hidden")(
        encoder_input
    )
    embedding = keras.layers.Dense(embedding_dim, name="encoder_embedding")(hidden)
    encoder = keras.Model(inputs=encoder_input, outputs=embedding, name="encoder")

    query = keras.Input(shape=(input_dim,), dtype="float32", name="query")
    document = keras.Input(shape=(input_dim,), dtype="float32", name="document")
    query_embedding = encoder(query)
    document_embedding = encoder(document)
    similarity = keras.layers.Dot(axes=1, normalize=True, name="similarity")(
        [query_embedding, document_embedding]
    )
    return keras.Model(
        inputs=[query, document],
        outputs={"similarity": similarity, "query_embedding": query_embedding},
        name="shared_encoder",
    )
