"""Shared fixtures: the repository root, and running stages the way DVC does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["DVC_NO_ANALYTICS"] = "1"
# Tests send SIGINT as a terminal's Ctrl-C would. A suite started as a background job of a
# non-interactive shell (`make test &`, `nohup ... &`) inherits SIGINT ignored, as does every stage
# it starts, which then ignores Ctrl-C and its parent watcher's interrupt: start from a terminal's.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def stage_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first, as `make` sets it."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    return env


def run(
    args: list[str], cwd: Path, check: bool = True, timeout: float = 600, env: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess:
    """Run a command in ``cwd`` (``env`` set in, or with None removed from, the environment); on an
    unexpected failure show its output."""
    environment = stage_env()
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    result = subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


def project_files() -> list[str]:
    """The files a fresh clone has: tracked plus new, not ignored."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in listing.split("\0") if f and (ROOT / f).is_file()]


def copy_project(dest: Path, files: list[str] | None = None) -> Path:
    """Copy the project (or some of its files) into ``dest`` as a fresh git repository."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in files if files is not None else project_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "config", "user.email", "tests@example.invalid"],
        ["git", "config", "user.name", "tests"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "project under test"],
    ):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


@pytest.fixture
def http_server():
    """A real file server on 127.0.0.1 (Range requests, injectable faults), stopped after the test."""
    from http_server import FileServer

    with FileServer() as server:
        yield server


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch copy of params.yaml and the stages, for running single stages."""
    files = [f for f in project_files() if f == "params.yaml" or f.startswith("stages/")]
    return copy_project(tmp_path / "project", files)


@pytest.fixture(scope="session")
def emotion_cnn_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy with the default FER2013 sample, its TFRecords, and train_emotion_cnn run once at its
    default params (shared by tests/test_emotion_cnn.py and tests/test_emotion_demo.py: ~2 minutes)."""
    files = [f for f in project_files() if f == "params.yaml" or f.startswith("stages/")]
    root = copy_project(tmp_path_factory.mktemp("emotion_cnn") / "project", files)
    for stage in ("download_fer2013", "tfrecords_fer2013", "train_emotion_cnn"):
        run(["python", "-m", f"stages.{stage}"], root)
    return root


_Model = TypeVar("_Model", bound=BaseModel)


def stage_params(section: str, model: type[_Model], **overrides: Any) -> _Model:
    """A stage's params as the repository's params.yaml sets them (the one source of every default):
    its ``section`` (dotted for a nested one, e.g. ``metrics_demo.multiclass``), with ``overrides``
    replacing keys, validated by ``model``."""
    from stages.common.params import read_params_file, validate

    node: Any = read_params_file(ROOT / "params.yaml")
    for part in section.split("."):
        node = node[part]
    return validate(model, {**node, **overrides}, section, ROOT / "params.yaml")
