"""Helpers that several test files share (fixtures and scheduling live in conftest.py)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import run

DATA_TOPS = ("data", "metrics")


def read_report(root: Path, name: Path | str) -> dict:
    """A stage's JSON report (``metrics/...json``) in the project ``root``."""
    return json.loads((root / name).read_text())


def snapshot(root: Path, tops: tuple[str, ...] = DATA_TOPS) -> dict[str, bytes]:
    """Every file under the folders ``tops`` of ``root`` (data/ and metrics/ unless told), by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for top in tops
        for p in sorted((root / top).rglob("*"))
        if p.is_file()
    }


def interrupted_and_resumed(
    train_model: Callable[..., tuple[Any, list[dict]]], params: Any, data: Path, checkpoints: Path, seed: int = 7
) -> tuple[Any, list[dict], Any, list[dict], list[int]]:
    """A training stage's ``train_model`` three times on ``data``: uninterrupted (the reference), stopped by a
    KeyboardInterrupt at the end of epoch 1 with checkpoints in ``checkpoints``, then resumed from them.

    Returns the reference's trainer and history, the resumed run's trainer and history, and the epochs the
    resumed run trained (its ``on_epoch_end`` calls)."""
    reference, reference_history = train_model(params, seed, data, None)

    def interrupt(epoch: int, logs: dict) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(params, seed, data, checkpoints, on_epoch_end=interrupt)
    seen: list[int] = []
    resumed, history = train_model(params, seed, data, checkpoints, on_epoch_end=lambda epoch, logs: seen.append(epoch))
    return reference, reference_history, resumed, history, seen


# --- the real dvc CLI on a copy of the session's pipeline run (test_pipeline_dvc, test_experiments_dvc) ---

OUTPUT_ROOTS = ("data", "models", "metrics", "plots", "reports")


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def output_hashes(repo: Path) -> dict[str, str]:
    hashes = {}
    for root in OUTPUT_ROOTS:
        for file in sorted((repo / root).rglob("*")):
            name = file.relative_to(repo).as_posix()
            if file.is_file():
                hashes[name] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes


def dvc_status(repo: Path) -> set[str]:
    """Names of the stages `dvc status` reports as changed."""
    return set(json.loads(run(["dvc", "status", "--json"], repo).stdout or "{}"))


def stage_commands(repo: Path) -> dict[str, str]:
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return {stage.name: stage.cmd for stage in dvc_repo.index.stages}
