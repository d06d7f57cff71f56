"""The eager training loop every model in the pipeline uses.

``Trainer.train_step`` is the tutorial's loop body, unchanged: a forward pass
under ``tf.GradientTape``, gradients, ``optimizer.apply_gradients``. It runs
compiled with ``tf.function`` unless ``run_eagerly`` is set (for debugging with
print/pdb). Around it, ``fit`` adds what a real run needs: per-epoch metrics,
early stopping that restores the best weights, checkpoints that let an
interrupted run resume where it stopped, and a progress bar.

**Distributed** (``strategy``, see stages/common/distribute.py): the model,
optimizer and metrics are created under the strategy's scope, the same step
runs on every replica with ``strategy.run`` (each replica's summed loss divided
by the step's global batch size, so the replicas' gradients add up to the
gradient of the global batch's mean loss), and every global batch is split
record by record among the replicas (replica ``r`` of ``R`` gets records
``r, r + R, ...``), so a step sees exactly the batch one process would have
seen. Metrics are summed over the replicas; every worker logs the same values.
Only the chief writes checkpoints; the other workers save to temporary folders
they remove, and all of them resume from the chief's. Without a strategy
(``None``, the default) none of this runs: the original code path, op for op.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard, cast

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from stages.common.cli import StageError
from stages.common.distribute import cluster_task, strategy_is_chief
from stages.common.outputs import clean_float, keep_folder

log = logging.getLogger(__name__)

Batches = Iterable[tuple[Any, Any]]
# A function of this worker's tf.distribute.InputContext (None without a strategy) that returns its batches.
WorkerBatches = Callable[[Any], Batches]
MetricFactory = Callable[[], keras.metrics.Metric]


def _scope(strategy: tf.distribute.Strategy | None) -> AbstractContextManager[Any]:
    return nullcontext() if strategy is None else strategy.scope()


# What a collective raises when a peer died (missed heartbeats), hung (distribute.timeout_s, if set) or aborted.
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


@contextmanager
def _cluster_errors(strategy: tf.distribute.Strategy | None, desc: str) -> Iterator[None]:
    """With a strategy: a failed peer becomes one StageError line (the run can be resumed)."""
    if strategy is None:
        yield
        return
    try:
        yield
    except _PEER_ERRORS as exc:
        raise _peer_error(desc, exc) from None


def _peer_error(desc: str, exc: tf.errors.OpError) -> StageError:
    message = re.sub(r"\{\{.*?\}\}\s*", "", exc.message or str(exc))
    lines = [line.strip() for line in message.splitlines() if line.strip()][:2]
    return StageError(
        f"{desc}: a worker of the cluster stopped or cannot be reached ({' '.join(lines)[:300]}); "
        "rerun every worker to resume from the chief's last checkpoint"
    )


class History(list[dict[str, float]]):
    """One dict of logs per epoch, and ``best_epoch``: the epoch whose weights ``fit`` kept
    (the early-stopping monitor's best; without early stopping, the last epoch)."""

    best_epoch: int = 0


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
        model: keras.Model | Callable[[], keras.Model],
        optimizer: keras.optimizers.Optimizer | Callable[[], keras.optimizers.Optimizer],
        loss: keras.losses.Loss,
        metrics: Mapping[str, MetricFactory] | None = None,
        run_eagerly: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ) -> None:
        """``model`` and ``optimizer`` are objects, or functions that make them: with a ``strategy``
        they must be functions (or objects made under ``strategy.scope()``), called here in its scope."""
        self.strategy = strategy
        if strategy is None and cluster_task().workers > 1:
            # A stage that does not pass a strategy would train alone on every worker, and all would write.
            raise StageError(
                "TF_CONFIG names a cluster, but this stage trains in one process only "
                "(it does not read params.yaml distribute); unset TF_CONFIG"
            )
        with _scope(strategy):
            self.model = model if isinstance(model, keras.Model) else model()
            self.optimizer = optimizer if isinstance(optimizer, keras.optimizers.Optimizer) else optimizer()
            self.loss = loss
            metrics = dict(metrics or {})
            self.train_loss = keras.metrics.Mean(name="loss")
            self.eval_loss = keras.metrics.Mean(name="val_loss")
            self.train_metrics = {name: make() for name, make in metrics.items()}
            self.eval_metrics = {name: make() for name, make in metrics.items()}
        if strategy is not None:
            if any(not strategy.extended.variable_created_in_scope(v.value) for v in self.model.weights):
                raise ValueError("with a strategy, pass a function that builds the model (called in its scope)")
            self._init_distributed(strategy, run_eagerly)
        elif run_eagerly:
            self.train_step, self.eval_step, self.predict_step = self._train_step, self._eval_step, self._predict_step
        else:
            # reduce_retracing: the last, smaller batch of an epoch must not trace a new graph each time.
            self.train_step = tf.function(self._train_step, reduce_retracing=True)
            self.eval_step = tf.function(self._eval_step, reduce_retracing=True)
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

    # -- the same steps on every replica of a strategy ---------------------------------------

    def _init_distributed(self, strategy: tf.distribute.Strategy, run_eagerly: bool) -> None:
        # The loss summed over a replica's examples; divided by the step's global batch size below.
        if not hasattr(type(self.loss), "from_config"):
            raise TypeError(
                "with a strategy the loss must be a keras.losses.Loss (or have get_config/from_config with a "
                f"reduction), not {type(self.loss).__name__}"
            )
        self._sum_loss = type(self.loss).from_config({**self.loss.get_config(), "reduction": "sum"})

        def train_step(x: Any, y: Any) -> tf.Tensor:
            per_replica = strategy.run(self._replica_train_step, args=(x, y))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        def eval_step(x: Any, y: Any) -> None:
            strategy.run(self._replica_eval_step, args=(x, y))

        if run_eagerly:
            self.train_step, self.eval_step = train_step, eval_step
        else:
            self.train_step = tf.function(train_step, reduce_retracing=True)
            self.eval_step = tf.function(eval_step, reduce_retracing=True)
        # predict: the weights are mirrored, so each process predicts on its own (no collectives).
        self.predict_step = self._predict_step
        if not run_eagerly:
            self.predict_step = tf.function(self._predict_step, reduce_retracing=True)

    def _replica_train_step(self, x: Any, y: tf.Tensor) -> tf.Tensor:
        """``_train_step`` on one replica's part of the global batch (which may be empty)."""
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            predictions = self.model(x, training=True)
            summed = self._sum_loss(y, predictions)
            count = tf.cast(tf.shape(y)[0], summed.dtype)
            global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
            loss = summed / global_count  # summed over the replicas: the global batch's mean
            regularization = tf.add_n(self.model.losses) if self.model.losses else tf.zeros_like(loss)
            loss = loss + tf.nn.scale_regularization_loss(regularization)
        gradients = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables, strict=True))
        # The replica's mean loss weighted by its size: the metric's global mean is the batch's loss.
        self.train_loss.update_state(tf.math.divide_no_nan(summed, count) + regularization, sample_weight=count)
        for metric in self.train_metrics.values():
            metric.update_state(y, predictions)
        return loss

    def _replica_eval_step(self, x: Any, y: tf.Tensor) -> None:
        predictions = self.model(x, training=False)
        summed = self._sum_loss(y, predictions)
        count = tf.cast(tf.shape(y)[0], summed.dtype)
        self.eval_loss.update_state(tf.math.divide_no_nan(summed, count), sample_weight=count)
        for metric in self.eval_metrics.values():
            metric.update_state(y, predictions)

    def distribute(self, batches: Batches | WorkerBatches) -> Any:
        """``batches`` (global batches) as the strategy's distributed dataset: each global batch
        split record by record, replica ``r`` of ``R`` taking records ``r, r + R, ...``.

        ``batches`` may also be a function of a ``tf.distribute.InputContext`` that returns this
        worker's dataset of per-replica batches (the ``input_context`` of stages/common/input_pipelines.py,
        which reads only this worker's shards): it is given to ``distribute_datasets_from_function`` as it is.
        """
        strategy = self.strategy
        assert strategy is not None
        if _per_worker(batches):
            return strategy.distribute_datasets_from_function(batches)
        dataset = _as_dataset(cast(Batches, batches))
        replicas = strategy.num_replicas_in_sync

        def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
            local = replicas // context.num_input_pipelines
            first = context.input_pipeline_id * local

            def part(batch: Any, replica: Any) -> Any:
                return tf.nest.map_structure(lambda t: t[replica::replicas], batch)

            if local == 1:
                return dataset.map(lambda *batch: part(batch, first))
            # Several replicas on this worker take consecutive elements, one each.
            return dataset.flat_map(
                lambda *batch: tf.data.Dataset.range(first, first + local).map(lambda r: part(batch, r))
            )

        return strategy.distribute_datasets_from_function(per_worker)

    # -- loops around the steps ------------------------------------------------------------

    def _batches(self, batches: Batches | WorkerBatches) -> Any:
        """What the steps iterate over: the distributed dataset with a strategy, else the batches
        (a function of the InputContext is called with None: the whole split)."""
        if self.strategy is not None:
            return self.distribute(batches)
        return batches(None) if _per_worker(batches) else batches

    def train_epoch(self, batches: Batches | WorkerBatches) -> dict[str, float]:
        """One pass over ``batches``; returns the epoch's mean loss and metrics."""
        self.train_loss.reset_state()
        for metric in self.train_metrics.values():
            metric.reset_state()
        for x, y in self._batches(batches):
            self.train_step(x, y)
        logs = {"loss": float(self.train_loss.result())}
        logs.update({name: float(m.result()) for name, m in self.train_metrics.items()})
        return logs

    def evaluate(self, batches: Batches | WorkerBatches, prefix: str = "val_") -> dict[str, float]:
        """Loss and metrics of the current weights on ``batches`` (no training)."""
        self.eval_loss.reset_state()
        for metric in self.eval_metrics.values():
            metric.reset_state()
        with _cluster_errors(self.strategy, "evaluate"):  # with a strategy, the results are collectives too
            for x, y in self._batches(batches):
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
        train: Callable[[int], Batches | WorkerBatches],
        epochs: int,
        validation: Callable[[], Batches | WorkerBatches] | None = None,
        early_stopping: EarlyStopping | None = None,
        checkpoint_dir: Path | None = None,
        checkpoint_every_s: float = 60.0,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
        desc: str = "train",
    ) -> History:
        """Train for up to ``epochs`` epochs and return one dict of metrics per epoch.

        ``train(epoch)`` gives that epoch's batches, or a function of the worker's
        ``InputContext`` that gives them (see :meth:`distribute`). With ``checkpoint_dir`` the
        full state (weights, optimizer, epoch, early-stopping state, history) is
        saved at most every ``checkpoint_every_s`` seconds and at the end, and a
        later call with the same directory resumes from it.
        """
        state = _FitState(self, early_stopping)
        manager = None
        save_dir = checkpoint_dir
        scratch = None  # a worker other than the chief saves here, and removes it
        if checkpoint_dir is not None:
            if self.strategy is None:
                manager = tf.train.CheckpointManager(state.checkpoint, str(checkpoint_dir), max_to_keep=1)
                state.restore(manager.latest_checkpoint, checkpoint_dir)
            else:
                if not strategy_is_chief(self.strategy):
                    save_dir = scratch = Path(tempfile.mkdtemp(prefix="eager-pipeline-worker-checkpoints-"))
                manager = tf.train.CheckpointManager(state.checkpoint, str(save_dir), max_to_keep=1)
                # Every worker resumes from the chief's checkpoint (on several hosts: a shared folder).
                state.restore(tf.train.latest_checkpoint(str(checkpoint_dir)), checkpoint_dir)

        start = int(state.epoch.numpy())
        bar = tqdm(
            total=epochs,
            initial=start,
            desc=desc,
            unit="epoch",
            file=sys.stderr,
            disable=None,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        last_save = time.monotonic()
        log_every = max(1, epochs // 10)
        try:
            with _cluster_errors(self.strategy, desc):
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
                    stop = state.update_early_stopping(logs)
                    state.epoch.assign(epoch + 1)
                    if stop or epoch + 1 == epochs:
                        state.finished.assign(True)
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "epoch"}, refresh=False)
                    if bar.disable and ((epoch + 1) % log_every == 0 or stop):
                        log.info("epoch %d/%d %s", epoch + 1, epochs, _format(logs))
                    if manager is not None and self._all_save(
                        bool(state.finished.numpy()) or time.monotonic() - last_save >= checkpoint_every_s
                    ):
                        assert save_dir is not None  # there is a manager only with a checkpoint_dir
                        state.save(manager, save_dir)
                        last_save = time.monotonic()
                    if on_epoch_end is not None:
                        on_epoch_end(epoch, logs)
                    if stop:
                        assert early_stopping is not None  # only early stopping stops before `epochs`
                        log.info(
                            "early stopping at epoch %d: best %s %.4g at epoch %d",
                            epoch + 1,
                            early_stopping.monitor,
                            float(state.best_value.numpy()),
                            int(state.best_epoch.numpy()),
                        )
                        break
        finally:
            bar.close()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        state.finished.assign(True)
        state.restore_best_weights()
        history = state.history
        best = int(state.best_epoch.numpy())
        history.best_epoch = best if early_stopping is not None and best > 0 else len(history)
        return history

    def _all_save(self, wanted: bool) -> bool:
        """Whether to save a checkpoint now: with a strategy, every worker saves when any wants to
        (their clocks differ), so they all take part in the same saves."""
        if self.strategy is None:
            return wanted
        strategy = self.strategy
        votes = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(float(wanted)))
        return float(strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None)) > 0


def _per_worker(batches: Batches | WorkerBatches) -> TypeGuard[WorkerBatches]:
    """Whether ``batches`` is a function of the InputContext (a dataset or a list is not callable)."""
    return callable(batches) and not isinstance(batches, tf.data.Dataset)


def _as_dataset(batches: Batches) -> tf.data.Dataset:
    """``batches`` as a tf.data.Dataset (a list of batches, or a dataset as it is)."""
    if isinstance(batches, tf.data.Dataset):
        return batches
    items = [tuple(batch) for batch in batches]
    if not items:
        raise ValueError("no batches")
    # Batches may differ in size (the last one): the signature leaves the batch dimension open.
    signature = tf.nest.map_structure(
        lambda t: tf.TensorSpec([None, *np.shape(t)[1:]], tf.as_dtype(np.asarray(t).dtype)), items[0]
    )
    return tf.data.Dataset.from_generator(lambda: iter(items), output_signature=signature)


def _format(logs: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k != "epoch")


class _FitState:
    """Everything ``fit`` must carry across an interruption, as one tf.train.Checkpoint."""

    def __init__(self, trainer: Trainer, early_stopping: EarlyStopping | None) -> None:
        model = trainer.model
        if not model.built:
            raise ValueError("build the model (e.g. with keras.Input) before training")
        # Optimizer slots are created lazily; build them now so a restore has a target.
        with _scope(trainer.strategy):
            trainer.optimizer.build(model.trainable_variables)
        self.model = model
        self.early_stopping = early_stopping
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.finished = tf.Variable(False, trainable=False)
        worst = early_stopping.worst if early_stopping else np.inf
        self.best_value = tf.Variable(worst, dtype=tf.float64, trainable=False)
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_weights = [tf.Variable(np.asarray(w), trainable=False) for w in model.weights]
        self.history = History()
        # Keras keeps random state (a Dropout layer's seed generator) in variables outside
        # model.weights, which a checkpoint of the model does not save: without them a resumed
        # run would draw other dropout masks than an uninterrupted one.
        weight_ids = {id(w) for w in model.weights}
        self.random_state = [v for v in model.variables if id(v) not in weight_ids]
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=trainer.optimizer,
            epoch=self.epoch,
            finished=self.finished,
            best_value=self.best_value,
            best_epoch=self.best_epoch,
            wait=self.wait,
            best_weights=self.best_weights,
            random_state=self.random_state,
        )

    def update_early_stopping(self, logs: Mapping[str, float]) -> bool:
        """Record an improvement (and its weights); return True when it is time to stop."""
        es = self.early_stopping
        if es is None:
            return False
        if es.monitor not in logs:
            raise KeyError(f"early stopping monitors {es.monitor!r}, but the epoch logged only {sorted(logs)}")
        value = float(logs[es.monitor])
        if es.improved(value, float(self.best_value.numpy())):
            self.best_value.assign(value)
            self.best_epoch.assign(int(logs["epoch"]))
            self.wait.assign(0)
            for best, weight in zip(self.best_weights, self.model.weights, strict=True):
                best.assign(weight)
            return False
        self.wait.assign_add(1)
        return int(self.wait.numpy()) >= es.patience

    def restore_best_weights(self) -> None:
        if self.early_stopping is not None and int(self.best_epoch.numpy()) > 0:
            for weight, best in zip(self.model.weights, self.best_weights, strict=True):
                weight.assign(best)

    def save(self, manager: tf.train.CheckpointManager, directory: Path) -> None:
        manager.save(checkpoint_number=int(self.epoch.numpy()))
        tmp = directory / "history.json.tmp"
        tmp.write_text(json.dumps(clean_float(self.history)), encoding="utf-8")
        tmp.replace(directory / "history.json")

    def restore(self, latest: str | None, directory: Path) -> None:
        if latest is None:
            return
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        history_file = directory / "history.json"
        history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.exists() else []
        self.history = History(history[: int(self.epoch.numpy())])
        log.info("resumed from %s at epoch %d", latest, int(self.epoch.numpy()))


def checkpoint_dir(root: Path | str, stage: str, params: Any, seed: int, prune: bool = True) -> Path:
    """The resumable-checkpoint folder of one run: ``root/stage/<key>``.

    The key hashes the stage name, its params, the seed and the source of every
    ``stages`` module loaded, so a checkpoint is only ever resumed by the very
    run that wrote it. Folders of other keys are stale and removed (unless ``prune`` is
    False: a worker other than the chief only reads the chief's folder).
    """
    stage_root = Path(root) / stage
    digest = hashlib.sha256()
    payload = params.model_dump(mode="json") if hasattr(params, "model_dump") else params
    digest.update(json.dumps({"stage": stage, "seed": seed, "params": payload}, sort_keys=True).encode())
    package_dir = Path(__file__).resolve().parents[1]
    for file in sorted(_loaded_stage_files(package_dir)):
        digest.update(file.relative_to(package_dir).as_posix().encode())
        digest.update(file.read_bytes())
    key = digest.hexdigest()[:16]
    if prune and stage_root.is_dir():
        for other in stage_root.iterdir():
            if other.name not in (key, "README.txt"):
                _rmtree(other)
    # Not created here: the first checkpoint save creates it, so a run that fails
    # before its first epoch leaves no empty folder behind.
    return stage_root / key


CHECKPOINTS_README = (
    "Resumable training state of an interrupted run of this stage appears here;\n"
    "a finished run removes it. Safe to delete.\n"
)


def clear_checkpoints(path: Path) -> None:
    """Drop a finished run's checkpoints: they exist only to resume an interrupted run.

    A fixed README stays in the stage's folder so DVC does not warn about an empty out.
    """
    _rmtree(path)
    keep_folder(path.parent, CHECKPOINTS_README)


def _rmtree(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _loaded_stage_files(package_dir: Path) -> set[Path]:
    files = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(package_dir):
            files.add(Path(file).resolve())
    return files
