"""Training on several devices or hosts: ``params.yaml`` -> ``distribute`` -> a ``tf.distribute`` strategy.

``strategy: none`` (the default) is no strategy at all: the stages run exactly the
code they always ran. ``mirrored`` mirrors the model over the local devices
(``tf.distribute.MirroredStrategy``); ``multi_worker`` over the workers that
``TF_CONFIG`` names (``tf.distribute.MultiWorkerMirroredStrategy``, the ring
collectives, which also work on CPU). ``python -m stages.apps.launch_workers -n 2
-- python -m stages.train_emotion_cnn`` starts such a cluster on this host. The
stages that read this section: simple_nn and train_emotion_cnn; the others refuse
a TF_CONFIG cluster.

With several workers only the chief (task ``chief``, or ``worker`` 0 when the
cluster has no chief) writes outputs, metrics, plots and checkpoints; the others
write their checkpoints to temporary folders they remove, and nothing else.

The strategy must exist before TensorFlow runs any op (it configures the
collectives of the eager context): :func:`make_strategy` right after loading the
params, before seeding.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from stages.common.cli import StageError
from stages.common.params import PARAMS_FILE, Section, read_params_file, validate

if TYPE_CHECKING:
    import tensorflow as tf

SECTION = "distribute"


class DistributeSection(Section):
    """``params.yaml`` -> ``distribute``: how a training stage spreads over devices and hosts."""

    strategy: Literal["none", "mirrored", "multi_worker"] = Field(
        "none", description="none: one process, as the tutorials; mirrored: the local devices; multi_worker: TF_CONFIG"
    )
    # Off by default: the coordination service's heartbeats already stop the others about 10 s
    # after a worker dies, and a per-collective timeout costs one sleeping thread per collective
    # (TF's own advice: for debugging only); under load it also fails healthy but slow peers.
    timeout_s: float | None = Field(
        None,
        gt=0.0,
        description="multi_worker, for debugging a hung (alive) peer: a collective waiting longer than this fails",
    )


def load_distribute(path: Path = PARAMS_FILE) -> DistributeSection:
    """The ``distribute`` section (all defaults when the file has none)."""
    data = read_params_file(path)
    return validate(DistributeSection, data.get(SECTION, {}), SECTION, path)


@dataclass(frozen=True)
class Task:
    """This process's place in the ``TF_CONFIG`` cluster (one worker, index 0, without one)."""

    type: str = "worker"
    index: int = 0
    workers: int = 1
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        return self.type == "chief" or (self.type == "worker" and self.index == 0 and not self.has_chief)


def cluster_task(environ: dict[str, str] | None = None) -> Task:
    """Read ``TF_CONFIG`` (without importing TensorFlow): this task, and how many workers in all."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw.strip():
        return Task()
    try:
        config: Any = json.loads(raw)
        cluster = config["cluster"]
        task = config["task"]
        has_chief = bool(cluster.get("chief"))
        workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        return Task(type=str(task["type"]), index=int(task["index"]), workers=workers, has_chief=has_chief)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StageError(f"TF_CONFIG: not a cluster and task description ({exc!r}): {raw[:200]}") from None


def is_chief() -> bool:
    """True in a single process and in the cluster's chief: the one process that writes outputs.

    ``run_stage(main, name, lock=is_chief())``: only the chief takes the stage's lock (the
    others write nothing). A malformed TF_CONFIG counts as chief here; make_strategy reports it.
    """
    try:
        return cluster_task().is_chief
    except StageError:
        return True


def strategy_is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes outputs under ``strategy``: the same rule as :attr:`Task.is_chief`,
    read from the strategy's cluster resolver (always true without a multi-worker strategy)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().jobs
    return Task(type=resolver.task_type, index=int(resolver.task_id), has_chief=has_chief).is_chief


def make_strategy(section: DistributeSection) -> tf.distribute.Strategy | None:
    """The strategy ``section`` names (None for ``none``). Call before any other TensorFlow op."""
    task = cluster_task()
    if section.strategy != "multi_worker" and task.workers > 1:
        # Every worker would train alone, and each would think it is the chief and write.
        raise StageError(
            f"TF_CONFIG names a cluster of {task.workers} workers but params.yaml distribute.strategy is "
            f"{section.strategy} (set it to multi_worker, or unset TF_CONFIG)"
        )
    if section.strategy == "none":
        return None
    import tensorflow as tf

    if section.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if not os.environ.get("TF_CONFIG", "").strip():
        raise StageError(
            "distribute.strategy is multi_worker but TF_CONFIG is not set "
            "(start the workers with python -m stages.apps.launch_workers -n N -- <command>)"
        )
    options = tf.distribute.experimental.CommunicationOptions(
        # RING: the collectives that exist on CPU too (NCCL is GPU-only; AUTO picks NCCL on GPUs).
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
        timeout_seconds=section.timeout_s,
    )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as exc:  # "Collective ops must be configured at program startup"
        raise RuntimeError(f"{exc} (make_strategy must run before any other TensorFlow op)") from exc
