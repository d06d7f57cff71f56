"""Early stopping: when to stop, and the best epoch's weights, kept for the end of training.

:class:`EarlyStopping` is the rule a stage passes to ``Trainer.fit``; :class:`BestWeights` is
its running state (best value, best epoch, epochs waited, a copy of the best weights), held in
``tf.Variable``\\ s so that a checkpoint (stages/common/checkpoints.py) saves it and a resumed
run stops exactly where an uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``monitor`` has not improved for ``patience`` epochs; keep the best weights."""

    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = 5
    min_delta: float = 0.0

    def improved(self, value: float, best: float) -> bool:
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta

    @property
    def worst(self) -> float:
        return np.inf if self.mode == "min" else -np.inf


class BestWeights:
    """The state of ``rule`` (None: no early stopping) over one run of ``model``."""

    def __init__(self, model: Any, rule: EarlyStopping | None) -> None:
        self.model = model
        self.rule = rule
        self.best_value = tf.Variable(rule.worst if rule else np.inf, dtype=tf.float64, trainable=False)
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_weights = [tf.Variable(np.asarray(w), trainable=False) for w in model.weights]

    def update(self, logs: Mapping[str, float]) -> bool:
        """Record an improvement (and its weights); return True when it is time to stop."""
        rule = self.rule
        if rule is None:
            return False
        if rule.monitor not in logs:
            raise KeyError(f"early stopping monitors {rule.monitor!r}, but the epoch logged only {sorted(logs)}")
        value = float(logs[rule.monitor])
        if rule.improved(value, float(self.best_value.numpy())):
            self.best_value.assign(value)
            self.best_epoch.assign(int(logs["epoch"]))
            self.wait.assign(0)
            for best, weight in zip(self.best_weights, self.model.weights, strict=True):
                best.assign(weight)
            return False
        self.wait.assign_add(1)
        return int(self.wait.numpy()) >= rule.patience

    def restore_best_weights(self) -> None:
        if self.rule is not None and int(self.best_epoch.numpy()) > 0:
            for weight, best in zip(self.model.weights, self.best_weights, strict=True):
                weight.assign(best)

    def kept_epoch(self, epochs_run: int) -> int:
        """The epoch whose weights the model has after :meth:`restore_best_weights` (1-based)."""
        best = int(self.best_epoch.numpy())
        return best if self.rule is not None and best > 0 else epochs_run
