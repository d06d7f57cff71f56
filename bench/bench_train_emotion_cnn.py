"""Benchmark: time per epoch of ``train_emotion_cnn`` at FER2013's real size (the ``full`` sample preset).

Copies the stages and params.yaml into a temporary project, sets
``fer2013.sample.preset: full`` (28,709 training, 3,589 PublicTest faces),
builds the TFRecords (``download_fer2013``, ``tfrecords_fer2013``; not timed),
then trains the stage's network with its params from params.yaml for two
epochs, without and with augmentation, timing each epoch (training pass plus
the validation pass). The first epoch also decodes the PNGs into the in-memory
cache and traces the steps; the second is the steady state. What a real
FER2013 run costs per epoch on this machine, for the README's recipe.
Prints a table and writes ``bench/results/train_emotion_cnn.json``.

    .venv/bin/python -m bench.bench_train_emotion_cnn
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import yaml

from bench import bench_tfrecords_fer2013 as fer2013_bench
from bench.common import load_average, stage, write_result

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench/results/train_emotion_cnn.json"
EPOCHS = 2


def make_project(dest: Path) -> Path:
    """A project copy with the full-size FER2013 sample turned into TFRecords."""
    fer2013_bench.make_project(dest)  # copy + full preset + download_fer2013
    stage(dest, "tfrecords_fer2013")
    return dest


def epoch_seconds(p, seed: int, data: Path) -> list[float]:
    from stages.train_emotion_cnn import train_model

    marks = [time.perf_counter()]
    train_model(p, seed, data, None, on_epoch_end=lambda epoch, logs: marks.append(time.perf_counter()))
    return [round(b - a, 2) for a, b in zip(marks, marks[1:], strict=False)]


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from stages.train_emotion_cnn import TrainEmotionCnnParams

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    base = {**params["train_emotion_cnn"], "max_epochs": EPOCHS, "patience": EPOCHS + 1}
    with tempfile.TemporaryDirectory(prefix="bench_emotion_cnn_") as tmp:
        project = make_project(Path(tmp) / "project")
        data = project / "data/tfrecords/fer2013"
        spec = json.loads((data / "spec.json").read_text())
        runs = {}
        for name, extra in (("plain", {"augment": False}), ("augmented", {"augment": True})):
            load = load_average()
            runs[name] = {
                "epoch_seconds": epoch_seconds(TrainEmotionCnnParams(**{**base, **extra}), params["seed"], data),
                "load_average_before": load,
            }
    result = {
        "train_faces": spec["splits"]["train"]["examples"],
        "valid_faces": spec["splits"]["valid"]["examples"],
        **runs,
        "steady_epoch_seconds": runs["plain"]["epoch_seconds"][-1],
        "steady_epoch_seconds_augmented": runs["augmented"]["epoch_seconds"][-1],
        "params": {k: v for k, v in base.items() if k not in ("max_epochs", "patience", "checkpoint_every_s")},
        "note": "per epoch: training pass + validation pass; the first epoch of the first run also decodes "
        "the PNGs into the cache and traces the steps; 2 cores may be shared: see the load averages",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_result(RESULTS, result)
    print(f"{'train_emotion_cnn, full size':30s} " + " ".join(f"epoch {i + 1:>2d}" for i in range(EPOCHS)))
    for name, run in runs.items():
        print(f"{name:30s} " + " ".join(f"{s:7.1f}s" for s in run["epoch_seconds"]))
    print(f"-> {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
