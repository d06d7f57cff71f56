"""The real `dvc` CLI on a copy of the project in a temporary git repository: what a fresh clone does.

One full pipeline run at the default params (about 5 minutes on 2 cores; the
session fixture ``pipeline_run`` in tests/conftest.py, whose outputs the model
tests use too) is copied once for the tests in this module (``repo``, tests/conftest.py); tests that
change a file put it back before they end. That first run is what a user's fresh clone does: it must
reproduce the committed metrics, plots and dvc.lock byte for byte. The workflow on top of it (params,
the gate, experiments, ``make real``): tests/test_experiments_dvc.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run
from helpers import dvc_status, output_hashes, ran_stages, stage_commands
from stage_imports import stage_code_files
from stages.common.cli import STARTUP_NOISE

pytestmark = pytest.mark.dvc

COMMITTED_OUTPUTS = ("metrics", "plots", "reports")  # in git beside dvc.lock


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
    assert dvc_status(repo) == set()


# The two longest stages (about 70 % of the pipeline's time) are left out of the forced rerun: the
# fresh-clone test above already compares their bytes with another run's (the committed dvc.lock), and
# test_numerics runs train_emotion_cnn twice and compares every output, SavedModel included.
NOT_FORCED = {"train_emotion_cnn", "train_sentiment_rnn"}


def test_repro_force_is_byte_identical(repo: Path) -> None:
    """Every other stage run again in place (`dvc repro -f`, outputs and caches present): the same bytes."""
    first = output_hashes(repo)
    order = ran_stages(run(["dvc", "repro", "-f", "--dry"], repo).stdout)  # --single-item keeps the targets' order
    forced_stages = [name for name in order if name not in NOT_FORCED]
    ran = ran_stages(run(["dvc", "repro", "-f", "--single-item", *forced_stages], repo).stdout)
    assert ran == forced_stages and set(order) == set(stage_commands(repo)) >= NOT_FORCED
    forced = output_hashes(repo)
    assert any(name.startswith("data/toy/") for name in forced)
    assert any(name.startswith("models/sentiment_ngram/saved_model/") for name in forced)
    assert first == forced


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
        assert dvc_status(repo) == importers
    finally:
        file.write_text(original)
    assert dvc_status(repo) == set()


def test_stage_log_has_no_tensorflow_start_up_lines(repo: Path) -> None:
    """Each stage's own lines stand alone: TensorFlow's start-up chatter is filtered (stages/common/cli.py)."""
    err = repo.with_name("first_run.err").read_text()
    assert [line for line in err.splitlines() if any(pattern in line for pattern in STARTUP_NOISE)] == []
    assert (
        "toy_data: moons: 100 rows" in err and "train_sentiment_rnn: test accuracy" in err
    )  # the stages' own lines pass


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
    assert dvc_status(clone) == set()
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
