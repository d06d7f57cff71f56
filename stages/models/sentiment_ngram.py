"""The n-gram baseline for IMDB sentiment: NB-weighted logistic regression over unigrams and bigrams.

Wang & Manning's (2012) NBSVM idea as a logistic regression (their "NB features"):
each review is the *set* of its n-grams (binarized: a word said twice counts
once), every n-gram ``f`` is scaled by its Naive Bayes log-count ratio ``r_f``,
fitted once on the training split, and a linear model learns a weight ``w_f``
per n-gram with gradient descent::

    logit(positive) = b + sum over the distinct n-grams f of the review of r_f * w_f

Features: the unigrams are the vocabulary's ids (``[0, V)``), the bigrams are
hashed into ``buckets`` ids after them (``[V, V + buckets)``), as fastText does;
id 0 (padding) is never a feature. Only the review's first ``sequence_length``
tokens count, so padding never changes a result (tested).

``build_sentiment_ngram`` gives a Keras model over the same inputs as the RNN
(``{"token_indexes": (b, T), "sequence_length": (b,)}`` -> 2 logits,
negative then positive: the positive one is the score above, the negative one 0),
so the shared Trainer, the metrics and the predict command treat both alike.
``nb_ratios`` computes ``r`` from training batches; ``set_nb_ratios`` puts it in
the model (a non-trainable weight, saved with the others).
``export_saved_model`` (stages/models/sentiment_rnn.py) exports it as the RNN.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

# An odd 32-bit multiplier (Knuth's multiplicative hashing): spreads neighbouring pair keys apart.
_MULTIPLIER = 2654435761
_PRIME = 2**31 - 1  # pair keys are reduced below it first, so the product fits in int64


def pair_hashes(tokens: Any, vocab_size: int) -> Any:
    """A hash of each pair of neighbouring tokens (int64 ``tokens`` (b, T) -> (b, T - 1)); the pair's
    feature id is ``vocab_size + hash % buckets``."""
    import tensorflow as tf

    pairs = tf.math.floormod(tokens[:, :-1] * vocab_size + tokens[:, 1:], _PRIME)  # (b, T - 1)
    mixed = pairs * _MULTIPLIER
    return tf.bitwise.bitwise_xor(mixed, tf.bitwise.right_shift(mixed, tf.constant(29, tf.int64)))


def ngram_features(token_indexes: Any, sequence_length: Any, vocab_size: int, buckets: int) -> tuple[Any, Any]:
    """The n-gram ids of each review, sorted, and which of them count: ``(ids, present)``, each (b, 2T - 1).

    ``present`` marks each distinct id of the review's real unigrams and bigrams once;
    padding (past ``sequence_length``) and repeats are not present. ``buckets=0``: unigrams
    only, each (b, T).
    """
    import tensorflow as tf

    tokens = tf.cast(token_indexes, tf.int64)  # (b, T)
    length = tf.cast(sequence_length, tf.int64)[:, None]  # (b, 1)
    positions = tf.range(tf.shape(tokens, out_type=tf.int64)[1])[None, :]  # (1, T)
    unigrams = tf.where(positions < length, tokens, 0)  # (b, T)
    if buckets == 0:  # unigrams only
        ids = tf.sort(unigrams, axis=1)  # (b, T)
    else:
        mixed = pair_hashes(tokens, vocab_size)  # first: the SavedModel's graph keeps its op order, so its bytes
        bigrams = tf.where(positions[:, 1:] < length, vocab_size + tf.math.floormod(mixed, buckets), 0)  # (b, T - 1)
        ids = tf.sort(tf.concat([unigrams, bigrams], axis=1), axis=1)  # (b, 2T - 1): padding's zeros first
    first = tf.concat([tf.ones_like(ids[:, :1], tf.bool), ids[:, 1:] != ids[:, :-1]], axis=1)
    return ids, first & (ids != 0)


def _bag_layer():
    import keras
    import tensorflow as tf

    class NgramBag(keras.layers.Layer):
        """``b + sum_f r_f * w_f`` over the distinct real n-grams ``f`` of each review: (b,)."""

        def __init__(self, vocab_size: int, buckets: int, l2: float, **kwargs) -> None:
            super().__init__(**kwargs)
            self.vocab_size, self.buckets = vocab_size, buckets
            features = vocab_size + buckets
            regularizer = keras.regularizers.L2(l2) if l2 else None  # l2 * sum(w ** 2), in model.losses
            self.weight = self.add_weight(
                shape=(features,), initializer="zeros", regularizer=regularizer, name="weight"
            )
            self.bias = self.add_weight(shape=(), initializer="zeros", name="bias")
            # Naive Bayes log-count ratios: fitted on the training split (set_nb_ratios), never trained.
            self.nb_ratio = self.add_weight(shape=(features,), initializer="ones", trainable=False, name="nb_ratio")

        def call(self, token_indexes, sequence_length):
            ids, present = ngram_features(token_indexes, sequence_length, self.vocab_size, self.buckets)
            terms = tf.gather(self.weight, ids) * tf.gather(self.nb_ratio, ids)  # (b, 2T - 1)
            return tf.reduce_sum(tf.where(present, terms, 0.0), axis=1) + self.bias  # (b,)

    return NgramBag


def build_sentiment_ngram(vocab_size: int, *, buckets: int, l2: float):
    """The baseline over ``{"token_indexes": (b, T), "sequence_length": (b,)}`` -> 2 logits (negative, positive).

    ``vocab_size + buckets + 1`` trainable weights (one per unigram and bigram bucket,
    and the bias) and as many fixed NB ratios, 1 until :func:`set_nb_ratios`.
    ``l2``: the penalty ``l2 * sum(w ** 2)`` added to the loss.
    """
    import keras

    tokens = keras.Input((None,), dtype="int64", name="token_indexes")  # (b, T), padded with 0
    lengths = keras.Input((), dtype="int64", name="sequence_length")  # (b,), real tokens incl. <eos>
    score = _bag_layer()(vocab_size, buckets, l2, name="ngram_bag")(tokens, lengths)  # (b,)
    logits = keras.layers.Lambda(_two_logits, name="logits")(score)  # (b, 2)
    return keras.Model({"token_indexes": tokens, "sequence_length": lengths}, logits, name="sentiment_ngram")


def _two_logits(score):
    import keras

    # softmax([0, s]) = (1 - sigmoid(s), sigmoid(s)): a logistic regression read as 2 classes.
    return keras.ops.stack([keras.ops.zeros_like(score), score], axis=1)


def nb_ratios(batches: Iterable[tuple[Any, Any]], vocab_size: int, buckets: int, alpha: float) -> np.ndarray:
    """Naive Bayes log-count ratios ``r = log((p / |p|_1) / (q / |q|_1))`` (float32, one per feature), where
    ``p = alpha + n-gram counts over the positive reviews`` and ``q`` the same over the negative ones,
    each review counting each of its distinct n-grams once (Wang & Manning 2012)."""
    features = vocab_size + buckets
    counts = np.zeros((2, features), np.float64)  # negative, positive
    for x, y in batches:
        ids, present = ngram_features(x["token_indexes"], x["sequence_length"], vocab_size, buckets)
        ids, present, y = ids.numpy(), present.numpy(), np.asarray(y)
        for label in (0, 1):
            chosen = ids[(y == label)[:, None] & present]
            counts[label] += np.bincount(chosen, minlength=features)
    p, q = alpha + counts[1], alpha + counts[0]
    return (np.log(p / p.sum()) - np.log(q / q.sum())).astype(np.float32)


def set_nb_ratios(model, ratios: np.ndarray) -> None:
    """Put fitted ratios (:func:`nb_ratios`) into the model's bag."""
    model.get_layer("ngram_bag").nb_ratio.assign(ratios)
