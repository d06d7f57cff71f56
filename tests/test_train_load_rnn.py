"""Stage ``train_load_rnn`` (tutorial 09): baselines, inverse transform, resume, and the quality gate.

Window construction (no leakage across split boundaries, scaler fitted on train
only) is tested with the TFRecords stage in tests/test_tfrecords.py.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import project_from_pipeline_run, run, stage_params
from helpers import interrupted_and_resumed
from stages.common.checkpoints import member_checkpoints, member_seeds
from stages.common.cli import StageError
from stages.models.load_rnn import build_load_rnn
from stages.train_load_rnn import (
    TrainLoadRnnParams,
    day_profiles,
    evaluate_forecasts,
    evenly_spaced,
    inverse_transform,
    learning_rate,
    mae,
    mape,
    naive_last_week,
    naive_yesterday,
    skill,
)

START = dt.date(2021, 3, 1)


def profile(day: int) -> np.ndarray:
    """Hand-made load: day ``d`` hour ``h`` is ``1000 + 100 d + h`` MW."""
    return 1000.0 + 100.0 * day + np.arange(24)


def windows(first: int, last: int, look_back: int) -> dict[str, np.ndarray]:
    """The windows of a split holding days ``first..last``, as the TFRecords stage builds them."""
    targets = range(first + look_back, last + 1)
    return {
        "target_day": np.array([(START + dt.timedelta(days=d)).isoformat() for d in targets]),
        "inputs_mw": np.array([[profile(d - look_back + k) for k in range(look_back)] for d in targets]),
        "target_mw": np.array([profile(d) for d in targets]),
    }


# --- pure functions -------------------------------------------------------------------------------


def test_inverse_transform_uses_each_hours_mean_and_scale() -> None:
    scaler = {"mean": list(np.arange(24) * 10.0), "scale": list(np.arange(24) + 1.0)}
    scaled = np.array([np.ones(24), -np.ones(24)])
    mw = inverse_transform(scaled, scaler)
    np.testing.assert_allclose(mw[0], np.arange(24) * 10.0 + np.arange(24) + 1.0)
    np.testing.assert_allclose(mw[1], np.arange(24) * 10.0 - np.arange(24) - 1.0)
    roundtrip = (mw - np.array(scaler["mean"])) / np.array(scaler["scale"])
    np.testing.assert_allclose(roundtrip, scaled)


def test_naive_baselines_on_a_hand_made_series() -> None:
    test = windows(0, 19, look_back=3)  # target days 3..19
    profiles = day_profiles(test["target_day"], test["inputs_mw"], test["target_mw"])
    assert sorted(profiles) == [START + dt.timedelta(days=d) for d in range(20)]
    np.testing.assert_array_equal(profiles[START + dt.timedelta(days=4)], profile(4))

    yesterday = naive_yesterday(test["inputs_mw"])
    np.testing.assert_array_equal(yesterday, [profile(d - 1) for d in range(3, 20)])
    assert mae(test["target_mw"], yesterday) == pytest.approx(100.0)

    last_week = naive_last_week(test["target_day"], profiles)
    assert np.isnan(last_week[:4]).all()  # days 3..6: a week earlier is before the data
    np.testing.assert_array_equal(last_week[4:], [profile(d - 7) for d in range(7, 20)])
    assert mae(test["target_mw"][4:], last_week[4:]) == pytest.approx(700.0)


def test_errors_and_skill() -> None:
    actual = np.array([[100.0, 200.0], [400.0, 50.0]])
    assert mae(actual, actual + [[10, -10], [0, 20]]) == pytest.approx(10.0)
    assert mape(actual, actual * 1.1) == pytest.approx(10.0)
    assert skill(50.0, [100.0, 80.0]) == pytest.approx(1 - 50 / 80)
    assert skill(100.0, [100.0, 120.0]) == 0.0
    assert evenly_spaced(11, 6) == [0, 2, 4, 6, 8, 10]
    assert evenly_spaced(3, 6) == [0, 1, 2]


def test_all_test_metrics_use_the_same_days_and_reach_back_into_valid() -> None:
    look_back = 3
    scaler = {"mean": [1000.0] * 24, "scale": [100.0] * 24, "global": {"mean": 1500.0, "scale": 200.0}}
    valid, test = windows(0, 9, look_back), windows(10, 30, look_back)  # test targets: days 13..30
    test["target"] = (test["target_mw"] - 1000.0) / 100.0
    test["forecast_mw"] = test["target_mw"] - 20.0  # the operator: 20 MW too low ...
    test["forecast_mw"][[0, 5]] = np.nan  # ... and blank on two days (day 13, the first test day, is one)
    test["forecast_mw"][7, 3] = np.nan  # one blank hour also leaves a day out
    # A model that is exactly 50 MW too high on every hour.
    predicted_scaled = (test["target_mw"] + 50.0 - 1000.0) / 100.0
    metrics, keep, predicted_mw = evaluate_forecasts(predicted_scaled, test, valid, scaler)
    assert keep.all() and metrics["test_days"] == 18  # days 13..16 take last week from the valid windows
    np.testing.assert_allclose(predicted_mw, test["target_mw"] + 50.0)
    assert metrics["test_mae_mw"] == pytest.approx(50.0)
    assert metrics["test_mse_scaled"] == pytest.approx(0.25)
    assert metrics["test_rmse_mw"] == pytest.approx(50.0)
    assert metrics["test_mse_global_scaler"] == pytest.approx(50.0**2 / 200.0**2)  # MSE in MW / one global variance
    assert metrics["operator_forecast_days"] == 15  # 18 test days, 3 with a blank forecast hour
    assert metrics["operator_forecast_mae_mw"] == pytest.approx(20.0)
    kept = np.setdiff1d(np.arange(18), [0, 5, 7])
    assert metrics["operator_forecast_mape"] == pytest.approx(
        mape(test["target_mw"][kept], test["target_mw"][kept] - 20)
    )
    assert metrics["test_mae_mw_operator_days"] == pytest.approx(50.0)
    assert metrics["naive_yesterday_mae_mw"] == pytest.approx(100.0)
    assert metrics["naive_last_week_mae_mw"] == pytest.approx(700.0)
    assert metrics["skill_vs_best_naive"] == pytest.approx(0.5)

    # Without the valid days, the first 4 test days have no week-ago profile: dropped from every metric.
    empty = {k: v[:0] for k, v in valid.items()}
    metrics, keep, _ = evaluate_forecasts(predicted_scaled, test, empty, scaler)
    assert keep.tolist() == [False] * 4 + [True] * 14 and metrics["test_days"] == 14
    assert metrics["naive_last_week_mae_mw"] == pytest.approx(700.0)
    assert metrics["test_mae_mw"] == pytest.approx(50.0)
    assert metrics["operator_forecast_days"] == 12  # only kept days count: day 13 (dropped) no longer among them

    # An export without the forecast column: the operator baseline is null, the rest unchanged.
    test["forecast_mw"] = np.full_like(test["target_mw"], np.nan)
    metrics, _, _ = evaluate_forecasts(predicted_scaled, test, valid, scaler)
    assert metrics["operator_forecast_days"] == 0
    assert metrics["operator_forecast_mae_mw"] is None and metrics["operator_forecast_mape"] is None
    assert metrics["test_mae_mw"] == pytest.approx(50.0)


def test_calendar_model_keeps_the_tutorials_layers() -> None:
    p = stage_params("train_load_rnn", TrainLoadRnnParams)
    with_calendar = build_load_rnn(5, lstm_units=p.lstm_units, dense_units=p.dense_units, n_calendar=10)
    plain = build_load_rnn(5, lstm_units=p.lstm_units, dense_units=p.dense_units)
    for model in (with_calendar, plain):
        layers = {layer.name: layer for layer in model.layers}
        assert layers["lstm"].units == 16 and layers["hidden"].units == 16 and layers["next_day"].units == 24
    # The calendar adds 10 inputs per LSTM step and 10 to the hidden layer's input: nothing else.
    lstm_extra = 4 * 16 * 10
    assert with_calendar.count_params() - plain.count_params() == lstm_extra + 16 * 10
    out = with_calendar({"days": np.zeros((2, 5, 24), np.float32), "calendar": np.zeros((2, 6, 10), np.float32)})
    assert tuple(out.shape) == (2, 24)


def test_ensemble_seeds_checkpoints_and_schedule_params() -> None:
    assert member_seeds(42, 1) == [42]  # ensemble: 1 is the single network of the run's seed
    assert member_seeds(42, 3) == [42, 43, 44]
    assert member_checkpoints(Path("ck"), 0) == Path("ck") and member_checkpoints(Path("ck"), 2) == Path("ck/member-2")
    with pytest.raises(StageError, match="ensemble"):
        stage_params("train_load_rnn", TrainLoadRnnParams, ensemble=0)
    with pytest.raises(StageError, match="lr_schedule"):
        stage_params("train_load_rnn", TrainLoadRnnParams, lr_schedule="step")
    spec = {"splits": {"train": {"examples": 130}}}
    assert learning_rate(stage_params("train_load_rnn", TrainLoadRnnParams, learning_rate=0.02), spec) == 0.02
    cosine = learning_rate(
        stage_params("train_load_rnn", TrainLoadRnnParams, learning_rate=0.02, lr_schedule="cosine", max_epochs=10),
        spec,
    )
    assert cosine.decay_steps == 10 * 3  # 130 windows in batches of 64: 3 steps an epoch
    assert float(cosine(0)) == pytest.approx(0.02) and float(cosine(30)) == pytest.approx(0.0, abs=1e-9)


# --- the stage on the default synthetic series ------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, pipeline_run: Path) -> Path:
    """A project copy with the default synthetic series, its TFRecords, and the stage run once at default
    params (what the session's pipeline run wrote: tests/conftest.py)."""
    return project_from_pipeline_run(
        pipeline_run,
        tmp_path_factory.mktemp("load_rnn") / "project",
        ("make_series", "tfrecords_series", "train_load_rnn"),
    )


def test_stage_beats_the_seasonal_naive_baselines(project: Path) -> None:
    metrics = json.loads((project / "metrics/load_forecast.json").read_text())
    assert metrics["skill_vs_best_naive"] > 0.2, metrics  # the quality gate
    for key in (
        "test_rmse_mw",
        "test_mse_global_scaler",
        "valid_mae_mw",
        "operator_forecast_mae_mw",
        "operator_forecast_mape",
        "test_mae_mw_operator_days",
    ):
        assert np.isfinite(metrics[key]) and metrics[key] > 0, key
    assert 0 < metrics["operator_forecast_days"] <= metrics["test_days"]
    assert metrics["operator_forecast_mape"] < 3.0  # the sample's forecast: actual x (1 + ~1.5 % AR(1) noise)
    assert metrics["test_mae_mw"] < min(metrics["naive_yesterday_mae_mw"], metrics["naive_last_week_mae_mw"])
    spec = json.loads((project / "data/tfrecords/series/spec.json").read_text())
    assert metrics["test_days"] == spec["splits"]["test"]["examples"]  # every test day is scored
    assert 1 <= metrics["best_epoch"] <= metrics["epochs"] <= 100
    history = (project / "plots/train_load_rnn/history.tsv").read_text().splitlines()
    assert history[0] == "epoch\tloss\tval_loss" and len(history) == metrics["epochs"] + 1
    best_val = float(history[metrics["best_epoch"]].split("\t")[2])
    assert metrics["valid_mse_scaled"] == pytest.approx(best_val, rel=1e-4)  # the best weights were restored
    assert (project / "plots/train_load_rnn/forecast_days.png").stat().st_size > 0
    assert (project / "models/load_rnn/model.weights.h5").stat().st_size > 0
    assert not [p for p in (project / "checkpoints/train_load_rnn").iterdir() if p.name != "README.txt"]


def test_interrupted_training_resumes_to_the_same_weights(project: Path, tmp_path: Path) -> None:
    from stages.train_load_rnn import train_model

    data = project / "data/tfrecords/series"
    p = stage_params("train_load_rnn", TrainLoadRnnParams, max_epochs=3, patience=10, checkpoint_every_s=0.0)
    reference, reference_history, resumed, history, seen = interrupted_and_resumed(train_model, p, data, tmp_path)
    assert seen == [2]  # only the missing epoch ran
    for a, b in zip(history, reference_history, strict=True):
        # The resumed epochs' logs come from the checkpoint's history.json, rounded to 6 decimals.
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6, abs=1e-6)
    for a, b in zip(resumed.model.weights, reference.model.weights, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, atol=1e-7)


def set_params(root: Path, **sections: dict) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section] = {**params[section], **values}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_ensemble_with_a_richer_calendar_is_deterministic(project: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(project, root, symlinks=True)
    set_params(root, tfrecords_series={"day_of_year": True, "regional_holidays": True})
    set_params(root, train_load_rnn={"ensemble": 2, "max_epochs": 2, "lr_schedule": "cosine"})
    run(["python", "-m", "stages.tfrecords_series"], root)
    spec = json.loads((root / "data/tfrecords/series/spec.json").read_text())
    assert spec["calendar"]["features"][-3:] == ["year_cos", "year_sin", "regional_holiday_share"]
    assert spec["features"]["calendar"]["shape"] == [(spec["look_back"] + 1) * 13]
    run(["python", "-m", "stages.train_load_rnn"], root)
    first = (root / "metrics/load_forecast.json").read_bytes()
    metrics = json.loads(first)
    assert len(metrics["member_valid_mape"]) == len(metrics["member_test_mape"]) == 2
    assert metrics["member_valid_mape"][0] != metrics["member_valid_mape"][1]  # two seeds, two networks
    # The mean forecast's absolute errors are at most the members' mean (the triangle inequality).
    assert metrics["valid_mape"] <= np.mean(metrics["member_valid_mape"]) + 1e-9
    assert metrics["test_mape"] <= np.mean(metrics["member_test_mape"]) + 1e-9
    assert metrics["member_best_epoch"][0] == metrics["best_epoch"] and metrics["epochs"] <= 2
    assert (root / "models/load_rnn/member-1.weights.h5").stat().st_size > 0
    run(["python", "-m", "stages.train_load_rnn"], root)
    assert (root / "metrics/load_forecast.json").read_bytes() == first  # the same seeds, the same bytes


def test_bad_ensemble_fails_in_one_line_and_keeps_outputs(project: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(project, root, symlinks=True)
    before = (root / "metrics/load_forecast.json").read_bytes()
    set_params(root, train_load_rnn={"ensemble": 0})
    result = run(["python", "-m", "stages.train_load_rnn"], root, check=False)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "train_load_rnn.ensemble" in result.stderr
    assert (root / "metrics/load_forecast.json").read_bytes() == before
