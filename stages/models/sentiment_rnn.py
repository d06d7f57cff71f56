"""Tutorial 08's network: the sentiment of a review with a recurrent network, its export and its states.

``Embedding(V, 100) -> LSTM(64) | GRU(64) -> dropout 0.3 -> Dense(128, relu) -> Dense(2)``
(``build_sentiment_rnn``; sizes and cell are arguments, the stage's params).
Reviews have different lengths: a batch is padded with id 0 to its longest
review, the recurrent layer runs over the padded batch, and the output is taken
at each review's *last real step* (``sequence_length - 1``, a gather), so
padding never changes a review's result (tested). Padding id 0 is not a word
here, unlike in the original.

Options that regularize it for the real reviews, off by default (the tutorial's
network): ``embedding_dropout`` (whole embedding channels dropped per review),
``word_dropout`` (words replaced by ``<unk>`` in training),
``bidirectional`` (forward and backward layers; the padding is masked, so each
direction's final output is its summary of the real tokens), ``readout``
pooling over the real steps (max, or mean and max concatenated) and
``nb_ratio_input``: each word's Naive Bayes log-count ratio (Wang & Manning 2012,
as in the n-gram baseline) and, with ``nb_buckets``, its bigram's, counted on
the training split, as fixed input channels beside its embedding.

``export_saved_model`` writes a SavedModel that loads with plain
``tf.saved_model.load`` (no Keras, no project code) and carries what scoring new
text needs: the vocabulary (an asset, ``vocabulary``), ``max_words`` and the
``serve`` signature ``(token_indexes int64 (b, T), sequence_length int64 (b,))
-> logits, probabilities (b, 2)``; stages/apps/sentiment_predict.py uses it.

``recurrent_states`` steps the trained recurrent cell over one review for
tutorial 08's memory-cell heatmap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

# --- the network ---------------------------------------------------------------------------------

NB_RATIO = "nb_ratio"  # the layer holding each word's fixed Naive Bayes log-count ratio


def _last_step_layer():
    import keras
    import tensorflow as tf

    class LastRealStep(keras.layers.Layer):
        """``outputs[i, sequence_length[i] - 1]``: each review's output at its last real token."""

        def call(self, outputs, sequence_length):
            # Clip so an empty review (length 0, never written by tfrecords_imdb) cannot index -1.
            last = tf.maximum(tf.cast(sequence_length, tf.int32) - 1, 0)
            return tf.gather(outputs, last, axis=1, batch_dims=1)

    return LastRealStep


def build_sentiment_rnn(
    vocab_size: int,
    *,
    embedding_dim: int,
    embedding_dropout: float,
    word_dropout: float,
    cell: Literal["lstm", "gru"],
    units: int,
    bidirectional: bool,
    readout: Literal["last", "max", "mean_max"],
    dropout: float,
    dense_units: int,
    nb_ratio_input: bool = False,
    nb_buckets: int = 0,
):
    """The tutorial's network over ``{"token_indexes": (b, T), "sequence_length": (b,)}`` -> 2 logits.

    With ``embedding_dropout=0``, ``bidirectional=False`` and ``readout="last"`` it is
    the tutorial's: embedding -> one recurrent layer read at each review's last real
    token -> dropout -> Dense(relu) -> 2 logits. ``embedding_dropout`` > 0 drops whole
    embedding channels (SpatialDropout1D), ``bidirectional`` adds a backward layer,
    ``readout`` ``max`` / ``mean_max`` pools over the real steps instead. ``nb_ratio_input``
    appends each word's Naive Bayes log-count ratio to its embedding and, with ``nb_buckets`` > 0, the
    ratio of the bigram it ends (hashed into that many buckets): fixed, :func:`set_nb_ratios`.
    """
    import keras

    tokens = keras.Input((None,), dtype="int64", name="token_indexes")  # (b, T), padded with 0
    lengths = keras.Input((), dtype="int64", name="sequence_length")  # (b,), real tokens incl. <eos>
    masked = bidirectional or readout != "last"  # id 0 is only ever padding (text.PAD_ID)
    words = _word_dropout_layer()(word_dropout, name="word_dropout")(tokens) if word_dropout else tokens
    embedded = keras.layers.Embedding(vocab_size, embedding_dim, mask_zero=masked, name="embedding")(words)
    # embedded: (b, T, embedding_dim)
    if embedding_dropout:
        embedded = keras.layers.SpatialDropout1D(embedding_dropout, name="embedding_dropout")(embedded)
    if nb_ratio_input:  # more channels: NB log-count ratios, 0 until set_nb_ratios, never trained
        ratios = _nb_ratio_layer()(vocab_size, nb_buckets, masked, name=NB_RATIO)(words)  # (b, T, 1 or 2)
        embedded = keras.layers.Concatenate(name="word_features")([embedded, ratios])  # (b, T, embedding_dim + 1|2)
    recurrent = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[cell]
    if readout == "last" and not bidirectional:
        steps = recurrent(units, return_sequences=True, name="rnn")(embedded)  # (b, T, units)
        summary = _last_step_layer()(name="last_real_step")(steps, lengths)  # (b, units)
    elif readout == "last":  # bidirectional: forward's output at the last real token, backward's at the first
        summary = keras.layers.Bidirectional(recurrent(units), name="rnn")(embedded)  # (b, 2 units)
    else:
        rnn = recurrent(units, return_sequences=True, name="rnn")
        if bidirectional:
            rnn = keras.layers.Bidirectional(rnn, name="rnn")
        steps = rnn(embedded)  # (b, T, width): width = units, or 2 units bidirectional
        summary = _pooling_layer()(readout, name="pool_real_steps")(steps, lengths)  # (b, width), mean_max 2 width
    hidden = keras.layers.Dropout(dropout, name="dropout")(summary)
    hidden = keras.layers.Dense(dense_units, activation="relu", name="hidden")(hidden)  # (b, dense_units)
    logits = keras.layers.Dense(2, name="logits")(hidden)  # (b, 2): negative, positive
    name = f"sentiment_{'bi' if bidirectional else ''}{cell}"
    return keras.Model({"token_indexes": tokens, "sequence_length": lengths}, logits, name=name)


def _word_dropout_layer():
    import keras
    import tensorflow as tf

    from stages.datasets.imdb_text import EOS_ID, UNK_ID

    class WordDropout(keras.layers.Layer):
        """In training, each word becomes ``<unk>`` with probability ``rate`` (padding and ``<eos>`` stay),
        so the network cannot lean on a few memorized words; at inference it passes the ids through."""

        def __init__(self, rate: float, **kwargs) -> None:
            super().__init__(**kwargs)
            self.rate = rate
            self.seed_generator = keras.random.SeedGenerator()  # drawn from the seeded global state

        def call(self, tokens, training=None):
            if not training:
                return tokens
            drop = keras.random.uniform(tf.shape(tokens), seed=self.seed_generator) < self.rate
            return tf.where(drop & (tokens > EOS_ID), tf.constant(UNK_ID, tokens.dtype), tokens)

    return WordDropout


def _nb_ratio_layer():
    import keras
    import tensorflow as tf

    from stages.models.sentiment_ngram import pair_hashes

    class NbRatios(keras.layers.Layer):
        """Each token's NB log-count ratio and, with ``buckets``, that of the bigram ending at it
        (the first token's: 0): (b, T, 1 or 2). One fixed table, ``vocab_size + buckets`` ratios,
        indexed as the n-gram baseline's features."""

        def __init__(self, vocab_size: int, buckets: int, masked: bool, **kwargs) -> None:
            super().__init__(**kwargs)
            self.vocab_size, self.buckets, self.masked = vocab_size, buckets, masked
            self.table = self.add_weight(
                shape=(vocab_size + buckets,), initializer="zeros", trainable=False, name="ratios"
            )

        def call(self, tokens):
            tokens = tf.cast(tokens, tf.int64)
            channels = [tf.gather(self.table, tokens)]
            if self.buckets:
                # (b, T - 1): the feature id of the pair (t - 1, t), as the n-gram baseline's
                ends = self.vocab_size + tf.math.floormod(pair_hashes(tokens, self.vocab_size), self.buckets)
                channels.append(tf.gather(self.table, tf.concat([tf.zeros_like(tokens[:, :1]), ends], axis=1)))
            return tf.stack(channels, axis=-1)

        def compute_mask(self, tokens, mask=None):
            return keras.ops.not_equal(tokens, 0) if self.masked else None

    return NbRatios


def _pooling_layer():
    import keras
    import tensorflow as tf

    class PoolRealSteps(keras.layers.Layer):
        """Max (and mean) of ``outputs[i, :sequence_length[i]]`` over the real steps: padding never counts."""

        def __init__(self, mode: str, **kwargs) -> None:
            super().__init__(**kwargs)
            self.mode = mode
            self.supports_masking = True

        def call(self, outputs, sequence_length, mask=None):
            real = tf.sequence_mask(sequence_length, tf.shape(outputs)[1], dtype=outputs.dtype)[:, :, None]
            largest = tf.reduce_max(outputs * real + (real - 1.0) * 1e9, axis=1)
            if self.mode == "max":
                return largest
            mean = tf.reduce_sum(outputs * real, axis=1) / tf.maximum(tf.reduce_sum(real, axis=1), 1.0)
            return tf.concat([mean, largest], axis=-1)

        def compute_mask(self, inputs, mask=None):
            return None

    return PoolRealSteps


def set_nb_ratios(model, ratios: np.ndarray) -> None:
    """Put the Naive Bayes log-count ratios (``ratios``: (vocab_size + nb_buckets,), fitted on the training
    split, as ``sentiment_ngram.nb_ratios`` gives them) into a network built with ``nb_ratio_input``;
    the padding id's stays 0."""
    values = np.asarray(ratios, np.float32).copy()
    values[0] = 0.0
    model.get_layer(NB_RATIO).table.assign(values)


# --- tutorial 08's memory cells ------------------------------------------------------------------


def recurrent_states(model, token_indexes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The recurrent layer's states after each token of one review: ``(hidden, memory)``, each (T, units).

    ``hidden`` is the output ``h_t``; ``memory`` is an LSTM's cell state ``c_t``
    or, for a GRU (no separate cell), ``h_t`` again. Steps the trained layer's
    own cell, so ``hidden`` is exactly what the model reads (tested).
    """
    import tensorflow as tf

    rnn = model.get_layer("rnn")
    rnn = getattr(rnn, "forward_layer", rnn)  # bidirectional: the forward direction reads the review as written
    ids = tf.constant(np.asarray(token_indexes)[None, :], tf.int64)
    embedded = model.get_layer("embedding")(ids)  # (1, T, d)
    if any(layer.name == NB_RATIO for layer in model.layers):
        embedded = tf.concat([embedded, model.get_layer(NB_RATIO)(ids)], axis=-1)  # (1, T, d + 1|2)
    state = [tf.zeros((1, rnn.cell.units)) for _ in range(len(tf.nest.flatten(rnn.cell.state_size)))]
    hidden, memory = [], []
    for t in range(embedded.shape[1]):
        output, state = rnn.cell(embedded[:, t], state, training=False)
        state = tf.nest.flatten(state)  # LSTM: [h, c]; GRU: [h]
        hidden.append(output[0].numpy())
        memory.append(state[-1][0].numpy())
    return np.stack(hidden), np.stack(memory)


# --- export --------------------------------------------------------------------------------------


def export_saved_model(models: list, vocab_file: Path, max_words: int, directory: Path) -> None:
    """A SavedModel for serving: the ``serve`` signature, the vocabulary asset and ``max_words``.

    ``models``: one network, or an ensemble's networks, whose ``logits`` are then the log of their mean
    probabilities (so ``probabilities`` is that mean). Loads with plain ``tf.saved_model.load`` (no
    Keras, no project code); stages/apps/sentiment_predict.py reads the vocabulary and ``max_words``
    from it and encodes text with the functions tfrecords_imdb used.
    """
    import tensorflow as tf

    class SentimentModel(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            if len(models) == 1:
                self.model = models[0]
            else:
                self.members = list(models)
            self.vocabulary = tf.saved_model.Asset(str(vocab_file))
            self.max_words = tf.Variable(max_words, dtype=tf.int64, trainable=False, name="max_words")

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None], tf.int64, name="token_indexes"),
                tf.TensorSpec([None], tf.int64, name="sequence_length"),
            ]
        )
        def serve(self, token_indexes, sequence_length):
            inputs = {"token_indexes": token_indexes, "sequence_length": sequence_length}
            if len(models) == 1:
                logits = self.model(inputs, training=False)
            else:
                each = [tf.nn.softmax(member(inputs, training=False)) for member in self.members]
                logits = tf.math.log(tf.reduce_mean(tf.stack(each), axis=0))
            return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    from stages.common.export import save

    module = SentimentModel()
    save(module, directory, signatures={"serving_default": module.serve})
