"""Every stage declares all the code it runs, its params, and nothing missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from stage_imports import ROOT, stage_code_files


def dvc_stages() -> dict[str, Any]:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {stage.name: stage for stage in repo.index.stages}


STAGES = dvc_stages()


def test_pipeline_has_the_tutorial_stages() -> None:
    expected = {
        "toy_data",
        "simple_nn",
        "metrics_demo@multiclass",
        "metrics_demo@imbalanced",
        "metrics_demo@regression",
        "save_restore",
        "download_imdb",
        "download_fer2013",
        "make_series",
        "tfrecords_imdb",
        "tfrecords_fer2013",
        "tfrecords_series",
        "inspect_batches",
        "train_load_rnn",
        "train_emotion_cnn",
        "train_sentiment_rnn",
        "train_sentiment_ngram",
        "gate",
        "report",
    }
    assert expected <= set(STAGES)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_lists_every_module_it_imports(name: str) -> None:
    stage = STAGES[name]
    declared = {Path(str(dep.fs_path)).relative_to(ROOT).as_posix() for dep in stage.deps if not hasattr(dep, "params")}
    needed = stage_code_files(stage.cmd)
    missing = sorted(needed - declared)
    assert not missing, f"{name}: add to deps in dvc.yaml: {missing}"
    code_deps = {d for d in declared if d.startswith("stages/")}
    unused = sorted(code_deps - needed)
    assert not unused, f"{name}: deps in dvc.yaml that it does not import: {unused}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_exist_and_include_the_seed(name: str) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    keys = [key for dep in STAGES[name].deps if hasattr(dep, "params") for key in (dep.params or [])]
    assert "seed" in keys, f"{name}: every stage reads the global seed"
    for key in keys:
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{name}: params.yaml has no {key}"
            node = node[part]


def test_every_params_section_is_used_by_a_stage() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    used = {
        key.split(".")[0]
        for stage in STAGES.values()
        for dep in stage.deps
        if hasattr(dep, "params")
        for key in (dep.params or [])
    }
    assert set(params) - used == set(), "params.yaml sections no stage reads"


def test_report_runs_no_other_stage_code() -> None:
    """The report reads the other stages' files, not their code: a change to a stage's code does not
    re-run it (only the shared machinery in stages/common is allowed)."""
    code = stage_code_files("python -m stages.report")
    others = sorted(
        f for f in code if f not in ("stages/report.py", "stages/__init__.py") and not f.startswith("stages/common/")
    )
    assert not others, f"report: runs other stages' code: {others}"
    assert len(code) <= 10, sorted(code)  # ~42 when it imported every stage's params model
