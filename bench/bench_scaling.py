"""Benchmark: how the pipeline's cost grows with the data, at 1x, 2x and 4x the embedded samples.

For each factor, copies the stages and params.yaml into a temporary project with
the FER2013 and IMDB samples scaled (faces per split, reviews per class), writes
the raw data (``download_fer2013``, ``download_imdb``; not timed), then times:

- the TFRecord conversions (``tfrecords_fer2013``, ``tfrecords_imdb``) the way DVC
  runs them: one process each, start-up included;
- one training epoch (training pass plus validation pass) of the emotion CNN and of
  the sentiment RNN with their params from params.yaml: the second of two epochs,
  since the first also fills the input caches and traces the steps.

A cost that grows linearly doubles from 1x to 2x to 4x; the README's "Scaling"
section reads this file. Prints a table and writes ``bench/results/scaling.json``.

    .venv/bin/python -m bench.bench_scaling [--factors 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import load_average, make_project, stage, write_result

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench/results/scaling.json"
EPOCHS = 2  # the second is the steady state


def scaled(factor: int):
    """A params edit: the FER2013 and IMDB samples ``factor`` times their default size."""

    def edit(params: dict[str, Any]) -> None:
        faces = params["fer2013"]["sample"]
        for split in ("training", "public_test", "private_test"):
            faces[split] = int(faces[split]) * factor
        faces["preset"] = "small"
        params["fer2013"]["source"] = "sample"
        params["imdb"]["source"] = "sample"
        params["imdb"]["sample"]["per_class"] = 1250 * factor  # the small preset's size

    return edit


def epoch_seconds(module: str, section: str, params: dict[str, Any], data: Path) -> float:
    """Wall time of the steady (last) epoch of ``module.train_model`` with the section's params."""
    import importlib

    stage_module = importlib.import_module(f"stages.{module}")
    params_class = next(
        value
        for name, value in vars(stage_module).items()
        if name.endswith("Params") and getattr(value, "__module__", "") == stage_module.__name__
    )
    p = params_class(**{**params[section], "max_epochs": EPOCHS, "patience": EPOCHS + 1})
    marks = [time.perf_counter()]
    stage_module.train_model(
        p, params["seed"], data, None, on_epoch_end=lambda e, logs: marks.append(time.perf_counter())
    )
    return round(marks[-1] - marks[-2], 2)


def measure(factor: int, tmp: Path) -> dict[str, Any]:
    project = make_project(tmp / f"x{factor}", scaled(factor), stages=["download_fer2013", "download_imdb"])
    params = yaml.safe_load((project / "params.yaml").read_text())
    result: dict[str, Any] = {"factor": factor, "load_average_before": load_average()}
    for name in ("tfrecords_fer2013", "tfrecords_imdb"):
        result[f"{name}_seconds"] = round(stage(project, name), 2)
    specs = {
        name: json.loads((project / f"data/tfrecords/{name}/spec.json").read_text()) for name in ("fer2013", "imdb")
    }
    result["train_faces"] = specs["fer2013"]["splits"]["train"]["examples"]
    result["train_reviews"] = specs["imdb"]["splits"]["train"]["examples"]
    result["emotion_cnn_epoch_seconds"] = epoch_seconds(
        "train_emotion_cnn", "train_emotion_cnn", params, project / "data/tfrecords/fer2013"
    )
    result["sentiment_rnn_epoch_seconds"] = epoch_seconds(
        "train_sentiment_rnn", "train_sentiment_rnn", params, project / "data/tfrecords/imdb"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    timed = [f"{name}_seconds" for name in ("tfrecords_fer2013", "tfrecords_imdb")]
    timed += [f"{name}_epoch_seconds" for name in ("emotion_cnn", "sentiment_rnn")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        for factor in args.factors:
            runs.append(measure(factor, Path(tmp)))
            print(json.dumps(runs[-1]), flush=True)
    base = runs[0]
    growth = {key: [round(run[key] / base[key], 2) for run in runs] for key in timed}
    result = {
        "factors": args.factors,
        "runs": runs,
        "growth_over_first": growth,
        "note": "conversion: one stage process, TF import (~4 s) included; epoch: training + validation pass, "
        "the second of two; 2 cores may be shared: see the load averages",
    }
    write_result(RESULTS, result)
    print(f"{'':28s}" + "".join(f"{f:>8d}x" for f in args.factors))
    for key in timed:
        print(f"{key:28s}" + "".join(f"{run[key]:8.1f}s" for run in runs))
    print(f"-> {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
