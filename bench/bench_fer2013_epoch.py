"""Benchmark: one real-size FER2013 training epoch, split into input pipeline, training step and both.

For the tutorial's network and the recipe's VGG-style network (``RECIPE``: the
params of the FER2013 recipe search's run, results/fer2013-recipe-search/), on
the same augmented input pipeline (TFRecords -> in-memory cache -> shuffle ->
batch -> the recipe's flips, shifts, rotations and erasing, whole batches):

- ``pipeline``: the training batches alone, iterated without a model;
- ``step``: the training step alone, on batches already in memory (tensors);
- ``both``: the two together, as ``Trainer.train_epoch`` runs them;
- ``valid``: the PublicTest pass that ends every epoch (forward only).

Each is timed over ``--steps`` batches after ``--warmup`` (tracing, caches), in
``--rounds`` windows of which the fastest counts (other work on shared cores only
slows a window down), and extrapolated to the epoch's 449 batches (28,709 faces at
batch 64): seconds of CPU each instead of whole epochs. ``epoch_seconds`` = both + valid.

The floor: the convolutions' and dense layers' multiply-adds by the layer shapes
(batch norm, ReLU and pooling are memory-bound and left out), forward + backward
≈ 3 × forward, on 2 cores each retiring 2 FMA instructions of 8 floats (AVX2,
what the reproducible numerics cap oneDNN at) a cycle, at the clock
/proc/cpuinfo reports: ``ratio_to_floor`` = epoch seconds / floor seconds.

Data: by default the ``full`` FER2013 sample preset (synthetic 48×48 faces, the real
split sizes) through download_fer2013 and tfrecords_fer2013 in a temporary project
copy (not timed); ``--data DIR`` times existing TFRecords (e.g. the real faces).
Runs in the process's numerics: reproducible by default, ``EAGER_PIPELINE_NUMERICS=fast``
for the other mode. Writes ``bench/results/fer2013_epoch.json``.

    .venv/bin/python -m bench.bench_fer2013_epoch [--data data/tfrecords/fer2013 --data-name "real faces"] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench import bench_tfrecords_fer2013 as fer2013_bench
from bench.common import load_average, stage, write_result

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench/results/fer2013_epoch.json"
SEED = 42
# The recipe's network and training (results/fer2013-recipe-search/vgg16-sgd-cosine/params.yaml).
RECIPE: dict[str, Any] = {
    "architecture": "vgg",
    "vgg_widths": [16, 32, 64, 128],
    "vgg_dropout": 0.4,
    "optimizer": "sgd",
    "learning_rate": 0.01,
    "weight_decay": 0.005,
    "lr_schedule": "cosine",
    "warmup_epochs": 2,
    "label_smoothing": 0.1,
    "augment": True,
    "augment_shift": 3,
    "augment_rotation": 10.0,
    "augment_erasing": 0.25,
}
# The tutorial's network with its own optimizer, on the same augmented batches.
TUTORIAL: dict[str, Any] = {k: RECIPE[k] for k in ("augment", "augment_shift", "augment_rotation", "augment_erasing")}
FMA_UNITS, FLOATS_PER_VECTOR, FLOPS_PER_FMA, CORES = 2, 8, 2, 2


def forward_flops(model) -> int:
    """Floating-point operations of one face's forward pass in the convolutions and dense layers."""
    flops = 0
    for layer in model.layers:
        kind = layer.__class__.__name__
        if kind == "Conv2D":
            _, height, width, out = layer.output.shape
            kh, kw = layer.kernel_size
            flops += 2 * height * width * kh * kw * layer.input.shape[-1] * out
        elif kind == "Dense":
            flops += 2 * layer.input.shape[-1] * layer.units
    return int(flops)


def clock_hz() -> tuple[float, str]:
    """The first core's clock from /proc/cpuinfo, or 3 GHz when it says none (and which it was)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) * 1e6, "/proc/cpuinfo cpu MHz"
    except OSError:
        pass
    return 3e9, "assumed 3 GHz (no cpu MHz in /proc/cpuinfo)"


def per_step(
    run, batches: list, warmup: int, rounds: int = 1, cpu: dict[str, float] | None = None, key: str = ""
) -> float:
    """Wall seconds per item of ``run`` over ``batches``, the first ``warmup`` of them not timed, the rest
    timed in ``rounds`` windows: the fastest window's (other work on shared cores only slows a window
    down). With ``cpu``, also the process's CPU seconds per item in that window (all its threads)."""
    for batch in batches[:warmup]:
        run(batch)
    timed = batches[warmup:]
    size = max(1, len(timed) // rounds)
    best = (math.inf, math.inf)
    for first in range(0, size * rounds, size):
        start, start_cpu = time.perf_counter(), time.process_time()
        for batch in timed[first : first + size]:
            run(batch)
        best = min(best, ((time.perf_counter() - start) / size, (time.process_time() - start_cpu) / size))
    if cpu is not None:
        cpu[key] = best[1]
    return best[0]


def measure(name: str, overrides: dict[str, Any], data: Path, steps: int, warmup: int, rounds: int) -> dict[str, Any]:
    from stages.common.input_pipelines import image_batches, read_spec
    from stages.common.seeding import seed_everything
    from stages.common.training import Trainer
    from stages.train_emotion_cnn import (
        TrainEmotionCnnParams,
        WeightedCrossEntropy,
        augment_batches,
        build_model,
        make_optimizer,
    )

    params = yaml.safe_load((ROOT / "params.yaml").read_text())["train_emotion_cnn"]
    p = TrainEmotionCnnParams(**{**params, **overrides})
    spec = read_spec(data)
    train_faces = int(spec["splits"]["train"]["examples"])
    valid_faces = int(spec["splits"]["valid"]["examples"])
    train_steps, valid_steps = math.ceil(train_faces / p.batch_size), math.ceil(valid_faces / p.batch_size)
    n = warmup + steps
    seed_everything(SEED)
    trainer = Trainer(
        build_model(p, 7, 48), make_optimizer(p, spec), WeightedCrossEntropy(None, label_smoothing=p.label_smoothing)
    )

    def train_batches(epoch: int):
        data_ = image_batches(data, "train", p.batch_size, shuffle_seed=SEED, epoch=epoch).take(n)
        return augment_batches(
            data_, SEED, epoch, p.augment_shift, 0, p.augment_flip, p.augment_rotation, p.augment_erasing
        )

    start = time.perf_counter()
    image_batches(data, "train", p.batch_size)  # decodes the split into the in-memory cache (once a process)
    cache_fill = time.perf_counter() - start

    def pipeline_alone(epoch: int) -> float:
        iterator = iter(train_batches(epoch))
        return per_step(lambda _: next(iterator), list(range(n)), warmup, rounds, cpu, "pipeline")

    cpu: dict[str, float] = {}
    pipeline = pipeline_alone(0)
    cached = list(train_batches(1))  # tensors in memory: the step alone
    step = per_step(lambda b: trainer.train_step(*b), cached, warmup, rounds, cpu, "step")
    float(trainer.train_loss.result())  # the steps are asynchronous only up to here

    def both_together() -> float:
        iterator = iter(train_batches(2))

        def run(_):
            trainer.train_step(*next(iterator))

        seconds = per_step(run, list(range(n)), warmup, rounds, cpu, "both")
        float(trainer.train_loss.result())
        return seconds

    both = both_together()
    valid_batches = list(image_batches(data, "valid", p.batch_size).take(min(valid_steps, n)))
    valid_warmup = min(warmup, len(valid_batches) - 1)
    valid = per_step(lambda b: trainer.eval_step(*b), valid_batches, valid_warmup, rounds, cpu, "valid")

    flops = forward_flops(trainer.model)
    epoch_flops = 3 * flops * train_faces + flops * valid_faces
    hz, clock_source = clock_hz()
    floor = epoch_flops / (CORES * FMA_UNITS * FLOATS_PER_VECTOR * FLOPS_PER_FMA * hz)
    epoch = both * train_steps + valid * valid_steps
    # CPU seconds are less sensitive to other work on shared cores than wall seconds: half of them is
    # the wall time the epoch would take if its 2 threads kept both cores busy, alone on them.
    epoch_cpu = cpu["both"] * train_steps + cpu["valid"] * valid_steps
    result = {
        "params": int(trainer.model.count_params()),
        "forward_mflop_per_face": round(flops / 1e6, 2),
        "epoch_tflop": round(epoch_flops / 1e12, 3),
        "ms_per_batch": {k: round(v * 1e3, 1) for k, v in (("pipeline", pipeline), ("step", step), ("both", both))}
        | {"valid": round(valid * 1e3, 1)},
        "epoch_seconds": {
            "pipeline_alone": round(pipeline * train_steps, 1),
            "step_alone": round(step * train_steps, 1),
            "both": round(both * train_steps, 1),
            "valid_pass": round(valid * valid_steps, 1),
            "epoch": round(epoch, 1),
        },
        "epoch_cpu_seconds": {
            "pipeline_alone": round(cpu["pipeline"] * train_steps, 1),
            "step_alone": round(cpu["step"] * train_steps, 1),
            "both": round(cpu["both"] * train_steps, 1),
            "valid_pass": round(cpu["valid"] * valid_steps, 1),
            "epoch": round(epoch_cpu, 1),
            "epoch_over_2_cores": round(epoch_cpu / CORES, 1),
        },
        "cache_fill_seconds_once": round(cache_fill, 1),
        "floor_seconds": round(floor, 1),
        "ratio_to_floor": round(epoch / floor, 2),
        "ratio_to_floor_cpu_over_2_cores": round(epoch_cpu / CORES / floor, 2),
        "clock_ghz": round(hz / 1e9, 3),
        "clock_source": clock_source,
        "overrides": overrides,
    }
    print(
        f"{name:9s} {result['params']:>9,d} params {result['epoch_tflop']:6.2f} TFLOP/epoch  "
        f"pipeline {pipeline * train_steps:5.1f} s  step {step * train_steps:5.1f} s  "
        f"both {both * train_steps:5.1f} s  "
        f"valid {valid * valid_steps:4.1f} s  epoch {epoch:5.1f} s (CPU/2 {epoch_cpu / CORES:5.1f} s)  "
        f"floor {floor:5.1f} s  x{epoch / floor:.2f}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="FER2013 TFRecords to time (default: the full synthetic sample)")
    parser.add_argument("--data-name", default="given TFRecords", help="what --data holds, for the result file")
    parser.add_argument("--steps", type=int, default=30, help="batches timed per measurement")
    parser.add_argument(
        "--rounds", type=int, default=3, help="windows the timed batches are split into: the fastest counts"
    )
    parser.add_argument("--warmup", type=int, default=5, help="batches run first, not timed")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from stages.common.numerics import mode

    with tempfile.TemporaryDirectory(prefix="bench_fer2013_epoch_") as tmp:
        data = args.data
        if data is None:
            project = fer2013_bench.make_project(Path(tmp) / "project")  # full preset + download_fer2013
            stage(project, "tfrecords_fer2013")
            data = project / "data/tfrecords/fer2013"
        load = load_average()
        networks = {
            name: measure(name, o, data, args.steps, args.warmup, args.rounds)
            for name, o in (("tutorial", TUTORIAL), ("recipe", RECIPE))
        }
        spec = json.loads((data / "spec.json").read_text())
    result = {
        "numerics": mode(),
        "data": args.data_name if args.data else "full synthetic sample (fer2013.sample.preset: full)",
        "train_faces": spec["splits"]["train"]["examples"],
        "valid_faces": spec["splits"]["valid"]["examples"],
        "steps_timed": args.steps,
        "warmup_steps": args.warmup,
        "rounds": args.rounds,
        **networks,
        "load_average_before": load,
        "load_average_after": load_average(),
        "note": "per-batch times of the fastest of `rounds` windows of a few batches, extrapolated to the epoch; "
        "the machine's 2 cores may be shared: see the load averages. Floor: conv + dense FLOPs (forward + "
        "2 x backward, plus the validation forward) / (2 cores x 2 FMA x 8 floats x 2 flops x clock)",
    }
    write_result(RESULTS, result)
    print(f"-> {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
