"""The real `dvc` CLI on a copy of the project in a temporary git repository.

One full pipeline run is shared by the tests in this module (it costs about a
minute); tests that change a file put it back before they end.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import copy_project, run
from stage_imports import stage_code_files

pytestmark = pytest.mark.dvc

OUTPUT_ROOTS = ("data", "models", "metrics", "plots")
# TF's SavedModel embeds per-process object ids, so its bytes differ run to run
# (its predictions do not: save_restore checks them). Everything else must match.
NOT_BYTE_STABLE = ("models/save_restore/saved_model/", "models/emotion_cnn/saved_model/",
                   "models/sentiment_rnn/saved_model/")
# The long trainings are tested at full length by their own modules; here only DVC's
# bookkeeping is under test, and the pipeline runs three times, so they run briefly.
SHORT_TRAINING = {"train_load_rnn": {"max_epochs": 3}, "train_emotion_cnn": {"max_epochs": 1},
                  "train_sentiment_rnn": {"max_epochs": 1}}


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def output_hashes(repo: Path) -> dict[str, str]:
    hashes = {}
    for root in OUTPUT_ROOTS:
        for file in sorted((repo / root).rglob("*")):
            name = file.relative_to(repo).as_posix()
            if file.is_file() and not name.startswith(NOT_BYTE_STABLE):
                hashes[name] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes


def status(repo: Path) -> set[str]:
    """Names of the stages `dvc status` reports as changed."""
    return set(json.loads(run(["dvc", "status", "--json"], repo).stdout or "{}"))


def stage_commands(repo: Path) -> dict[str, str]:
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return {stage.name: stage.cmd for stage in dvc_repo.index.stages}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone of the project after its first `dvc repro`."""
    path = copy_project(tmp_path_factory.mktemp("pipeline") / "repo")
    params = yaml.safe_load((path / "params.yaml").read_text())
    for section, values in SHORT_TRAINING.items():
        if section in params:
            params[section] |= values
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run(["dvc", "repro"], path)
    path.joinpath("first_run.log").write_text(result.stdout)
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-qm", "first repro", "--allow-empty"], cwd=path, check=True)
    return path


def stages_with_cached_outs(repo: Path) -> set[str]:
    """Stages with an output in the DVC cache: a fresh clone lacks it, so they must run."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return {stage.name for stage in dvc_repo.index.stages if any(out.use_cache for out in stage.outs)}


def test_fresh_clone_runs_every_stage_and_second_repro_is_a_noop(repo: Path) -> None:
    ran = set(ran_stages((repo / "first_run.log").read_text()))
    # A stage whose outputs are all committed to git (plots only) and whose inputs come back
    # byte-identical is rightly up to date; every other stage must have run.
    assert stages_with_cached_outs(repo) <= ran <= set(stage_commands(repo))
    assert len(ran) >= len(stage_commands(repo)) - 1
    second = run(["dvc", "repro"], repo)
    assert ran_stages(second.stdout) == []
    assert status(repo) == set()


def test_repro_force_twice_is_byte_identical(repo: Path) -> None:
    first = output_hashes(repo)
    run(["dvc", "repro", "-f"], repo)
    forced = output_hashes(repo)
    run(["dvc", "repro", "-f"], repo)
    again = output_hashes(repo)
    assert any(name.startswith("data/toy/") for name in forced)
    assert any(name.startswith("metrics/") for name in forced)
    assert forced == again
    assert first == forced


def test_param_change_reruns_only_that_stage_and_metrics_diff_shows_it(repo: Path) -> None:
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["simple_nn"]["epochs"] = 50
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert status(repo) == {"simple_nn"}
        result = run(["dvc", "repro"], repo)
        assert ran_stages(result.stdout) == ["simple_nn"]
        diff = json.loads(run(["dvc", "metrics", "diff", "HEAD", "--json"], repo).stdout)
        changed = diff["metrics/simple_nn.json"]
        assert changed["epochs"] == {"old": 500, "new": 50, "diff": -450}
        assert changed["train_loss"]["new"] > changed["train_loss"]["old"]
        assert set(diff) == {"metrics/simple_nn.json"}
    finally:
        params_file.write_text(original)
        run(["dvc", "repro"], repo)


@pytest.mark.parametrize("module", ["stages/common/tabular.py", "stages/common/streaming_metrics.py",
                                    "stages/common/training.py"])
def test_shared_module_change_marks_exactly_its_importers_changed(repo: Path, module: str) -> None:
    importers = {name for name, cmd in stage_commands(repo).items() if module in stage_code_files(cmd)}
    assert importers, f"no stage imports {module}"
    file = repo / module
    original = file.read_text()
    file.write_text(original + "\n# an edit\n")
    try:
        assert status(repo) == importers
    finally:
        file.write_text(original)
    assert status(repo) == set()


def test_bad_params_fail_with_one_line_and_keep_outputs(repo: Path) -> None:
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    before = output_hashes(repo)
    cases = {
        "simple_nn.epochs: must be greater than or equal to 1 (got -5)": ("simple_nn", "epochs", -5),
        "simple_nn.epochs: must be a valid integer (got 'many')": ("simple_nn", "epochs", "many"),
        "simple_nn.momentum: unknown key": ("simple_nn", "momentum", 0.9),
    }
    try:
        for expected, (section, key, value) in cases.items():
            params = yaml.safe_load(original)
            params[section][key] = value
            params_file.write_text(yaml.safe_dump(params, sort_keys=False))
            result = run(["dvc", "repro"], repo, check=False)
            assert result.returncode != 0
            errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert errors == [f"error: params.yaml: {expected}"]
            assert output_hashes(repo) == before
        params = yaml.safe_load(original)
        del params["simple_nn"]
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        result = run(["python", "-m", "stages.simple_nn"], repo, check=False)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == "error: params.yaml: simple_nn: missing section"
        assert output_hashes(repo) == before
    finally:
        params_file.write_text(original)
    assert status(repo) == set()
