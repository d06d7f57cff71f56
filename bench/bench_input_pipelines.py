"""Benchmark: read throughput of the image and series input pipelines against data held in memory.

Builds the ``full`` FER2013 sample (35,887 faces) and the default 4-year
synthetic series in a temporary project (bench/bench_tfrecords_fer2013.py's
helper; not timed), then, in this one process, for the training split of each:

- ``pipeline``: stages/common/input_pipelines.py as a training stage uses it, a
  new shuffled dataset per epoch (``shuffle_seed``, ``epoch``), batch 64:
  ``cold`` = the first epoch streaming from the TFRecords (``cache=False``;
  for images this decodes every PNG), ``cache fill`` = decoding the split
  into the in-memory cache, ``warm`` = the cached epochs after it;
- ``in_memory``: ``tf.data.Dataset.from_tensor_slices`` over the same decoded
  arrays, ``shuffle`` (whole split) + ``batch`` + ``prefetch``, also built per epoch.

Examples/s include building each epoch's dataset. Target: the pipeline at
least half the in-memory throughput. Prints a table and writes
``bench/results/input_pipelines.json``; the machine may be shared (load averages recorded).

    .venv/bin/python -m bench.bench_input_pipelines
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.bench_tfrecords_fer2013 import make_project
from bench.common import load_average, stage, write_result

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = ROOT / "bench/results/input_pipelines.json"
BATCH = 64
SEED = 42
TARGET_RATIO = 0.5
EPOCHS = {"images": 3, "series": 20}  # the series split is small: more epochs for a stable figure


def throughput(make: Callable[[int], Any], epochs: range) -> float:
    """Examples/s over ``epochs``, each building its dataset with ``make(epoch)`` and reading it all."""
    count = 0
    start = time.perf_counter()
    for epoch in epochs:
        for _, labels in make(epoch):
            count += int(labels.shape[0])
    return count / (time.perf_counter() - start)


def measure(name: str, batches: Callable[..., Any], data_dir: Path) -> dict:
    import numpy as np
    import tensorflow as tf

    epochs = EPOCHS[name]
    load = load_average()
    cold = throughput(lambda e: batches(data_dir, "train", BATCH, shuffle_seed=SEED, epoch=e, cache=False), range(1))
    start = time.perf_counter()
    batches(data_dir, "train", BATCH, shuffle_seed=SEED, epoch=0, cache=True)  # fills the cache
    fill_seconds = time.perf_counter() - start
    warm = throughput(lambda e: batches(data_dir, "train", BATCH, shuffle_seed=SEED, epoch=e), range(1, epochs + 1))

    arrays = list(batches(data_dir, "train", 1024).as_numpy_iterator())
    x = np.concatenate([a for a, _ in arrays])
    y = np.concatenate([b for _, b in arrays])

    def in_memory(epoch: int) -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=epoch)
        return dataset.batch(BATCH).prefetch(tf.data.AUTOTUNE)

    memory = throughput(in_memory, range(1, epochs + 1))
    return {
        "examples": len(y),
        "epochs": epochs,
        "pipeline_cold_per_s": round(cold),
        "pipeline_cache_fill_seconds": round(fill_seconds, 2),
        "pipeline_warm_per_s": round(warm),
        "in_memory_per_s": round(memory),
        "ratio_warm": round(warm / memory, 2),
        "ratio_cold": round(cold / memory, 2),
        "target_met": warm / memory >= TARGET_RATIO,
        "load_average_before": load,
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench_pipelines_") as tmp:
        project = make_project(Path(tmp) / "project")
        for name in ("tfrecords_fer2013", "make_series", "tfrecords_series"):
            stage(project, name)

        from stages.common.input_pipelines import image_batches, series_batches

        results = {
            "images": measure("images", image_batches, project / "data/tfrecords/fer2013"),
            "series": measure("series", series_batches, project / "data/tfrecords/series"),
        }
    result = {
        **results,
        "batch_size": BATCH,
        "target_ratio": TARGET_RATIO,
        "note": "training split, shuffled, new dataset per epoch; 2 cores may be shared: see the load averages",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_result(RESULTS, result)
    print(f"{'pipeline (examples/s)':22s} {'cold':>9s} {'warm':>9s} {'in-memory':>10s} {'warm/mem':>9s}")
    for name, r in results.items():
        print(
            f"{name:22s} {r['pipeline_cold_per_s']:9d} {r['pipeline_warm_per_s']:9d} "
            f"{r['in_memory_per_s']:10d} {r['ratio_warm']:9.2f}"
        )
    print(
        f"target warm/mem >= {TARGET_RATIO}: "
        + ", ".join(f"{n} {'met' if r['target_met'] else 'NOT met'}" for n, r in results.items())
        + f" -> {RESULTS.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
