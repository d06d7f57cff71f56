"""Tutorials 01-03's network: a small fully connected net (simple_nn, metrics_demo, save_restore)."""

from __future__ import annotations

from collections.abc import Sequence

import keras


def build_dense_net(input_dim: int, hidden_units: Sequence[int], outputs: int, name: str = "dense_net") -> keras.Model:
    """``Dense(h, relu)`` for each ``h`` in ``hidden_units``, then a linear ``Dense(outputs)``.

    The last layer gives logits (classification) or values (regression); losses
    take logits, as in the tutorials.
    """
    layers: list[keras.layers.Layer] = [keras.Input(shape=(input_dim,), name="features")]  # (b, input_dim)
    for i, units in enumerate(hidden_units):
        layers.append(keras.layers.Dense(units, activation="relu", name=f"hidden_{i}"))  # (b, units)
    layers.append(keras.layers.Dense(outputs, name="output"))  # (b, outputs)
    return keras.Sequential(layers, name=name)
