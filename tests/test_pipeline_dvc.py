"""The real `dvc` CLI on a copy of the project in a temporary git repository.

One full pipeline run at the default params (about 3 minutes on 2 cores; the
session fixture ``pipeline_run`` in tests/conftest.py, whose outputs the model
tests use too) is copied once for the tests in this module; tests that change a
file put it back before they end. That first run is what a user's fresh clone does: it must
reproduce the committed metrics, plots and dvc.lock byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, clone_pipeline_run, run
from stage_imports import stage_code_files
from stages.common.cli import STARTUP_NOISE

pytestmark = pytest.mark.dvc

OUTPUT_ROOTS = ("data", "models", "metrics", "plots", "reports")
COMMITTED_OUTPUTS = ("metrics", "plots", "reports")  # in git beside dvc.lock


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


def status(repo: Path) -> set[str]:
    """Names of the stages `dvc status` reports as changed."""
    return set(json.loads(run(["dvc", "status", "--json"], repo).stdout or "{}"))


def stage_commands(repo: Path) -> dict[str, str]:
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return {stage.name: stage.cmd for stage in dvc_repo.index.stages}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, pipeline_run: Path) -> Path:
    """A fresh clone of the project after its first `dvc repro` (logs and `git status` beside it): a copy
    of the session's pipeline run (tests/conftest.py), which the tests here may change."""
    return clone_pipeline_run(pipeline_run, tmp_path_factory.mktemp("pipeline") / "run")


def stages_with_cached_outs(repo: Path) -> set[str]:
    """Stages with an output in the DVC cache: a fresh clone lacks it, so they must run."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return {stage.name for stage in dvc_repo.index.stages if any(out.use_cache for out in stage.outs)}


def flat(data: object, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(data, dict):
        return {prefix: data}
    items: dict[str, object] = {}
    for key, value in data.items():
        items.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return items


def test_fresh_clone_reproduces_the_committed_metrics_plots_and_lock(repo: Path) -> None:
    problems = []
    committed = {name: digest for name, digest in output_hashes(ROOT).items() if name.startswith(COMMITTED_OUTPUTS)}
    fresh = {name: digest for name, digest in output_hashes(repo).items() if name.startswith(COMMITTED_OUTPUTS)}
    for name in sorted(committed.keys() | fresh.keys()):
        if committed.get(name) == fresh.get(name):
            continue
        if name.endswith(".json") and name in committed and name in fresh:
            old, new = (flat(json.loads(root.joinpath(name).read_text())) for root in (ROOT, repo))
            keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            problems.append(f"{name}: " + ", ".join(f"{k} committed {old.get(k)!r} fresh {new.get(k)!r}" for k in keys))
        else:
            problems.append(
                f"{name}: {'missing' if name not in fresh else 'new' if name not in committed else 'differs'}"
            )
    assert not problems, "a fresh clone's `dvc repro` does not reproduce the committed files:\n" + "\n".join(problems)
    assert (repo / "dvc.lock").read_bytes() == (ROOT / "dvc.lock").read_bytes()
    assert repo.with_name("first_run.status").read_text() == ""


def test_fresh_clone_runs_every_stage_and_second_repro_is_a_noop(repo: Path) -> None:
    ran = set(ran_stages(repo.with_name("first_run.log").read_text()))
    # A stage whose outputs are all committed to git (plots only) and whose inputs come back
    # byte-identical is rightly up to date; every other stage must have run.
    # (inspect_batches, gate and report write only such files.)
    assert stages_with_cached_outs(repo) <= ran <= set(stage_commands(repo))
    second = run(["dvc", "repro"], repo)
    assert ran_stages(second.stdout) == []
    assert status(repo) == set()


def test_repro_force_is_byte_identical(repo: Path) -> None:
    first = output_hashes(repo)
    run(["dvc", "repro", "-f"], repo)
    forced = output_hashes(repo)
    assert any(name.startswith("data/toy/") for name in forced)
    assert any(name.startswith("models/emotion_cnn/saved_model/") for name in forced)
    assert first == forced


def test_param_change_reruns_only_that_stage_and_metrics_diff_shows_it(repo: Path) -> None:
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["simple_nn"]["epochs"] = 50
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert status(repo) == {"simple_nn", "report"}  # the report lists params that differ from the defaults
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


@pytest.mark.parametrize(
    "module", ["stages/datasets/tabular.py", "stages/common/streaming_metrics.py", "stages/common/training.py"]
)
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


def test_stage_log_has_no_tensorflow_start_up_lines(repo: Path) -> None:
    """Each stage's own lines stand alone: TensorFlow's start-up chatter is filtered (stages/common/cli.py)."""
    err = repo.with_name("first_run.err").read_text()
    assert [line for line in err.splitlines() if any(pattern in line for pattern in STARTUP_NOISE)] == []
    assert (
        "toy_data: moons: 100 rows" in err and "train_sentiment_rnn: test accuracy" in err
    )  # the stages' own lines pass


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
    assert status(repo) == set()


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
    assert status(repo) == set()


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
        assert status(repo) == set()  # the experiment's outputs came with it
    finally:
        run(["dvc", "queue", "stop"], repo, check=False)
        subprocess.run(["git", "checkout", "--", "."], cwd=repo, check=True)
        run(["dvc", "checkout"], repo)
    assert yaml.safe_load((repo / "params.yaml").read_text())["simple_nn"]["epochs"] == 500
    assert status(repo) == set()


MODEL_SECTIONS = (
    "distribute",
    "simple_nn",
    "metrics_demo.multiclass",
    "metrics_demo.imbalanced",
    "metrics_demo.regression",
    "save_restore",
    "train_load_rnn",
    "train_emotion_cnn",
    "train_sentiment_rnn",
    "train_sentiment_ngram",
    "gate",
)


@pytest.mark.parametrize("section", MODEL_SECTIONS)
def test_every_model_param_can_be_set_with_exp_run_set_param(section: str, tmp_path: Path) -> None:
    """`dvc exp run -S key=value` (DVC's own override code) gives each stage the type its params model wants."""
    from dvc.utils.hydra import apply_overrides
    from pydantic import BaseModel

    from stages.apps.real_data import flatten as flatten_params, set_param_args
    from stages.common.distribute import DistributeSection
    from stages.common.params import read_params_file
    from stages.gate import GateParams
    from stages.metrics_demo import ProblemParams
    from stages.save_restore import SaveRestoreParams
    from stages.simple_nn import SimpleNNParams
    from stages.train_emotion_cnn import TrainEmotionCnnParams
    from stages.train_load_rnn import TrainLoadRnnParams
    from stages.train_sentiment_ngram import TrainSentimentNgramParams
    from stages.train_sentiment_rnn import TrainSentimentRnnParams

    models: dict[str, type[BaseModel]] = {
        "distribute": DistributeSection,
        "simple_nn": SimpleNNParams,
        "metrics_demo.multiclass": ProblemParams,
        "metrics_demo.imbalanced": ProblemParams,
        "metrics_demo.regression": ProblemParams,
        "save_restore": SaveRestoreParams,
        "train_load_rnn": TrainLoadRnnParams,
        "train_emotion_cnn": TrainEmotionCnnParams,
        "train_sentiment_rnn": TrainSentimentRnnParams,
        "train_sentiment_ngram": TrainSentimentNgramParams,
        "gate": GateParams,
    }
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    node = params
    for part in section.split("."):
        node = node[part]
    model = models[section]
    for key, value in flatten_params(node).items():  # each param, typed as a user would type it
        copy = tmp_path / "params.yaml"
        copy.write_text((ROOT / "params.yaml").read_text())
        changed = value
        if isinstance(value, float) and 0 < value < 1:  # rates and momenta: halved, doubling may leave [0, 1)
            changed = value / 2
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            changed = value * 2
        args = set_param_args({f"{section}.{key}": changed})
        apply_overrides(copy, [args[1]])
        result = read_params_file(copy)  # as the stage reads it
        for part in section.split("."):
            result = result[part]
        validated = model.model_validate(result)  # strict: a string where a number belongs would fail here
        assert flatten_params(validated.model_dump())[key] == changed, (key, args[1])


def test_the_docs_show_the_current_dag() -> None:
    readme = (ROOT / "docs" / "pipeline.md").read_text()
    block = re.search(r"```mermaid\n(.*?)```", readme, re.S)
    assert block, "docs/pipeline.md: no ```mermaid block"
    dag = run(["dvc", "dag", "--mermaid"], ROOT).stdout
    assert block.group(1).strip() == dag.strip(), "docs/pipeline.md's DAG is stale: paste `dvc dag --mermaid` into it"


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
    assert status(repo) == set()
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


def test_remote_push_then_pull_into_a_fresh_clone_runs_nothing(repo: Path, tmp_path: Path) -> None:
    """The DVC way to share outputs: push to a remote (a local folder here), pull in another clone."""
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "--default", "shared", str(remote)], repo)
    subprocess.run(["git", "commit", "-qam", "a DVC remote"], cwd=repo, check=True)
    run(["dvc", "push"], repo)
    assert any(remote.rglob("*")), "dvc push sent nothing"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    assert not (clone / "models").exists()
    run(["dvc", "pull"], clone)
    assert status(clone) == set()
    assert ran_stages(run(["dvc", "repro"], clone).stdout) == []
    assert output_hashes(clone) == output_hashes(repo)

    # The pulled models serve, with nothing but TensorFlow, in a process of their own.
    check = (
        "import numpy as np, tensorflow as tf\n"
        "cnn = tf.saved_model.load('models/emotion_cnn/saved_model')\n"
        "p = cnn.serve(tf.zeros([2, 48, 48, 1], tf.uint8))['probabilities'].numpy()\n"
        "assert p.shape == (2, 7) and np.allclose(p.sum(1), 1, atol=1e-5)\n"
        "rnn = tf.saved_model.load('models/sentiment_rnn/saved_model')\n"
        "q = rnn.serve(tf.constant([[5, 6, 2]], tf.int64), tf.constant([3], tf.int64))['probabilities'].numpy()\n"
        "assert q.shape == (1, 2)\n"
        "ngram = tf.saved_model.load('models/sentiment_ngram/saved_model')\n"
        "n = ngram.serve(tf.constant([[5, 6, 2]], tf.int64), tf.constant([3], tf.int64))['probabilities'].numpy()\n"
        "assert n.shape == (1, 2)\n"
        "moons = tf.saved_model.load('models/save_restore/saved_model')\n"
        "assert moons.serve(tf.zeros([3, 2])).shape == (3, 2)\n"
        "print('served')\n"
    )
    assert run(["python", "-c", check], clone).stdout.strip().endswith("served")
