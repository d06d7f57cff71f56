"""Shared fixtures: the repository root, and running stages the way DVC does."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
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
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone of the project after its first `dvc repro` at the default params, committed, with
    the run's stdout, stderr and `git status --porcelain` beside it (first_run.log, .err, .status).

    Built once per `pytest` run, even on several xdist workers (the first to ask builds it under a lock,
    the others wait and reuse it): about 3 minutes on 2 cores. Read it, never change it: a test that
    changes it works on a copy (``clone_pipeline_run``, ``project_from_pipeline_run``)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # one folder per run of pytest
    home = shared / "pipeline_run"
    with (shared / "pipeline_run.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / "done").exists():
            shutil.rmtree(home, ignore_errors=True)  # what a failed build left
            path = copy_project(home / "repo")
            result = run(["dvc", "repro"], path, timeout=1800)  # 3 minutes on 2 cores, far more when shared
            (home / "first_run.log").write_text(result.stdout)
            (home / "first_run.err").write_text(result.stderr)
            changed = subprocess.run(
                ["git", "status", "--porcelain"], cwd=path, check=True, capture_output=True, text=True
            )
            (home / "first_run.status").write_text(changed.stdout)
            subprocess.run(["git", "add", "-A"], cwd=path, check=True)
            subprocess.run(["git", "commit", "-qm", "first repro", "--allow-empty"], cwd=path, check=True)
            (home / "done").touch()
    return home / "repo"


def clone_pipeline_run(pipeline_run: Path, dest: Path) -> Path:
    """A copy of the session's pipeline run (its git history, DVC cache and logs: nothing reruns) in
    ``dest``; the copied repository."""
    subprocess.run(["cp", "-a", str(pipeline_run.parent), str(dest)], check=True)
    return dest / pipeline_run.name


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, pipeline_run: Path) -> Path:
    """A fresh clone of the project after its first `dvc repro` (logs and `git status` beside it): a copy
    of the session's pipeline run, one per test module, which that module's tests may change."""
    return clone_pipeline_run(pipeline_run, tmp_path_factory.mktemp("pipeline") / "run")


def stage_outputs(stages: tuple[str, ...]) -> list[str]:
    """The outs, metrics and plots dvc.yaml declares for ``stages``."""
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    paths = []
    for stage in stages:
        for kind in ("outs", "metrics", "plots"):
            for entry in declared[stage].get(kind, []):
                paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


def project_from_pipeline_run(pipeline_run: Path, dest: Path, stages: tuple[str, ...]) -> Path:
    """A scratch project (params.yaml and the stages, as ``workdir``) holding what ``stages`` wrote in the
    session's pipeline run: the same as running them here, one after the other, at the default params
    (`dvc repro` runs the same commands on the same params.yaml; test_pipeline_dvc checks that its
    outputs are the committed ones), without training again."""
    files = [f for f in project_files() if f == "params.yaml" or f.startswith("stages/")]
    root = copy_project(dest, files)
    for name in stage_outputs(stages):
        source = pipeline_run / name
        assert source.exists(), f"the pipeline run has no {name}"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(source), str(root / name)], check=True)
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


@pytest.fixture(scope="session")
def emotion_cnn_project(tmp_path_factory: pytest.TempPathFactory, pipeline_run: Path) -> Path:
    """A project copy with the default FER2013 sample, its TFRecords, and train_emotion_cnn run once at its
    default params (shared by tests/test_emotion_cnn.py and tests/test_emotion_demo.py; taken from the
    session's pipeline run)."""
    return project_from_pipeline_run(
        pipeline_run,
        tmp_path_factory.mktemp("emotion_cnn") / "project",
        ("download_fer2013", "tfrecords_fer2013", "train_emotion_cnn"),
    )


# --- scheduling and selection -----------------------------------------------------------------------
# `make test` runs the suite on two pytest-xdist workers, a file at a time on one worker
# (`-n 2 --dist loadfile`: a module fixture is built once); `make test-fast` runs what is not marked
# `slow`, for the inner loop. (`--dist loadgroup` would group by xdist_group marks, but xdist 3.8
# marks a group by editing the item's node id, which pytest 9 no longer reads.)
#
# Files start in the order of FILE_ORDER, the longest first (measured), so that no long file starts
# last; the others follow in name order. While one worker builds the pipeline run (test_pipeline_dvc.py,
# first), the other runs files that do not need it; the files that do come after those.
FILE_ORDER = (
    "test_pipeline_dvc.py",
    "test_cross_cpu.py",
    "test_robustness.py",
    "test_distribute.py",
    "test_integrity.py",
    "test_export.py",
    "test_stage_log.py",
    "test_numerics.py",
    "test_download_imdb.py",
    "test_download_fer2013.py",
    "test_fer2013_images.py",
    "test_tfrecords_imdb.py",
    "test_tfrecords.py",
    "test_emotion_recipe.py",
    "test_training.py",
    # these use the pipeline run
    "test_experiments_dvc.py",
    "test_emotion_cnn.py",
    "test_sentiment_rnn.py",
    "test_sentiment_ngram.py",
    "test_train_load_rnn.py",
    "test_emotion_demo.py",
)
# `make test-fast` leaves out (marks slow) a test that uses a module or session fixture of the suite's
# own (a trained model, a pipeline run, converted records) or the dvc CLI, one that runs stages in a
# scratch project (SLOW_FIXTURES), and every test of SLOW_FILES: each of their tests starts stage
# processes (each `import tensorflow` is seconds), trains, or emulates CPUs. Single tests that take
# long (over 10 s on 2 busy cores, measured) carry @pytest.mark.slow themselves.
SLOW_FIXTURES = {"workdir", "http_server"}
SLOW_FILES = {
    "test_cross_cpu.py",
    "test_distribute.py",
    "test_export.py",
    "test_integrity.py",
    "test_numerics.py",
    "test_packaging.py",
    "test_pipeline_dvc.py",
    "test_robustness.py",
    "test_stage_log.py",
}


def uses_shared_fixture(item: pytest.Item) -> bool:
    """Whether ``item`` uses a fixture of module or session scope defined in tests/ (not pytest's own)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    tests_dir = Path(__file__).parent
    return any(
        definition.scope in ("module", "session") and Path(definition.func.__code__.co_filename).parent == tests_dir
        for name in info.names_closure
        for definition in info.name2fixturedefs.get(name, ())
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if (
            uses_shared_fixture(item)
            or item.get_closest_marker("dvc") is not None
            or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
            or item.path.name in SLOW_FILES
        ):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(FILE_ORDER)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order
