"""Stage ``report``: ``reports/summary.md``, the pipeline's results on one page.

Every headline metric beside the original tutorial's figure and the quality
gate's bound and verdict, the data reports, links to the plots, the params that
differ from the stages' defaults and each dataset's source.

It reads files only (params.yaml as data, metrics/, plots/, the data reports) and
runs no other stage's code, so a change to a stage's code does not re-run it.
params.yaml is the one source of every default: a plain ``dvc repro`` runs at the
defaults by definition, and the params that differ are those a DVC experiment
(``dvc exp run -S``, ``make real``) changed from its baseline commit's params.yaml
(read with git; DVC names that commit in the stage's environment).

The page holds only facts derived from the pipeline's inputs and outputs (no
date, no git commit): a commit hash would change with every commit and a fresh
clone's ``dvc repro`` would leave ``git status`` dirty. The sha256 of each
metrics file identifies the results instead; the commit holding this file is
the one whose ``dvc.lock`` records it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from stages.common.cli import fail, run_stage
from stages.common.metrics_files import METRICS_FILES
from stages.common.params import PARAMS_FILE, parse_params, read_params_file, remember

SUMMARY = Path("reports/summary.md")
GATE = Path("metrics/gate.json")
PLOTS = Path("plots")
# The images the stages draw (dvc.yaml's plots name them too): the page links each, and a missing
# one stops the report instead of dropping its link (-> the stage that writes it).
IMAGES: dict[str, str] = {
    "plots/inspect_batches/fer2013_batch.png": "inspect_batches",
    "plots/simple_nn/decision_boundary.png": "simple_nn",
    "plots/train_emotion_cnn/integrated_gradients.png": "train_emotion_cnn",
    "plots/train_load_rnn/forecast_days.png": "train_load_rnn",
    "plots/train_sentiment_rnn/memory_cells.png": "train_sentiment_rnn",
}
DATA_REPORTS = {
    "aclImdb reviews": "metrics/data_imdb.json",
    "FER2013 faces": "metrics/data_fer2013.json",
    "hourly load": "metrics/data_series.json",
}

# Set by `dvc exp run` for every stage it runs: the commit the experiment started from.
BASELINE_ENV = "DVC_EXP_BASELINE_REV"

# What the original TensorFlow 1.7 notebooks printed (shared/REFERENCE.md), per metrics file.
TUTORIAL: dict[str, str] = {
    "metrics/simple_nn.json": "01: loss 0.653 (epoch 1) → 0.051 (epoch 500)",
    "metrics/metrics_demo_multiclass.json": "02: macro precision 0.949, recall 0.953 (on the training data)",
    "metrics/metrics_demo_imbalanced.json": "02: ROC-AUC 0.935",
    "metrics/metrics_demo_regression.json": "02: R² 0.825 (another random draw)",
    "metrics/save_restore.json": "03: restored model continues from loss 0.0424",
    "metrics/emotion_cnn.json": "07: eval accuracy 0.573 (real FER2013, PublicTest + PrivateTest)",
    "metrics/sentiment_rnn.json": "08: best eval accuracy 0.886 (real aclImdb; test set chose the epoch)",
    "metrics/sentiment_ngram.json": "— (no tutorial; real aclImdb elsewhere: NBSVM bigrams 0.912, fastText 0.906)",
    "metrics/load_forecast.json": "09: scaled test MSE 0.049 (real ENTSO-E Spain, one global scaler)",
}

# Headline metrics shown beside the gate's checks (which are headline metrics too).
HEADLINES: dict[str, list[str]] = {
    "metrics/simple_nn.json": ["first_epoch_loss", "train_loss", "train_accuracy"],
    "metrics/metrics_demo_multiclass.json": ["test_macro_precision", "test_macro_recall", "test_macro_f1"],
    "metrics/metrics_demo_imbalanced.json": ["test_roc_auc", "test_macro_f1"],
    "metrics/metrics_demo_regression.json": ["test_r2", "test_mse"],
    "metrics/save_restore.json": ["max_abs_diff", "restored_first_epoch_loss", "test_accuracy"],
    "metrics/emotion_cnn.json": ["test_accuracy", "test_macro_f1", "valid_accuracy"],
    "metrics/sentiment_rnn.json": ["test_accuracy", "test_auc", "test_f1"],
    "metrics/sentiment_ngram.json": ["test_accuracy", "test_auc", "test_f1"],
    "metrics/load_forecast.json": ["test_mae_mw", "test_mape", "skill_vs_best_naive", "test_mse_global_scaler"],
}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and empty mappings are values."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def baseline_params() -> dict[str, Any] | None:
    """params.yaml as the baseline commit of the DVC experiment running this stage holds it;
    None outside an experiment (a plain `dvc repro` runs params.yaml, the defaults themselves)."""
    rev = os.environ.get(BASELINE_ENV)
    if not rev:
        return None
    where = f"{rev}:{PARAMS_FILE.as_posix()}"
    try:
        shown = subprocess.run(["git", "show", where], capture_output=True, check=False)
    except OSError as exc:
        fail(f"{BASELINE_ENV}: cannot run git to read the experiment's baseline params.yaml ({exc})")
    if shown.returncode != 0:
        problem = shown.stderr.decode(errors="replace").strip().splitlines() or ["git show failed"]
        fail(f"{BASELINE_ENV}: cannot read {where} ({problem[0]})")
    return parse_params(shown.stdout.decode("utf-8", errors="replace"), where)


def changed_params(params: dict[str, Any], baseline: dict[str, Any] | None) -> list[tuple[str, Any, Any]]:
    """(key, value in params.yaml, the baseline's value) for every value that differs; none without a
    baseline. Sections in params.yaml's order, keys sorted within each; the seed is shown apart."""
    if baseline is None:
        return []
    given, default = flatten(params), flatten(baseline)
    order = {section: i for i, section in enumerate(dict.fromkeys([*params, *baseline]))}
    keys = sorted({*given, *default} - {"seed"}, key=lambda key: (order[key.split(".")[0]], key))
    return [(key, given.get(key), default.get(key)) for key in keys if given.get(key) != default.get(key)]


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def load(path: str) -> dict[str, Any] | None:
    """A metrics file as a mapping, None if absent; a damaged one stops the report naming it."""
    file = Path(path)
    if not file.exists():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        fail(f"{path}: not UTF-8 text (byte {exc.start}); run the stage that writes it again")
    except json.JSONDecodeError as exc:
        fail(f"{path}: not valid JSON ({exc}); run the stage that writes it again")
    if not isinstance(data, dict):
        fail(f"{path}: expected a JSON object; run the stage that writes it again")
    return data


def load_gate() -> dict[str, Any] | None:
    """metrics/gate.json, checked for the keys the page reads."""
    gate = load(str(GATE))
    if gate is None:
        return None
    checks = gate.get("checks")
    keys = {"file", "key", "kind", "bound", "pass"}
    if not isinstance(checks, list) or not all(isinstance(c, dict) and keys <= set(c) for c in checks):
        fail(f"{GATE}: no list of checks (file, key, kind, bound, pass); run the gate again (python -m stages.gate)")
    if not isinstance(gate.get("passed"), bool) or not isinstance(gate.get("checks_failed"), int):
        fail(f"{GATE}: no passed / checks_failed; run the gate again (python -m stages.gate)")
    return gate


def metrics_section(gate: dict[str, Any] | None) -> list[str]:
    checks: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in (gate or {}).get("checks", []):
        checks.setdefault((c["file"], c["key"]), []).append(c)
    lines = [
        "## Results",
        "",
        "| stage | metric | value | gate | verdict | original tutorial |",
        "|---|---|---|---|---|---|",
    ]
    for _, (stage, file) in METRICS_FILES.items():
        metrics = load(file) or {}
        keys = list(dict.fromkeys(HEADLINES[file] + [key for f, key in checks if f == file]))
        for i, key in enumerate(keys):
            value: Any = metrics
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            bounds = checks.get((file, key), [])
            bound = ", ".join(f"{'≥' if c['kind'] == 'floor' else '≤'} {fmt(c['bound'])}" for c in bounds)
            verdict = ("pass" if all(c["pass"] for c in bounds) else "**FAIL**") if bounds else ""
            lines.append(
                f"| {stage if i == 0 else ''} | `{key}` | {fmt(value)} | {bound} | {verdict} | "
                f"{TUTORIAL[file] if i == 0 else ''} |"
            )
    if gate is None:
        lines += ["", "The gate has not run (no `metrics/gate.json`)."]
    else:
        lines += [
            "",
            f"Quality gate: **{'passed' if gate['passed'] else 'FAILED'}** "
            f"({len(gate['checks']) - gate['checks_failed']} of {len(gate['checks'])} checks; "
            f"bounds in `params.yaml` → `gate`).",
        ]
    return lines


def data_section() -> list[str]:
    lines = [
        "## Data",
        "",
        "| dataset | source | rows | classes | bad rows | gaps | sha256 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, file in DATA_REPORTS.items():
        r = load(file)
        if r is None:
            lines.append(f"| {name} | (no `{file}`) | | | | | |")
            continue
        if "reviews" in r:  # aclImdb
            rows = r["reviews"]["total"]
            classes = ", ".join(
                f"{split} {c['neg']} neg / {c['pos']} pos" for split, c in r["reviews"].items() if isinstance(c, dict)
            )
            bad = sum(v for k, v in r["problems"].items() if k != "invalid_utf8_bytes")
            gaps = ""
        elif "rows_per_class" in r:  # FER2013
            rows = r["rows"]
            classes = ", ".join(f"{k} {v}" for k, v in r["rows_per_class"].items())
            bad = sum(r["bad_rows"]["found"].values())
            gaps = ""
        else:  # load series
            rows, classes = r["hours"], "(regression)"
            bad = r["bad_rows"]
            gaps = (
                f"{r['missing_hours']} missing hours in {r['gaps']} gaps (longest {r['longest_gap_hours']} h), "
                f"{r['dst_gaps']} DST gaps, {r['duplicates']} duplicates, {r['missing_load_values']} blank values"
            )
        # Every data report starts with source, source_location and source_sha256 (the one schema).
        source, digest = r.get("source_location"), r.get("source_sha256") or r.get("tree_sha256")
        lines.append(
            f"| {name} | {r['source']}{f': {fmt(source)}' if source else ''} | {rows} | {classes} | {bad} | {gaps} | "
            f"`{(digest or '—')[:16]}` |"
        )
    lines += ["", "Full data reports: " + ", ".join(f"[`{f}`](../{f})" for f in DATA_REPORTS.values()) + "."]
    return lines


def plots_section() -> list[str]:
    for image, stage in IMAGES.items():
        if not Path(image).is_file():
            fail(f"{image}: not found (the stage {stage} draws it: run it again, or `dvc repro`)")
    pngs = sorted({*IMAGES, *(p.as_posix() for p in PLOTS.rglob("*.png"))})
    return [
        "## Plots",
        "",
        *(f"- [{p}](../{p})" for p in pngs),
        "",
        "`dvc plots show` draws the training curves, confusion matrices and ROC curves.",
    ]


def params_section(params: dict[str, Any], baseline: dict[str, Any] | None) -> list[str]:
    rows = changed_params(params, baseline)
    lines = ["## Params that differ from the stages' defaults", ""]
    if not rows:
        return lines + ["None: every stage ran at its defaults.", "", f"Seed: {params.get('seed')}."]
    lines += ["| param | params.yaml | default |", "|---|---|---|"]
    lines += [f"| `{key}` | {fmt(value)} | {fmt(default)} |" for key, value, default in rows]
    return lines + ["", f"Seed: {params.get('seed')}."]


def fingerprint_section() -> list[str]:
    files = sorted(p.as_posix() for p in Path("metrics").glob("*.json"))
    return [
        "## The files summarized",
        "",
        "sha256 of each metrics file (the commit holding this page is the one whose `dvc.lock` records them):",
        "",
        *(f"- `{f}` `{hashlib.sha256(Path(f).read_bytes()).hexdigest()[:16]}`" for f in files),
    ]


def render(params: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    lines = [
        "# Pipeline summary",
        "",
        "Written by `python -m stages.report` (the `report` stage of `dvc repro`); do not edit.",
        "",
    ]
    for part in (
        metrics_section(load_gate()),
        data_section(),
        plots_section(),
        params_section(params, baseline),
        fingerprint_section(),
    ):
        lines += part + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    params = read_params_file()  # every section: the report has no params of its own
    remember("", params)  # it shows them all: any change while it runs makes the page wrong

    from stages.common.outputs import atomic_outputs

    text = render(params, baseline_params())  # every input checked before anything is written
    with atomic_outputs() as out:
        out.file(SUMMARY).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    run_stage(main, "report")
