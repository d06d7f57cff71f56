"""Params validation: one line naming the key, non-zero exit, earlier outputs untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import run
from stages.common.cli import StageError
from stages.common.params import Section, load_params
from stages.simple_nn import SimpleNNParams
from stages.toy_data import ToyDataParams


def write_params(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def params(workdir: Path) -> dict:
    return yaml.safe_load((workdir / "params.yaml").read_text())


def error_of(path: Path, section: str = "simple_nn", model=SimpleNNParams) -> str:
    with pytest.raises(StageError) as info:
        load_params(section, model, path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_params_load(workdir: Path) -> None:
    seed, p = load_params("simple_nn", SimpleNNParams, workdir / "params.yaml")
    assert seed == 42 and p.epochs == 500 and p.hidden_units == 10


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"epochs": -5}, "simple_nn.epochs: must be greater than or equal to 1 (got -5)"),
        ({"epochs": "500"}, "simple_nn.epochs: must be a valid integer (got '500')"),
        ({"epochs": 5.0}, "simple_nn.epochs: must be a valid integer (got 5.0)"),
        ({"learning_rate": 0}, "simple_nn.learning_rate: must be greater than 0 (got 0)"),
        ({"run_eagerly": "yes"}, "simple_nn.run_eagerly: must be a valid boolean (got 'yes')"),
        ({"epochz": 3}, "simple_nn.epochz: unknown key"),
    ],
)
def test_bad_value_names_the_key(workdir: Path, params: dict, change: dict, expected: str) -> None:
    params["simple_nn"].update(change)
    message = error_of(write_params(workdir / "params.yaml", params))
    assert message == f"{workdir / 'params.yaml'}: {expected}"


def test_missing_section_and_nested_key(workdir: Path, params: dict) -> None:
    del params["simple_nn"]
    assert error_of(write_params(workdir / "params.yaml", params)).endswith("simple_nn: missing section")
    params["toy_data"]["moons"]["noise"] = -1.0
    message = error_of(write_params(workdir / "params.yaml", params), "toy_data", ToyDataParams)
    assert message.endswith("toy_data.moons.noise: must be greater than or equal to 0 (got -1.0)")


def test_cross_field_check_and_seed(workdir: Path, params: dict) -> None:
    params["toy_data"]["moons"]["n_train"] = 100
    message = error_of(write_params(workdir / "params.yaml", params), "toy_data", ToyDataParams)
    assert message.endswith("toy_data.moons: n_train (100) must be smaller than n_samples (100)")
    params["seed"] = "42"
    assert "seed: must be an integer" in error_of(write_params(workdir / "params.yaml", params))


def test_invalid_yaml_names_the_line(workdir: Path) -> None:
    (workdir / "params.yaml").write_text("seed: 1\nsimple_nn:\n  epochs: [1,\n", encoding="utf-8")
    assert "params.yaml: line" in error_of(workdir / "params.yaml")


def test_stage_exits_nonzero_with_one_line_and_keeps_outputs(workdir: Path, params: dict) -> None:
    run(["python", "-m", "stages.toy_data"], workdir)
    before = {p: p.read_bytes() for p in (workdir / "data/toy").iterdir()}
    params["toy_data"]["regression"]["n_samples"] = -3
    write_params(workdir / "params.yaml", params)
    result = run(["python", "-m", "stages.toy_data"], workdir, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: toy_data.regression.n_samples: must be greater than or equal to 10 (got -3)"
    ]
    assert {p: p.read_bytes() for p in (workdir / "data/toy").iterdir()} == before


def test_impossible_unquoted_date_is_one_line(workdir: Path) -> None:
    (workdir / "params.yaml").write_text("seed: 1\nsimple_nn:\n  start: 2015-13-01\n", encoding="utf-8")
    assert "params.yaml: invalid value" in error_of(workdir / "params.yaml")


def test_a_float_without_a_dot_is_a_number(tmp_path: Path) -> None:
    """`dvc exp run -S simple_nn.learning_rate=1e-5` writes `1e-05`, which YAML 1.1 would read as a string."""
    path = tmp_path / "params.yaml"
    rest = "  hidden_units: 10\n  epochs: 500\n  batch_size: 100\n  run_eagerly: false\n"
    path.write_text(
        f"seed: 42\nsimple_nn:\n{rest}  learning_rate: 1e-05\n  checkpoint_every_s: 6E+1\n", encoding="utf-8"
    )
    _, p = load_params("simple_nn", SimpleNNParams, path)
    assert p.learning_rate == 1e-05 and p.checkpoint_every_s == 60.0
    path.write_text(  # quoted: still a string
        f"seed: 42\nsimple_nn:\n{rest}  learning_rate: '1e-05'\n  checkpoint_every_s: 60.0\n", encoding="utf-8"
    )
    assert "simple_nn.learning_rate: must be a valid number (got '1e-05')" in error_of(path)


# --- params.yaml is the one source of every default -------------------------------------------------


def params_sections() -> set[type[Section]]:
    """Every params model: the Section subclasses defined anywhere in ``stages`` (all of it imported)."""
    import importlib
    import pkgutil

    import stages

    for module in pkgutil.walk_packages(stages.__path__, "stages."):
        importlib.import_module(module.name)
    found: set[type[Section]] = set()
    todo = [Section]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub)
            todo.append(sub)
    return found


def test_no_params_field_has_a_default() -> None:
    """The models declare types and bounds; the values, defaults included, are params.yaml's alone."""
    sections = params_sections()
    names = {model.__name__ for model in sections}
    assert {"TrainingSection", "DistributeSection", "SimpleNNParams", "GateParams", "Bounds", "Synthetic"} <= names
    with_default = sorted(
        f"{model.__module__}.{model.__name__}.{name}"
        for model in sections
        for name, field in model.model_fields.items()
        if not field.is_required()
    )
    assert not with_default, f"a default belongs in params.yaml, not in the model: {with_default}"


@pytest.mark.parametrize(
    ("key", "model"),
    [
        ("train_load_rnn.patience", "stages.train_load_rnn:TrainLoadRnnParams"),
        ("train_load_rnn.run_eagerly", "stages.train_load_rnn:TrainLoadRnnParams"),  # a TrainingSection key
        ("fer2013.path", "stages.download_fer2013:Fer2013Params"),  # null in params.yaml, but required
        ("toy_data.moons.noise", "stages.toy_data:ToyDataParams"),  # in a sub-section
        ("gate.train_load_rnn.ceiling", "stages.gate:GateParams"),  # {}: no ceiling, said so
    ],
)
def test_a_missing_key_is_one_line_naming_the_file_and_key(workdir: Path, params: dict, key: str, model: str) -> None:
    import importlib

    module, name = model.split(":")
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    del node[last]
    path = write_params(workdir / "params.yaml", params)
    assert (
        error_of(path, key.split(".")[0], getattr(importlib.import_module(module), name))
        == f"{path}: {key}: missing key"
    )


def test_a_stage_stops_on_a_missing_key(workdir: Path, params: dict) -> None:
    del params["train_load_rnn"]["patience"]
    write_params(workdir / "params.yaml", params)
    result = run(["python", "-m", "stages.train_load_rnn"], workdir, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: params.yaml: train_load_rnn.patience: missing key"]


# --- the report's "params that differ" ---------------------------------------------------------------


def test_report_without_an_experiment_runs_at_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from stages import report

    monkeypatch.delenv(report.BASELINE_ENV, raising=False)
    assert report.baseline_params() is None
    params = {"seed": 1, "simple_nn": {"epochs": 5}}
    assert report.params_section(params, None)[2:] == ["None: every stage ran at its defaults.", "", "Seed: 1."]


def test_report_lists_what_an_experiment_changed_from_its_baseline() -> None:
    from stages.report import changed_params, params_section

    baseline = {
        "seed": 1,
        "simple_nn": {"epochs": 500, "learning_rate": 0.5},
        "metrics_demo": {"multiclass": {"hidden_units": [20, 10]}, "regression": {"epochs": 300}},
        "gate": {"train_load_rnn": {"floor": {"skill": 0.2}, "ceiling": {}}},
    }
    params = {
        "seed": 2,  # shown on its own line
        "simple_nn": {"epochs": 50, "learning_rate": 0.5},
        "metrics_demo": {"multiclass": {"hidden_units": [8]}, "regression": {"epochs": 300}},
        "gate": {"train_load_rnn": {"floor": {"skill": 0.2}, "ceiling": {"mape": 2.0}}},
    }
    assert changed_params(params, baseline) == [
        ("simple_nn.epochs", 50, 500),
        ("metrics_demo.multiclass.hidden_units", [8], [20, 10]),
        ("gate.train_load_rnn.ceiling", None, {}),
        ("gate.train_load_rnn.ceiling.mape", 2.0, None),
    ]
    assert changed_params(baseline, baseline) == []
    lines = params_section(params, baseline)
    assert "| `simple_nn.epochs` | 50 | 500 |" in lines and lines[-1] == "Seed: 2."


def test_report_reads_the_baseline_params_dvc_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dvc exp run` sets DVC_EXP_BASELINE_REV; the report reads that commit's params.yaml from git."""
    import subprocess

    from stages.common.cli import StageError
    from stages.report import BASELINE_ENV, baseline_params

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("seed: 42\nsimple_nn:\n  learning_rate: 1e-05\n", encoding="utf-8")
    git("add", "params.yaml")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "baseline")
    (tmp_path / "params.yaml").write_text("seed: 42\nsimple_nn:\n  learning_rate: 0.5\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(BASELINE_ENV, git("rev-parse", "HEAD").strip())
    assert baseline_params() == {"seed": 42, "simple_nn": {"learning_rate": 1e-05}}  # parsed as the stages parse it
    monkeypatch.setenv(BASELINE_ENV, "0" * 40)
    with pytest.raises(StageError, match=rf"^{BASELINE_ENV}: cannot read 0{{40}}:params.yaml \(fatal: "):
        baseline_params()


RECIPE_SECTIONS = {  # the params class each section of recipes/real-data.yaml configures
    "imdb": "stages.download_imdb:ImdbParams",
    "fer2013": "stages.download_fer2013:Fer2013Params",
    "series": "stages.make_series:SeriesParams",
    "tfrecords_series": "stages.tfrecords_series:TfrecordsSeriesParams",
    "train_load_rnn": "stages.train_load_rnn:TrainLoadRnnParams",
    "train_emotion_cnn": "stages.train_emotion_cnn:TrainEmotionCnnParams",
    "train_sentiment_rnn": "stages.train_sentiment_rnn:TrainSentimentRnnParams",
    "train_sentiment_ngram": "stages.train_sentiment_ngram:TrainSentimentNgramParams",
}


def test_the_real_data_recipe_is_valid_params(tmp_path: Path) -> None:
    """`make real` runs for hours: a misspelt key or a value out of bounds in its recipe must fail
    here, not when its stage starts after the ones before it have run."""
    import importlib

    root = Path(__file__).resolve().parents[1]
    merged = yaml.safe_load((root / "params.yaml").read_text())
    recipe = yaml.safe_load((root / "recipes/real-data.yaml").read_text())
    assert set(recipe) <= set(RECIPE_SECTIONS), f"a new section: add its params class to RECIPE_SECTIONS: {recipe}"
    for section, values in recipe.items():
        merged[section] = {**merged[section], **values}
    path = write_params(tmp_path / "params.yaml", merged)
    for section in recipe:
        module, name = RECIPE_SECTIONS[section].split(":")
        _, p = load_params(section, getattr(importlib.import_module(module), name), path)
        assert all(getattr(p, key) == value for key, value in recipe[section].items()), section
