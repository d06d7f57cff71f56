"""The quality gate's comparisons, on hand-made metrics files (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run
from stages.gate import METRICS_FILES, GateParams, check, describe

GOOD = {
    "metrics/simple_nn.json": {"train_loss": 0.03, "train_accuracy": 1.0},
    "metrics/metrics_demo_multiclass.json": {"train_loss": 0.03, "test_accuracy": 0.96, "test_macro_f1": 0.96},
    "metrics/metrics_demo_imbalanced.json": {"train_loss": 0.09, "test_roc_auc": 0.94, "test_macro_f1": 0.79},
    "metrics/metrics_demo_regression.json": {"test_r2": 0.67, "test_mse": 914.5},
    "metrics/save_restore.json": {
        "max_abs_diff": 0.0,
        "checkpoint_max_abs_diff": 0.0,
        "saved_model_max_abs_diff": 0.0,
        "continued_train_loss": 0.02,
        "test_accuracy": 0.95,
    },
    "metrics/emotion_cnn.json": {
        "test_accuracy": 0.805,
        "test_macro_f1": 0.69,
        "valid_accuracy": 0.825,
        "export_max_abs_diff": 0.0,
    },
    "metrics/sentiment_rnn.json": {"test_accuracy": 0.7488, "test_auc": 0.85},
    "metrics/sentiment_ngram.json": {"test_accuracy": 0.9216, "test_auc": 0.9658},
    "metrics/load_forecast.json": {"skill_vs_best_naive": 0.43},
}


def test_floor_and_ceiling_are_inclusive_and_a_missing_value_fails() -> None:
    metrics = {"acc": 0.55, "loss": 0.3, "nested": {"f1": 0.5}, "nan": float("nan"), "flag": True}
    assert check("s", "f.json", metrics, "acc", 0.55, "floor")["pass"]
    assert not check("s", "f.json", metrics, "acc", 0.5500001, "floor")["pass"]
    assert check("s", "f.json", metrics, "loss", 0.3, "ceiling")["pass"]
    assert not check("s", "f.json", metrics, "loss", 0.29, "ceiling")["pass"]
    assert check("s", "f.json", metrics, "nested.f1", 0.4, "floor")["pass"]
    for key in ("absent", "nested.absent", "nan", "flag"):  # never passes by omission
        assert not check("s", "f.json", metrics, key, 0.0, "floor")["pass"]
        assert not check("s", "f.json", metrics, key, 1.0, "ceiling")["pass"]
    failed = check(
        "train_emotion_cnn", "metrics/emotion_cnn.json", {"test_accuracy": 0.41}, "test_accuracy", 0.55, "floor"
    )
    assert describe(failed) == "gate: train_emotion_cnn metrics/emotion_cnn.json test_accuracy 0.41 < floor 0.55"
    failed = check("save_restore", "metrics/save_restore.json", {"max_abs_diff": 2e-7}, "max_abs_diff", 0.0, "ceiling")
    assert describe(failed) == "gate: save_restore metrics/save_restore.json max_abs_diff 2e-07 > ceiling 0"


def test_params_yaml_gate_validates_and_covers_every_metrics_file() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    GateParams.model_validate(params["gate"])
    assert set(params["gate"]) == set(METRICS_FILES)


def write_metrics(root: Path, files: dict[str, dict]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(data))


def test_stage_passes_then_fails_with_one_line_per_failed_check_and_keeps_the_record(workdir: Path) -> None:
    write_metrics(workdir, GOOD)
    result = run(["python", "-m", "stages.gate"], workdir)
    report = json.loads((workdir / "metrics/gate.json").read_text())
    assert report["passed"] is True and report["checks_failed"] == 0 and len(report["checks"]) == 24
    assert set(report["checks"][0]) == {"stage", "file", "key", "value", "bound", "kind", "pass"}
    assert "gate: all 24 checks passed" in result.stderr

    bad = {
        **GOOD,
        "metrics/emotion_cnn.json": {**GOOD["metrics/emotion_cnn.json"], "test_accuracy": 0.41},
        "metrics/save_restore.json": {**GOOD["metrics/save_restore.json"], "max_abs_diff": 1e-6},
        "metrics/load_forecast.json": {},
    }
    write_metrics(workdir, bad)
    result = run(["python", "-m", "stages.gate"], workdir, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("gate:")]
    assert lines == [
        "gate: save_restore metrics/save_restore.json max_abs_diff 1e-06 > ceiling 0",
        "gate: train_emotion_cnn metrics/emotion_cnn.json test_accuracy 0.41 < floor 0.55",
        "gate: train_load_rnn metrics/load_forecast.json skill_vs_best_naive "
        "missing or not a finite number (floor 0.2)",
    ]
    assert result.stderr.splitlines()[-1] == "error: quality gate: 3 of 24 checks failed (all in metrics/gate.json)"
    report = json.loads((workdir / "metrics/gate.json").read_text())  # written although the gate failed
    assert report["passed"] is False and report["checks_failed"] == 3
    assert [c["key"] for c in report["checks"] if not c["pass"]] == [
        "max_abs_diff",
        "test_accuracy",
        "skill_vs_best_naive",
    ]


@pytest.mark.parametrize(
    "value, message",
    [
        ("{floor: {acc: high}, ceiling: {}}", "gate.simple_nn.floor.acc: must be a valid number (got 'high')"),
        ("{floor: {}, ceiling: {}, bottom: {acc: 0.5}}", "gate.simple_nn.bottom: unknown key"),
        ("{floor: {acc: 0.5}}", "gate.simple_nn.ceiling: missing key"),
    ],
)
def test_bad_gate_params_are_one_line(workdir: Path, value: str, message: str) -> None:
    write_metrics(workdir, GOOD)
    params = workdir / "params.yaml"
    data = yaml.safe_load(params.read_text())
    data["gate"]["simple_nn"] = yaml.safe_load(value)
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run(["python", "-m", "stages.gate"], workdir, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: params.yaml: {message}"
