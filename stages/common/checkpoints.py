"""Resumable training: the state ``Trainer.fit`` saves, where it goes, and how a run resumes.

:class:`TrainingState` is everything ``fit`` must carry across an interruption (weights,
optimizer, epoch, early-stopping state, Keras' random state, the history so far) as one
``tf.train.Checkpoint``; :class:`Checkpoints` saves it to a folder and restores it from there.
:func:`checkpoint_dir` names the folder of one run (a key of the stage, its params, seed and
code), so a checkpoint is only ever resumed by the very run that wrote it, and
:func:`clear_checkpoints` removes it once the run finished.

With a ``tf.distribute`` strategy only the chief writes checkpoints; the other workers save to
temporary folders they remove, and all of them resume from the chief's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import tensorflow as tf

from stages.common.distribute import strategy_is_chief
from stages.common.early_stopping import BestWeights, EarlyStopping
from stages.common.outputs import clean_float, keep_folder
from stages.common.replicas import any_worker

log = logging.getLogger(__name__)


class History(list[dict[str, float]]):
    """One dict of logs per epoch, and ``best_epoch``: the epoch whose weights ``fit`` kept
    (the early-stopping monitor's best; without early stopping, the last epoch)."""

    best_epoch: int = 0


class TrainingState:
    """Everything ``fit`` must carry across an interruption, as one tf.train.Checkpoint."""

    def __init__(self, model: Any, optimizer: Any, early_stopping: EarlyStopping | None) -> None:
        self.model = model
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)  # epochs done
        self.finished = tf.Variable(False, trainable=False)
        self.best = BestWeights(model, early_stopping)
        self.history = History()
        # Keras keeps random state (a Dropout layer's seed generator) in variables outside
        # model.weights, which a checkpoint of the model does not save: without them a resumed
        # run would draw other dropout masks than an uninterrupted one.
        weight_ids = {id(w) for w in model.weights}
        self.random_state = [v for v in model.variables if id(v) not in weight_ids]
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            epoch=self.epoch,
            finished=self.finished,
            best_value=self.best.best_value,
            best_epoch=self.best.best_epoch,
            wait=self.best.wait,
            best_weights=self.best.best_weights,
            random_state=self.random_state,
        )

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


class Checkpoints:
    """``state`` saved in ``directory`` (at most one checkpoint kept) and restored from it at once.

    With a strategy every worker restores the chief's checkpoint (on several hosts: a shared
    folder), and a worker other than the chief saves to a temporary folder that :meth:`close` removes.
    """

    def __init__(self, state: TrainingState, directory: Path, strategy: tf.distribute.Strategy | None) -> None:
        self.state = state
        self.strategy = strategy
        self.save_dir = directory
        self.scratch: Path | None = None
        if strategy is None:
            self.manager = tf.train.CheckpointManager(state.checkpoint, str(directory), max_to_keep=1)
            state.restore(self.manager.latest_checkpoint, directory)
        else:
            if not strategy_is_chief(strategy):
                self.save_dir = self.scratch = Path(tempfile.mkdtemp(prefix="eager-pipeline-worker-checkpoints-"))
            self.manager = tf.train.CheckpointManager(state.checkpoint, str(self.save_dir), max_to_keep=1)
            state.restore(tf.train.latest_checkpoint(str(directory)), directory)

    def save_if(self, wanted: bool) -> bool:
        """Save now if ``wanted`` (with a strategy: if any worker wants to, so that they all take
        part in the same saves); return whether it saved."""
        if not any_worker(self.strategy, wanted):
            return False
        self.state.save(self.manager, self.save_dir)
        return True

    def close(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


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


def member_seeds(seed: int, ensemble: int) -> list[int]:
    """The seeds of an ensemble's networks: ``seed`` first, so ``ensemble: 1`` is the single network."""
    return [seed + k for k in range(ensemble)]


def member_checkpoints(ckpt: Path, k: int) -> Path:
    """Member ``k``'s resumable checkpoints: the run's folder for the first, a subfolder for the others."""
    return ckpt if k == 0 else ckpt / f"member-{k}"


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
