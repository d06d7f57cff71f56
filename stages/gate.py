"""Stage ``gate``: the quality gate (TFX's "blessing") over every model's metrics.

For each stage, ``params.yaml`` → ``gate.<stage>`` gives a ``floor`` (the value
must be >= it) or a ``ceiling`` (<= it) per metric key (a dotted key reaches
into nested metrics, e.g. ``test_per_class.Happy.f1``). The stage writes every
check to ``metrics/gate.json`` - also when one fails, since that file is the
record of why - prints one line per failed check::

    gate: train_emotion_cnn metrics/emotion_cnn.json test_accuracy 0.41 < floor 0.55

and then exits 2, so ``dvc repro`` (and CI) stop on a model that regressed.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from pydantic import Field

from stages.common.cli import fail, run_stage
from stages.common.params import Section, load_params

REPORT = Path("metrics/gate.json")

# gate.<section> -> (the DVC stage, the metrics file it writes). The sections use
# `_` for metrics_demo's `@`, so `dvc exp run -S gate.<section>.floor.<key>=...` works.
METRICS_FILES: dict[str, tuple[str, str]] = {
    "simple_nn": ("simple_nn", "metrics/simple_nn.json"),
    "metrics_demo_multiclass": ("metrics_demo@multiclass", "metrics/metrics_demo_multiclass.json"),
    "metrics_demo_imbalanced": ("metrics_demo@imbalanced", "metrics/metrics_demo_imbalanced.json"),
    "metrics_demo_regression": ("metrics_demo@regression", "metrics/metrics_demo_regression.json"),
    "save_restore": ("save_restore", "metrics/save_restore.json"),
    "train_emotion_cnn": ("train_emotion_cnn", "metrics/emotion_cnn.json"),
    "train_sentiment_rnn": ("train_sentiment_rnn", "metrics/sentiment_rnn.json"),
    "train_sentiment_ngram": ("train_sentiment_ngram", "metrics/sentiment_ngram.json"),
    "train_load_rnn": ("train_load_rnn", "metrics/load_forecast.json"),
}


class Bounds(Section):
    floor: dict[str, float] = Field(default_factory=dict, description="metric key -> smallest passing value")
    ceiling: dict[str, float] = Field(default_factory=dict, description="metric key -> largest passing value")


def _bounds(floor: dict[str, float] | None = None, ceiling: dict[str, float] | None = None) -> Any:
    return Field(default_factory=lambda: Bounds(floor=floor or {}, ceiling=ceiling or {}))


class GateParams(Section):
    # Defaults: the sample data's bounds (the floors the tests used before this stage
    # existed). The tutorial 01-03 bounds lie well inside the committed values but
    # outside what a broken or barely trained model reaches (simple_nn after 1 epoch:
    # loss 0.54; a majority-class imbalanced model: macro F1 0.48; an untrained one: R² < 0).
    simple_nn: Bounds = _bounds({"train_accuracy": 0.85}, {"train_loss": 0.3})
    metrics_demo_multiclass: Bounds = _bounds({"test_accuracy": 0.85, "test_macro_f1": 0.85}, {"train_loss": 0.3})
    metrics_demo_imbalanced: Bounds = _bounds({"test_roc_auc": 0.85, "test_macro_f1": 0.6}, {"train_loss": 0.3})
    metrics_demo_regression: Bounds = _bounds({"test_r2": 0.5}, {"test_mse": 1500.0})
    save_restore: Bounds = _bounds(
        {"test_accuracy": 0.85},
        {
            "max_abs_diff": 0.0,
            "checkpoint_max_abs_diff": 0.0,
            "saved_model_max_abs_diff": 0.0,
            "continued_train_loss": 0.3,
        },
    )
    train_emotion_cnn: Bounds = _bounds(
        {"test_accuracy": 0.55, "test_macro_f1": 0.45, "valid_accuracy": 0.55}, {"export_max_abs_diff": 1e-5}
    )
    train_sentiment_rnn: Bounds = _bounds({"test_accuracy": 0.70, "test_auc": 0.78})
    # The n-gram baseline: 0.92 on the sample; chance, or ratios fitted to the wrong labels, 0.5.
    train_sentiment_ngram: Bounds = _bounds({"test_accuracy": 0.85, "test_auc": 0.90})
    train_load_rnn: Bounds = _bounds({"skill_vs_best_naive": 0.2})


def lookup(metrics: Any, key: str) -> Any:
    """``metrics["a"]["b"]`` for the key ``a.b``; None if absent."""
    node = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def number(value: Any) -> float | None:
    """A finite number, or None: Infinity passes any floor and -Infinity any ceiling, NaN neither."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def check(stage: str, file: str, metrics: Any, key: str, bound: float, kind: str) -> dict[str, Any]:
    """One comparison; a missing, non-numeric or non-finite value fails (a gate must not pass by omission)."""
    value = number(lookup(metrics, key))
    passed = value is not None and (value >= bound if kind == "floor" else value <= bound)
    return {"stage": stage, "file": file, "key": key, "value": value, "bound": bound, "kind": kind, "pass": passed}


def describe(c: dict[str, Any]) -> str:
    """``gate: stage file key 0.41 < floor 0.55`` for a failed check."""
    if c["value"] is None:
        return f"gate: {c['stage']} {c['file']} {c['key']} missing or not a finite number ({c['kind']} {c['bound']:g})"
    sign = "<" if c["kind"] == "floor" else ">"
    return f"gate: {c['stage']} {c['file']} {c['key']} {c['value']:g} {sign} {c['kind']} {c['bound']:g}"


def run_checks(p: GateParams, root: Path = Path(".")) -> list[dict[str, Any]]:
    checks = []
    for section, (stage, file) in METRICS_FILES.items():
        bounds: Bounds = getattr(p, section)
        if not bounds.floor and not bounds.ceiling:
            continue
        try:
            metrics = json.loads((root / file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            fail(f"{file}: not found (run the stage {stage} first, or `dvc repro`)")
        except UnicodeDecodeError as exc:
            fail(f"{file}: not UTF-8 text (byte {exc.start}); expected the JSON metrics of {stage}")
        except json.JSONDecodeError as exc:
            fail(f"{file}: not valid JSON: {exc}")
        for kind, limits in (("floor", bounds.floor), ("ceiling", bounds.ceiling)):
            for key, bound in limits.items():
                checks.append(check(stage, file, metrics, key, bound, kind))
    return checks


def main() -> None:
    _, p = load_params("gate", GateParams)

    from stages.common.outputs import atomic_outputs, write_json

    checks = run_checks(p)
    failed = [c for c in checks if not c["pass"]]
    with atomic_outputs() as out:
        write_json(out.file(REPORT), {"passed": not failed, "checks_failed": len(failed), "checks": checks})
    for c in failed:
        print(describe(c), file=sys.stderr)
    if failed:
        fail(f"quality gate: {len(failed)} of {len(checks)} checks failed (all in {REPORT})")
    print(f"gate: all {len(checks)} checks passed", file=sys.stderr)


if __name__ == "__main__":
    run_stage(main, "gate")
