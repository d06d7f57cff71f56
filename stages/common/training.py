"""The eager training loop every model in the pipeline uses.

``Trainer.train_step`` is the tutorial's loop body, unchanged: a forward pass
under ``tf.GradientTape``, gradients, ``optimizer.apply_gradients``. It runs
compiled with ``tf.function`` unless ``run_eagerly`` is set (for debugging with
print/pdb). ``fit`` is the loop around it, one epoch at a time: train, check the
loss, validate, early stopping, checkpoint, log.

The rest lives beside it:

- stages/common/early_stopping.py: when to stop, and the best epoch's weights;
- stages/common/checkpoints.py: the state a run saves, so that an interrupted run
  resumes where it stopped, and the folder it goes to;
- stages/common/replicas.py: the same steps on every replica of a ``tf.distribute``
  strategy (stages/common/distribute.py), and the batches each replica takes.

The caller builds the model and the optimizer (under ``strategy.scope()`` when it
passes a ``strategy``) and hands over batches: ``(x, y)`` pairs, with a strategy
as the strategy's distributed dataset (``replicas.distribute_batches`` or
``replicas.distribute_input``). Without a strategy (``None``, the default) none
of the distributed code runs: the original code path, op for op.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from stages.common.checkpoints import Checkpoints, History, TrainingState
from stages.common.cli import StageError
from stages.common.distribute import cluster_task
from stages.common.early_stopping import EarlyStopping
from stages.common.replicas import check_made_in_scope, cluster_errors, replica_steps, scope

log = logging.getLogger(__name__)

Batches = Iterable[tuple[Any, Any]]
MetricFactory = Callable[[], keras.metrics.Metric]


def array_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None = None
) -> Callable[[int], tf.data.Dataset]:
    """Epoch -> batches of in-memory arrays, reshuffled per epoch from ``seed + epoch``.

    The order depends only on ``seed + epoch`` (not on a generator's running
    state or TF's global seed), so a run resumed at epoch k sees exactly the
    batches an uninterrupted run would have seen.
    """
    x, y = np.asarray(x), np.asarray(y)

    def batches(epoch: int) -> tf.data.Dataset:
        order = np.arange(len(x)) if seed is None else np.random.default_rng(seed + epoch).permutation(len(x))
        return tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(batch_size)

    return batches


class Trainer:
    """A model, its optimizer and loss, and the train/eval steps that use them."""

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        loss: keras.losses.Loss,
        metrics: Mapping[str, MetricFactory] | None = None,
        run_eagerly: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ) -> None:
        """``model`` and ``optimizer`` are built by the caller: with a ``strategy``, under its scope.
        ``metrics`` maps a name to the metric's class (one instance for training, one for evaluation)."""
        self.strategy = strategy
        if strategy is None and cluster_task().workers > 1:
            # A stage that does not pass a strategy would train alone on every worker, and all would write.
            raise StageError(
                "TF_CONFIG names a cluster, but this stage trains in one process only "
                "(it does not read params.yaml distribute); unset TF_CONFIG"
            )
        self.model, self.optimizer, self.loss = model, optimizer, loss
        with scope(strategy):
            metrics = dict(metrics or {})
            self.train_loss = keras.metrics.Mean(name="loss")
            self.eval_loss = keras.metrics.Mean(name="val_loss")
            self.train_metrics = {name: make() for name, make in metrics.items()}
            self.eval_metrics = {name: make() for name, make in metrics.items()}
        if strategy is None:
            train_step, eval_step = self._train_step, self._eval_step
        else:
            check_made_in_scope(strategy, model, optimizer)
            train_step, eval_step = replica_steps(self, strategy)
        # predict: with a strategy the weights are mirrored, so each process predicts on its own (no collectives).
        self.train_step, self.eval_step, self.predict_step = train_step, eval_step, self._predict_step
        if not run_eagerly:
            # reduce_retracing: the last, smaller batch of an epoch must not trace a new graph each time.
            self.train_step = tf.function(train_step, reduce_retracing=True)
            self.eval_step = tf.function(eval_step, reduce_retracing=True)
            self.predict_step = tf.function(self._predict_step, reduce_retracing=True)

    # -- the steps: small functions of (model state, batch) -------------------------------

    def _train_step(self, x: Any, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            predictions = self.model(x, training=True)
            loss = self.loss(y, predictions)
            if self.model.losses:  # weight regularizers, if a model has any
                loss = loss + tf.add_n(self.model.losses)
        gradients = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables, strict=True))
        self.train_loss.update_state(loss, sample_weight=tf.shape(y)[0])
        for metric in self.train_metrics.values():
            metric.update_state(y, predictions)
        return loss

    def _eval_step(self, x: Any, y: tf.Tensor) -> tf.Tensor:
        predictions = self.model(x, training=False)
        loss = self.loss(y, predictions)
        self.eval_loss.update_state(loss, sample_weight=tf.shape(y)[0])
        for metric in self.eval_metrics.values():
            metric.update_state(y, predictions)
        return predictions

    def _predict_step(self, x: Any) -> tf.Tensor:
        return self.model(x, training=False)

    # -- loops around the steps ------------------------------------------------------------

    def train_epoch(self, batches: Batches) -> dict[str, float]:
        """One pass over ``batches``; returns the epoch's mean loss and metrics."""
        self.train_loss.reset_state()
        for metric in self.train_metrics.values():
            metric.reset_state()
        for x, y in batches:
            self.train_step(x, y)
        logs = {"loss": float(self.train_loss.result())}
        logs.update({name: float(m.result()) for name, m in self.train_metrics.items()})
        return logs

    def evaluate(self, batches: Batches, prefix: str = "val_") -> dict[str, float]:
        """Loss and metrics of the current weights on ``batches`` (no training)."""
        self.eval_loss.reset_state()
        for metric in self.eval_metrics.values():
            metric.reset_state()
        with cluster_errors(self.strategy, "evaluate"):  # with a strategy, the results are collectives too
            for x, y in batches:
                self.eval_step(x, y)
            logs = {f"{prefix}loss": float(self.eval_loss.result())}
            logs.update({f"{prefix}{name}": float(m.result()) for name, m in self.eval_metrics.items()})
        return logs

    def predict(self, batches: Iterable[Any]) -> np.ndarray:
        """Model outputs for every batch of inputs, concatenated."""
        return np.concatenate([self.predict_step(x).numpy() for x in batches], axis=0)

    def predict_labelled(self, batches: Batches) -> tuple[np.ndarray, np.ndarray]:
        """``(targets, outputs)`` of a split's ``(x, y)`` batches, each concatenated in batch order."""
        targets, outputs = [], []
        for x, y in batches:
            outputs.append(self.predict_step(x).numpy())
            targets.append(np.asarray(y))
        return np.concatenate(targets, axis=0), np.concatenate(outputs, axis=0)

    def fit(
        self,
        train: Callable[[int], Batches],
        epochs: int,
        validation: Callable[[], Batches] | None = None,
        early_stopping: EarlyStopping | None = None,
        checkpoint_dir: Path | None = None,
        checkpoint_every_s: float = 60.0,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
        desc: str = "train",
    ) -> History:
        """Train for up to ``epochs`` epochs and return one dict of metrics per epoch.

        ``train(epoch)`` gives that epoch's batches (a new order each epoch), ``validation()``
        the validation batches. With ``checkpoint_dir`` the full state (weights, optimizer,
        epoch, early-stopping state, history) is saved at most every ``checkpoint_every_s``
        seconds and at the end, and a later call with the same directory resumes from it.
        """
        if not self.model.built:
            raise ValueError("build the model (e.g. with keras.Input) before training")
        with scope(self.strategy):  # optimizer slots are created lazily: now, so a restore has a target
            self.optimizer.build(self.model.trainable_variables)
        state = TrainingState(self.model, self.optimizer, early_stopping)
        saver = None if checkpoint_dir is None else Checkpoints(state, checkpoint_dir, self.strategy)  # resumes

        start = int(state.epoch.numpy())
        bar = _progress_bar(epochs, start, desc)
        last_save = time.monotonic()
        log_every = max(1, epochs // 10)
        try:
            with cluster_errors(self.strategy, desc):
                for epoch in range(start, epochs):
                    if bool(state.finished.numpy()):
                        break
                    logs = {"epoch": epoch + 1, **self.train_epoch(train(epoch))}
                    if not math.isfinite(logs["loss"]):
                        # Diverged: nothing after this is worth saving, and the previous outputs stay.
                        raise StageError(
                            f"{desc}: training diverged at epoch {epoch + 1}: loss is {logs['loss']} "
                            f"(lower the learning rate?)"
                        )
                    if validation is not None:
                        logs.update(self.evaluate(validation()))
                    state.history.append(logs)
                    stop = state.best.update(logs)
                    state.epoch.assign(epoch + 1)
                    if stop or epoch + 1 == epochs:
                        state.finished.assign(True)

                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "epoch"}, refresh=False)
                    if bar.disable and ((epoch + 1) % log_every == 0 or stop):
                        log.info("epoch %d/%d %s", epoch + 1, epochs, _format(logs))
                    due = bool(state.finished.numpy()) or time.monotonic() - last_save >= checkpoint_every_s
                    if saver is not None and saver.save_if(due):
                        last_save = time.monotonic()
                    if on_epoch_end is not None:
                        on_epoch_end(epoch, logs)
                    if stop:
                        assert early_stopping is not None  # only early stopping stops before `epochs`
                        log.info(
                            "early stopping at epoch %d: best %s %.4g at epoch %d",
                            epoch + 1,
                            early_stopping.monitor,
                            float(state.best.best_value.numpy()),
                            int(state.best.best_epoch.numpy()),
                        )
                        break
        finally:
            bar.close()
            if saver is not None:
                saver.close()
        state.finished.assign(True)
        state.best.restore_best_weights()
        history = state.history
        history.best_epoch = state.best.kept_epoch(len(history))
        return history


def _progress_bar(epochs: int, start: int, desc: str) -> Any:
    """One line on a terminal; disabled (None: when stderr is not a terminal) in logs, where fit logs lines."""
    return tqdm(
        total=epochs,
        initial=start,
        desc=desc,
        unit="epoch",
        file=sys.stderr,
        disable=None,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def _format(logs: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k != "epoch")
