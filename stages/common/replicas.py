"""Training under a ``tf.distribute`` strategy: the batches each replica takes, its steps, its errors.

The strategy itself comes from stages/common/distribute.py (``params.yaml`` -> ``distribute``);
this module is what the training loop (stages/common/training.py) and the stages do with it.
Every function here takes ``strategy=None`` too and then does what one process always did:
the batches as they are, no collectives, the original code path op for op.

- :func:`distribute_batches`: global batches (a list or a ``tf.data.Dataset``) -> the strategy's
  distributed dataset, every global batch split record by record among the replicas (replica
  ``r`` of ``R`` gets records ``r, r + R, ...``), so a step sees exactly the batch one process
  would have seen;
- :func:`distribute_input`: a function of the worker's ``tf.distribute.InputContext`` that returns
  its per-replica batches (``input_context`` in stages/common/input_pipelines.py: it reads only
  this worker's shards) -> the distributed dataset (without a strategy: the function called with
  None, the whole split);
- :func:`replica_steps`: the trainer's train and eval steps run on every replica with
  ``strategy.run``, each replica's summed loss divided by the step's global batch size, so the
  replicas' gradients add up to the gradient of the global batch's mean loss; metrics are summed
  over the replicas, and every worker logs the same values;
- :func:`any_worker`: a vote (every worker saves a checkpoint when any wants to);
- :func:`cluster_errors`: a peer that died or hung becomes one StageError line.

The model and the optimizer must be made under :func:`scope` (``strategy.scope()``) by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from stages.common.cli import StageError

if TYPE_CHECKING:
    from stages.common.training import Trainer

Batches = Iterable[tuple[Any, Any]]
# A function of this worker's tf.distribute.InputContext (None without a strategy) that returns its batches.
WorkerBatches = Callable[[Any], Batches]
Step = Callable[..., Any]


def scope(strategy: tf.distribute.Strategy | None) -> AbstractContextManager[Any]:
    """``strategy.scope()``, or a context that does nothing without a strategy."""
    return nullcontext() if strategy is None else strategy.scope()


def check_made_in_scope(strategy: tf.distribute.Strategy, model: Any, optimizer: Any) -> None:
    """Refuse a model or an optimizer whose variables were not made under ``strategy.scope()``."""
    for name, variables in (("model", model.weights), ("optimizer", optimizer.variables)):
        if any(not strategy.extended.variable_created_in_scope(v.value) for v in variables):
            raise ValueError(f"with a strategy, build the {name} under strategy.scope() before handing it over")


def distribute_batches(strategy: tf.distribute.Strategy | None, batches: Batches) -> Any:
    """``batches`` (global batches) as the strategy's distributed dataset: each global batch
    split record by record, replica ``r`` of ``R`` taking records ``r, r + R, ...``.
    Without a strategy: ``batches`` as they are."""
    if strategy is None:
        return batches
    dataset = _as_dataset(batches)
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


def distribute_input(strategy: tf.distribute.Strategy | None, batches: WorkerBatches) -> Any:
    """A function of the worker's ``InputContext`` that returns its per-replica batches, as the
    strategy's distributed dataset; without a strategy, the function's batches for ``None`` (all)."""
    if strategy is None:
        return batches(None)
    return strategy.distribute_datasets_from_function(batches)


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


def replica_steps(trainer: Trainer, strategy: tf.distribute.Strategy) -> tuple[Step, Step]:
    """``(train_step, eval_step)``: the trainer's steps on every replica of ``strategy``."""
    loss = trainer.loss
    # The loss summed over a replica's examples; divided by the step's global batch size below.
    if not hasattr(type(loss), "from_config"):
        raise TypeError(
            "with a strategy the loss must be a keras.losses.Loss (or have get_config/from_config with a "
            f"reduction), not {type(loss).__name__}"
        )
    sum_loss = type(loss).from_config({**loss.get_config(), "reduction": "sum"})
    model, optimizer = trainer.model, trainer.optimizer

    def replica_train_step(x: Any, y: tf.Tensor) -> tf.Tensor:
        """``Trainer._train_step`` on one replica's part of the global batch (which may be empty)."""
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            predictions = model(x, training=True)
            summed = sum_loss(y, predictions)
            count = tf.cast(tf.shape(y)[0], summed.dtype)
            global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
            loss = summed / global_count  # summed over the replicas: the global batch's mean
            regularization = tf.add_n(model.losses) if model.losses else tf.zeros_like(loss)
            loss = loss + tf.nn.scale_regularization_loss(regularization)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        # The replica's mean loss weighted by its size: the metric's global mean is the batch's loss.
        trainer.train_loss.update_state(tf.math.divide_no_nan(summed, count) + regularization, sample_weight=count)
        for metric in trainer.train_metrics.values():
            metric.update_state(y, predictions)
        return loss

    def replica_eval_step(x: Any, y: tf.Tensor) -> None:
        predictions = model(x, training=False)
        summed = sum_loss(y, predictions)
        count = tf.cast(tf.shape(y)[0], summed.dtype)
        trainer.eval_loss.update_state(tf.math.divide_no_nan(summed, count), sample_weight=count)
        for metric in trainer.eval_metrics.values():
            metric.update_state(y, predictions)

    def train_step(x: Any, y: Any) -> tf.Tensor:
        per_replica = strategy.run(replica_train_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def eval_step(x: Any, y: Any) -> None:
        strategy.run(replica_eval_step, args=(x, y))

    return train_step, eval_step


def any_worker(strategy: tf.distribute.Strategy | None, wanted: bool) -> bool:
    """Whether any worker ``wanted``: with a strategy a collective every worker must join
    (their clocks differ, so each decides alike); without one, ``wanted``."""
    if strategy is None:
        return wanted
    votes = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(float(wanted)))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None)) > 0


# What a collective raises when a peer died (missed heartbeats), hung (distribute.timeout_s, if set) or aborted.
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


@contextmanager
def cluster_errors(strategy: tf.distribute.Strategy | None, desc: str) -> Iterator[None]:
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
