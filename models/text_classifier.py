"""Built-in builder ``text_classifier``: a text model with a string (BYTES) input.

Contract: input ``text`` string ``(batch,)`` (one UTF-8 string per row); output ``probabilities``
float32 ``(batch, classes)``, a softmax. Tokenisation is a ``TextVectorization`` layer with a FIXED
vocabulary given as a parameter (lower-cased, punctuation stripped, split on whitespace; unknown
words map to the OOV id), so building never calls ``adapt()`` and needs no data.
Randomly initialised, never trained.
"""

from __future__ import annotations

import keras

from plexserve.models.registry import register_builder

DEFAULT_VOCABULARY: tuple[str, ...] = (
    "the", "a", "and", "is", "it", "this", "not", "very", "good", "great",
    "bad", "awful", "love", "hate", "movie", "film", "food", "service", "fun", "boring",
)  # fmt: skip


@register_builder("text_classifier")
def text_classifier(
    vocabulary: tuple[str, ...] = DEFAULT_VOCABULARY,
    sequence_length: int = 16,
    embedding_dim: int = 16,
    classes: int = 2,
) -> keras.Model:
    """Text classifier: string -> fixed-vocabulary tokens -> embedding average -> softmax."""
    text = keras.Input(shape=(), dtype="string", name="text")
    vectorize = keras.layers.TextVectorization(
        vocabulary=list(vocabulary),
        output_mode="int",
        output_sequence_length=sequence_length,
        name="vectorize",
    )
    tokens = vectorize(text)
    # vocabulary_size() counts the padding ("") and OOV ("[UNK]") ids the layer adds. No masking:
    # with mask_zero the average of an empty string would be 0/0 = NaN.
    embedded = keras.layers.Embedding(vectorize.vocabulary_size(), embedding_dim, name="embedding")(
        tokens
    )
    pooled = keras.layers.GlobalAveragePooling1D(name="average")(embedded)
    probabilities = keras.layers.Dense(classes, activation="softmax", name="probabilities")(pooled)
    return keras.Model(
        inputs=text, outputs={"probabilities": probabilities}, name="text_classifier"
    )
