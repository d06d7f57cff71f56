"""The real `dvc` workflow on a copy of the session's pipeline run (``repo``, tests/conftest.py): a param
change and `dvc metrics diff`, bad params, the quality gate, the report, queued experiments side by side,
and `make real`'s experiment. Tests that change a file put it back before they end.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import run
from helpers import dvc_status, output_hashes, ran_stages

pytestmark = pytest.mark.dvc


def test_param_change_reruns_only_that_stage_and_metrics_diff_shows_it(repo: Path) -> None:
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["simple_nn"]["epochs"] = 50
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert dvc_status(repo) == {"simple_nn", "report"}  # the report lists params that differ from the defaults
        result = run(["dvc", "repro"], repo)
        assert ran_stages(result.stdout) == ["simple_nn", "gate", "report"]  # and what reads its metrics
        diff = json.loads(run(["dvc", "metrics", "diff", "HEAD", "--json"], repo).stdout)
        changed = diff["metrics/simple_nn.json"]
        assert changed["epochs"] == {"old": 500, "new": 50, "diff": -450}
        assert changed["train_loss"]["new"] > changed["train_loss"]["old"]
        assert set(diff) == {"metrics/simple_nn.json"}  # (gate.json: its pass/fail counts are the same)
    finally:
        params_file.write_text(original)
        run(["dvc", "repro"], repo)


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
    assert dvc_status(repo) == set()


def set_params(repo: Path, changes: dict[str, object]) -> None:
    """``{"a.b": value}`` into params.yaml."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def gate_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("gate:")]


def test_gate_stops_repro_on_a_regressed_model_and_passes_once_restored(repo: Path) -> None:
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    before = output_hashes(repo)
    try:
        set_params(repo, {"simple_nn.epochs": 1})  # a barely trained model
        result = run(["dvc", "repro"], repo, check=False)
        assert result.returncode != 0
        assert ran_stages(result.stdout)[-2:] == ["simple_nn", "gate"]  # the report does not run
        loss = json.loads((repo / "metrics/simple_nn.json").read_text())["train_loss"]
        assert gate_lines(result.stderr) == [
            f"gate: simple_nn metrics/simple_nn.json train_loss {loss:g} > ceiling 0.3"
        ]
        record = json.loads((repo / "metrics/gate.json").read_text())  # written: the record of why
        assert record["passed"] is False and record["checks_failed"] == 1

        # A floor raised above the value fails too (the model itself unchanged).
        params_file.write_text(original)
        set_params(repo, {"gate.train_emotion_cnn.floor.test_accuracy": 0.99})
        result = run(["dvc", "repro"], repo, check=False)
        assert result.returncode != 0
        accuracy = json.loads((repo / "metrics/emotion_cnn.json").read_text())["test_accuracy"]
        assert gate_lines(result.stderr) == [
            f"gate: train_emotion_cnn metrics/emotion_cnn.json test_accuracy {accuracy:g} < floor 0.99"
        ]
    finally:
        params_file.write_text(original)
    result = run(["dvc", "repro"], repo)
    assert gate_lines(result.stderr) == [
        f"gate: all {len(json.loads((repo / 'metrics/gate.json').read_text())['checks'])} checks passed"
    ]
    assert output_hashes(repo) == before
    assert dvc_status(repo) == set()


def test_report_names_every_metrics_file_links_the_plots_and_repeats_byte_for_byte(repo: Path) -> None:
    summary = repo / "reports/summary.md"
    first = summary.read_bytes()
    text = first.decode()
    for file in sorted((repo / "metrics").glob("*.json")):
        assert f"metrics/{file.name}" in text, file.name
    links = re.findall(r"\]\(\.\./(plots/[^)]+\.png)\)", text)
    assert links and all((repo / link).is_file() for link in links)
    assert sorted(links) == sorted(p.relative_to(repo).as_posix() for p in (repo / "plots").rglob("*.png"))
    assert "Quality gate: **passed**" in text and "**FAIL**" not in text
    assert "None: every stage ran at its defaults." in text
    run(["python", "-m", "stages.report"], repo)
    assert summary.read_bytes() == first
    assert dvc_status(repo) == set()


def find_experiments(tree: object, names: set[str]) -> dict[str, dict]:
    """The entries of `dvc exp show --json` named in ``names`` (wherever DVC nests them)."""
    found: dict[str, dict] = {}
    if isinstance(tree, dict):
        if tree.get("name") in names and isinstance(tree.get("data"), dict):
            found[tree["name"]] = tree["data"]
        for value in tree.values():
            found.update(find_experiments(value, names))
    elif isinstance(tree, list):
        for value in tree:
            found.update(find_experiments(value, names))
    return found


def test_queued_experiments_show_side_by_side_and_apply(repo: Path) -> None:
    """`dvc exp run --queue -S`, `dvc queue start`, `dvc exp show`, `dvc exp apply`: the README's workflow."""
    names = {"epochs50": 50, "epochs60": 60}
    try:
        for name, epochs in names.items():
            run(["dvc", "exp", "run", "--queue", "--name", name, "-S", f"simple_nn.epochs={epochs}"], repo)
        run(["dvc", "queue", "start"], repo)
        deadline = time.monotonic() + 600
        while True:
            rows = [line.split() for line in run(["dvc", "queue", "status"], repo).stdout.splitlines()]
            states = {row[1]: row[-1] for row in rows if len(row) >= 3 and row[1] in names}
            if len(states) == len(names) and all(s in ("Success", "Failed") for s in states.values()):
                break
            assert time.monotonic() < deadline, f"queue still busy: {states}"
            time.sleep(3)
        logs = run(["dvc", "queue", "logs", "epochs50"], repo, check=False).stdout
        assert states == {name: "Success" for name in names}, logs
        assert ran_stages(logs) == ["simple_nn", "gate", "report"], logs  # only what the param changes

        shown = find_experiments(json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout), set(names))
        assert set(shown) == set(names)
        for name, epochs in names.items():
            params = shown[name]["params"]["params.yaml"]["data"]
            metrics = shown[name]["metrics"]
            assert params["simple_nn"]["epochs"] == epochs
            assert metrics["metrics/simple_nn.json"]["data"]["epochs"] == epochs
            assert metrics["metrics/gate.json"]["data"]["passed"] is True

        run(["dvc", "exp", "apply", "epochs60"], repo)
        assert yaml.safe_load((repo / "params.yaml").read_text())["simple_nn"]["epochs"] == 60
        applied = json.loads((repo / "metrics/simple_nn.json").read_text())
        assert applied["epochs"] == 60 and applied["train_loss"] > 0.1  # not the 500-epoch model's 0.03
        assert dvc_status(repo) == set()  # the experiment's outputs came with it
    finally:
        run(["dvc", "queue", "stop"], repo, check=False)
        subprocess.run(["git", "checkout", "--", "."], cwd=repo, check=True)
        run(["dvc", "checkout"], repo)
    assert yaml.safe_load((repo / "params.yaml").read_text())["simple_nn"]["epochs"] == 500
    assert dvc_status(repo) == set()


def test_real_data_command_runs_an_experiment_and_keeps_its_results(repo: Path, tmp_path: Path) -> None:
    """`make real`'s command with a tiny recipe: a DVC experiment beside the workspace, its results kept."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("simple_nn:\n  epochs: 40\n")
    kept = tmp_path / "results"
    command = [
        "python",
        "-m",
        "stages.apps.real_data",
        "--recipe",
        str(recipe),
        "--name",
        "tiny",
        "--results",
        str(kept),
    ]
    result = run(command, repo)
    assert ran_stages(result.stdout) == ["simple_nn", "gate", "report"]
    assert json.loads((kept / "metrics/simple_nn.json").read_text())["epochs"] == 40
    assert yaml.safe_load((kept / "params.yaml").read_text())["simple_nn"]["epochs"] == 40
    assert yaml.safe_load((kept / "recipe.yaml").read_text()) == {"simple_nn.epochs": 40}
    assert "simple_nn" in (kept / "reports/summary.md").read_text()  # the page a person reads
    info = json.loads((kept / "run.json").read_text())
    assert set(info["stage_seconds"]) == {"simple_nn", "gate", "report"} and info["machine"]["cores"]
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert info["baseline_rev"] == head  # the experiment's parent: the code it ran
    assert any(
        name.startswith("plots/simple_nn/") for name in (p.relative_to(kept).as_posix() for p in kept.rglob("*.png"))
    )
    # The workspace keeps the default run; the experiment is listed beside it.
    assert yaml.safe_load((repo / "params.yaml").read_text())["simple_nn"]["epochs"] == 500
    assert dvc_status(repo) == set()
    assert '"tiny"' in run(["dvc", "exp", "show", "--json"], repo).stdout
    # The same name again on a later commit (a second run the same day): this run's experiment is kept,
    # and so is the folder's README (a person's notes); the rest of the folder is replaced.
    (kept / "README.md").write_text("# notes on the runs\n")
    (kept / "stale.json").write_text("{}")
    run(["git", "commit", "-qm", "a later commit", "--allow-empty"], repo)
    run(command, repo)
    later = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert json.loads((kept / "run.json").read_text())["baseline_rev"] == later != head
    assert (kept / "README.md").read_text() == "# notes on the runs\n" and not (kept / "stale.json").exists()
