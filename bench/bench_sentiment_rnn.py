"""Benchmark: training throughput of the sentiment RNN, eager vs ``tf.function`` vs Keras ``fit``.

Builds the default IMDB sample's TFRecords in a temporary project (not timed),
then trains the ``train_sentiment_rnn`` model (default params: LSTM(64),
batch 64, length buckets) on the training split, in this one process, three ways:

- ``eager``: ``Trainer(run_eagerly=True).train_step``, the tutorial's
  GradientTape step run op by op (the LSTM's time loop in Python);
- ``tf_function``: ``Trainer.train_step`` compiled with ``tf.function``, what the
  stage runs;
- ``keras_fit``: the same model compiled with the same optimizer, loss and
  accuracy metric, ``model.fit`` one epoch at a time.

Each variant reads the same batches (``input_pipelines.text_batches``, the same
seed and epochs) and gets one warm-up epoch (tracing) first. The compiled
variants are timed over whole epochs, best of ``--repeats`` alternating runs
(the 2 cores may be shared); the eager step is slow, so it is timed on the
first ``--eager-batches`` batches of an epoch, and the compiled step on the very
same batches for the ratio. Targets: ``tf_function`` at least 3x ``eager`` and
within 10 % of ``keras_fit``. Writes ``bench/results/sentiment_rnn.json``.

    .venv/bin/python -m bench.bench_sentiment_rnn [--repeats 3] [--eager-batches 6]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from bench import common
from bench.common import load_average, write_result

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


RESULTS = ROOT / "bench/results/sentiment_rnn.json"
SEED = 42
TARGET_EAGER_SPEEDUP = 3.0
TARGET_FIT_GAP = 0.10


def make_project(dest: Path) -> Path:
    """A project copy with the default IMDB sample's TFRecords."""

    def sample(params: dict[str, Any]) -> None:
        params["imdb"]["source"] = "sample"

    return common.make_project(dest, sample, stages=["download_imdb", "tfrecords_imdb"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eager-batches", type=int, default=6)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_sentiment_") as tmp:
        data = make_project(Path(tmp) / "project") / "data/tfrecords/imdb"
        result = measure(data, args.repeats, args.eager_batches)
    write_result(RESULTS, result)
    print(f"{'variant':14s} {'examples/s':>11s}")
    for name in ("eager", "tf_function_same_batches", "tf_function", "keras_fit"):
        print(f"{name:26s} {result[name]['examples_per_s']:11.1f}")
    print(
        f"tf.function / eager: {result['speedup_vs_eager']:.1f}x (target >= {TARGET_EAGER_SPEEDUP}); "
        f"tf.function / fit: {result['ratio_to_fit']:.3f} (target >= {1 - TARGET_FIT_GAP}) "
        f"-> {RESULTS.relative_to(ROOT)}"
    )


def measure(data: Path, repeats: int, eager_batches: int) -> dict:
    import keras

    from stages.common.input_pipelines import text_batches
    from stages.common.params import load_params
    from stages.common.seeding import seed_everything
    from stages.train_sentiment_rnn import STAGE, TrainSentimentRnnParams, network, new_trainer

    _, p = load_params(STAGE, TrainSentimentRnnParams, ROOT / "params.yaml")  # the stage's params
    vocab_size = json.loads((data / "spec.json").read_text())["vocab_size"]

    def batches(epoch: int):
        return text_batches(
            data, "train", p.batch_size, shuffle_seed=SEED, epoch=epoch, bucket_boundaries=p.bucket_boundaries
        )

    def run_steps(step, dataset) -> tuple[int, float]:
        examples, start = 0, time.perf_counter()
        for x, y in dataset:
            step(x, y)
            examples += int(y.shape[0])
        return examples, time.perf_counter() - start

    seed_everything(SEED)
    compiled = new_trainer(vocab_size, p)
    seed_everything(SEED)
    eager = new_trainer(vocab_size, p.model_copy(update={"run_eagerly": True}))
    seed_everything(SEED)
    model = network(vocab_size, p)  # the same network as new_trainer's, for Keras' fit
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=p.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )

    class CountSteps(keras.callbacks.Callback):
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            CountSteps.steps += 1

    # Length buckets leave the dataset's cardinality unknown: fit warns that the input "ran out
    # of data" at the end of each epoch, though it trained on every batch (counted below).
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    load = load_average()
    run_steps(compiled.train_step, batches(0))  # warm-up: traces the step
    model.fit(batches(0), epochs=1, verbose=0, shuffle=False)
    timings: dict[str, list[tuple[int, float]]] = {"tf_function": [], "keras_fit": []}
    for repeat in range(repeats):
        epoch = 1 + repeat
        timings["tf_function"].append(run_steps(compiled.train_step, batches(epoch)))
        sizes = [int(y.shape[0]) for _, y in batches(epoch)]
        CountSteps.steps = 0
        start = time.perf_counter()
        model.fit(batches(epoch), epochs=1, verbose=0, shuffle=False, callbacks=[CountSteps()])
        timings["keras_fit"].append((sum(sizes), time.perf_counter() - start))
        if CountSteps.steps != len(sizes):
            raise RuntimeError(f"fit ran {CountSteps.steps} steps of {len(sizes)} batches")

    subset = list(batches(repeats + 1).take(eager_batches + 1))
    run_steps(eager.train_step, subset[:1])  # first call builds the optimizer's slots
    eager_timing = run_steps(eager.train_step, subset[1:])
    same = [run_steps(compiled.train_step, subset[1:]) for _ in range(repeats)]

    def best(runs: list[tuple[int, float]]) -> dict:
        examples, seconds = min(runs, key=lambda r: r[1] / r[0])
        return {
            "examples": examples,
            "seconds": round(seconds, 3),
            "examples_per_s": round(examples / seconds, 1),
            "all_examples_per_s": [round(n / s, 1) for n, s in runs],
        }

    result: dict[str, Any] = {
        "eager": best([eager_timing]),
        "tf_function_same_batches": best(same),
        "tf_function": best(timings["tf_function"]),
        "keras_fit": best(timings["keras_fit"]),
    }
    result["eager"]["tokens_per_batch"] = [int(x["token_indexes"].shape[1]) for x, _ in subset[1:]]
    result |= {
        "speedup_vs_eager": round(
            result["tf_function_same_batches"]["examples_per_s"] / result["eager"]["examples_per_s"], 2
        ),
        "ratio_to_fit": round(result["tf_function"]["examples_per_s"] / result["keras_fit"]["examples_per_s"], 3),
        "params": {
            "cell": p.cell,
            "units": p.units,
            "batch_size": p.batch_size,
            "bucket_boundaries": p.bucket_boundaries,
            "training_reviews": result["tf_function"]["examples"],
        },
        "target_speedup_vs_eager": TARGET_EAGER_SPEEDUP,
        "target_ratio_to_fit": 1 - TARGET_FIT_GAP,
        "load_average_before": load,
        "note": "training split of the default sample; compiled variants: best of alternating whole epochs; "
        "eager: the first batches of an epoch, compared with the compiled step on the same batches",
    }
    result["target_met"] = (
        result["speedup_vs_eager"] >= TARGET_EAGER_SPEEDUP and result["ratio_to_fit"] >= 1 - TARGET_FIT_GAP
    )
    return result


if __name__ == "__main__":
    main()
