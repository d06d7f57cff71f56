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
from stages.common.metrics_files import METRICS_FILES
from stages.common.params import Section, load_params

REPORT = Path("metrics/gate.json")


class Bounds(Section):
    floor: dict[str, float] = Field(description="metric key -> smallest passing value ({}: none)")
    ceiling: dict[str, float] = Field(description="metric key -> largest passing value ({}: none)")


class GateParams(Section):
    # One entry per METRICS_FILES section; the bounds, and why each, are in params.yaml.
    simple_nn: Bounds
    metrics_demo_multiclass: Bounds
    metrics_demo_imbalanced: Bounds
    metrics_demo_regression: Bounds
    save_restore: Bounds
    train_emotion_cnn: Bounds
    train_sentiment_rnn: Bounds
    train_sentiment_ngram: Bounds
    train_load_rnn: Bounds


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
