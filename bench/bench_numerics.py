"""Benchmark: what the reproducible numerics cost (stages/common/numerics.py), and where an epoch goes.

Builds the default FER2013 and IMDB samples' TFRecords in a temporary project
(not timed), then, each in a fresh process (the settings must precede
``import tensorflow``), trains the emotion CNN (plain and augmented) and the
sentiment RNN with their stages' params for six epochs and keeps the fastest
of epochs 2-6 (epoch 1 fills the input cache and traces the step; on a shared
VM single epochs stall now and then, the fastest is the machine's speed):

- ``fast``: ``EAGER_PIPELINE_NUMERICS=fast``: the CPU's best oneDNN kernels, as
  many intra-op threads as cores; what the pipeline did before the fix;
- ``fast_avx2``: the same, with only oneDNN capped to AVX2: the instruction
  set's share of the price;
- ``reproducible``: the default: AVX2, 2 intra-op threads, pinned OpenBLAS;
- ``..._nondeterministic``: the same without ``enable_op_determinism``: the
  determinism settings' share;
- ``input_only``: the augmented input pipeline alone, no model: its share.

Training passes only (no validation pass), scaled to a real epoch: 28,709
FER2013 faces, 22,500 aclImdb training reviews. The CPU model, its instruction
sets and the load average go into ``bench/results/numerics.json``.

    .venv/bin/python -m bench.bench_numerics
    .venv/bin/python -m bench.bench_numerics --workloads cnn cnn_augmented --configs fast fast_avx2 reproducible
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import load_average, machine_info, write_result

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench/results/numerics.json"
REAL_FACES, REAL_REVIEWS = 28_709, 22_500
EPOCHS = 6
CONFIGS = {
    "fast": ({"EAGER_PIPELINE_NUMERICS": "fast"}, True),
    "fast_avx2": ({"EAGER_PIPELINE_NUMERICS": "fast", "ONEDNN_MAX_CPU_ISA": "AVX2"}, True),
    "reproducible": ({"EAGER_PIPELINE_NUMERICS": "reproducible"}, True),
    "fast_nondeterministic": ({"EAGER_PIPELINE_NUMERICS": "fast"}, False),
    "reproducible_nondeterministic": ({"EAGER_PIPELINE_NUMERICS": "reproducible"}, False),
}
WORKLOADS = ("cnn", "cnn_augmented", "rnn")


def make_project(dest: Path) -> Path:
    """A project copy with the default samples' FER2013 and IMDB TFRecords."""
    return common.make_project(
        dest, stages=["download_fer2013", "tfrecords_fer2013", "download_imdb", "tfrecords_imdb"]
    )


def worker(workload: str, deterministic: bool) -> dict:
    """Runs in the project copy (its working folder, first on sys.path under ``python -m``), in a process of
    its own: seconds per epoch of ``workload``."""
    import stages  # noqa: F401  (pins the numerics, or not, before TF loads)

    # isort: split
    import keras
    import tensorflow as tf

    from stages.common.input_pipelines import image_batches, read_spec, text_batches
    from stages.common.params import load_params

    keras.utils.set_random_seed(42)
    p: Any  # the params of one workload's stage or the other's
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if workload == "rnn":
        from stages.train_sentiment_rnn import STAGE, TrainSentimentRnnParams, new_trainer

        _, p = load_params(STAGE, TrainSentimentRnnParams)
        data = Path("data/tfrecords/imdb")
        trainer = new_trainer(int(read_spec(data)["vocab_size"]), p)

        def batches(epoch):
            return text_batches(
                data, "train", p.batch_size, shuffle_seed=42, epoch=epoch, bucket_boundaries=p.bucket_boundaries
            )

        examples, real = read_spec(data)["splits"]["train"]["examples"], REAL_REVIEWS
    else:
        from stages.common.training import Trainer
        from stages.models.emotion_cnn import build_emotion_cnn
        from stages.train_emotion_cnn import STAGE, TrainEmotionCnnParams, WeightedCrossEntropy, augment_batches

        _, p = load_params(STAGE, TrainEmotionCnnParams)
        data = Path("data/tfrecords/fer2013")
        trainer = Trainer(
            build_emotion_cnn(p.block_filters, p.dropout, p.head_filters),
            keras.optimizers.Adam(p.learning_rate),
            WeightedCrossEntropy(None),
            metrics={"accuracy": keras.metrics.SparseCategoricalAccuracy},
        )

        def batches(epoch):
            plain = image_batches(data, "train", p.batch_size, shuffle_seed=42, epoch=epoch)
            return augment_batches(plain, 42, epoch, p.augment_shift) if workload != "cnn" else plain

        examples, real = read_spec(data)["splits"]["train"]["examples"], REAL_FACES
    seconds = []
    for epoch in range(EPOCHS):
        start = time.perf_counter()
        if workload == "input_only":
            for _ in batches(epoch):
                pass
        else:
            trainer.train_epoch(batches(epoch))
        seconds.append(time.perf_counter() - start)
    steady = min(seconds[1:])
    return {
        "epoch_seconds": [round(s, 3) for s in seconds],
        "examples": examples,
        "real_epoch_seconds": round(steady * real / examples, 1),
        "intra_op_threads": os.environ.get("TF_NUM_INTRAOP_THREADS", f"{os.cpu_count()} (cores)"),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
    }


def run_worker(project: Path, workload: str, env: dict, deterministic: bool) -> dict:
    load = load_average()
    command = [sys.executable, "-m", "bench.bench_numerics", "--worker", workload]
    if not deterministic:
        command.append("--nondeterministic")
    from stages.common.numerics import PINNED

    # Each variant decides its own numerics: none of the pinned settings leaks in from here.
    environment = {k: v for k, v in os.environ.items() if k not in PINNED}
    out = subprocess.run(
        command,
        cwd=project,
        capture_output=True,
        text=True,
        # The copy's stages (the working folder comes first under -m), this checkout's bench.
        env={**environment, **env, "PYTHONPATH": f"{project}{os.pathsep}{ROOT}", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if out.returncode != 0:
        raise SystemExit(f"{workload} worker failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "load_average_before": load}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=(*WORKLOADS, "input_only"))
    parser.add_argument("--nondeterministic", action="store_true")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument(
        "--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), help="fast and reproducible at least"
    )
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, not args.nondeterministic)))
        return

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_numerics_") as tmp:
        project = make_project(Path(tmp) / "project")
        if not {"fast", "reproducible"} <= set(args.configs):
            raise SystemExit("error: --configs: fast and reproducible are both needed for the price")
        for name in args.configs:
            env, deterministic = CONFIGS[name]
            for workload in args.workloads:
                results.setdefault(name, {})[workload] = run_worker(project, workload, env, deterministic)
                print(
                    f"{name:30s} {workload:14s} {results[name][workload]['real_epoch_seconds']:7.1f} s per real epoch",
                    flush=True,
                )
        results["input_only"] = run_worker(project, "input_only", CONFIGS["reproducible"][0], True)
    fast, repro = results["fast"], results["reproducible"]
    summary = {
        w: {
            "fast_s": fast[w]["real_epoch_seconds"],
            "reproducible_s": repro[w]["real_epoch_seconds"],
            "price": round(repro[w]["real_epoch_seconds"] / fast[w]["real_epoch_seconds"] - 1, 3),
        }
        for w in args.workloads
    }
    out = {
        "machine": machine_info(),
        "summary": summary,
        "runs": results,
        "input_only_real_epoch_seconds": results["input_only"]["real_epoch_seconds"],
        "note": "training passes only, fastest of epochs 2-6, scaled to 28,709 faces / 22,500 reviews; "
        "price = reproducible / fast - 1; 2 cores may be shared: see the load averages",
    }
    write_result(RESULTS, out)
    for workload, row in summary.items():
        print(
            f"{workload:14s} fast {row['fast_s']:6.1f} s  reproducible {row['reproducible_s']:6.1f} s  "
            f"price {row['price']:+.0%}"
        )
    print(
        f"input pipeline alone (augmented faces): {out['input_only_real_epoch_seconds']} s -> "
        f"{RESULTS.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
