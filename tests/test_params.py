"""Params validation: one line naming the key, non-zero exit, earlier outputs untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import run
from stages.common.cli import StageError
from stages.common.params import load_params
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
    path.write_text("seed: 42\nsimple_nn:\n  learning_rate: 1e-05\n  checkpoint_every_s: 6E+1\n", encoding="utf-8")
    _, p = load_params("simple_nn", SimpleNNParams, path)
    assert p.learning_rate == 1e-05 and p.checkpoint_every_s == 60.0
    path.write_text("seed: 42\nsimple_nn:\n  learning_rate: '1e-05'\n", encoding="utf-8")  # quoted: still a string
    assert "simple_nn.learning_rate: must be a valid number (got '1e-05')" in error_of(path)
