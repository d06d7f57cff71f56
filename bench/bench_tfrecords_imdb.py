"""Benchmark: IMDB reviews -> TFRecords, the ``tfrecords_imdb`` stage against the original's way.

Generates the ``full`` sample preset (25,000 + 25,000 reviews, stages/samples/imdb.py)
in a temporary folder, then times in this one process:

- ``stage``: ``stages.tfrecords_imdb.convert`` (all three splits, vocabulary, spec), its
  process pool included;
- ``baseline``: the original tutorial's strategy with the same preprocessing
  (stages/datasets/imdb_text.py) and the same splits: one process tokenizes the training
  reviews to count words, then for every review builds a ``tf.train.SequenceExample``
  token by token (``feature_list.feature.add().int64_list.value.append(id)``) and
  writes it with one ``tf.io.TFRecordWriter`` per split.

With ``--raw DIR`` it converts an aclImdb folder you have instead (the real 50,000
reviews: ``--raw ~/aclImdb --output bench/results/tfrecords_imdb_real.json``); both sides
then carve the validation split by movie where ``train/urls_*.txt`` exist, as the stage does.
Both produce the same records (checked after timing). Prints a table and writes
``bench/results/tfrecords_imdb.json``. Target: the stage at least 3x faster on 2 cores.
The machine may be shared: the load average before each run is recorded with it.

    .venv/bin/python -m bench.bench_tfrecords_imdb [--per-class N | --raw DIR] [--workers W]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench.common import load_average, write_result

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = ROOT / "bench/results/tfrecords_imdb.json"
SEED = 42
TARGET_SPEEDUP = 3.0


def stage_params():
    """The stage's params as params.yaml sets them."""
    from stages.common.params import load_params
    from stages.tfrecords_imdb import TFRecordsImdbParams

    return load_params("tfrecords_imdb", TFRecordsImdbParams, ROOT / "params.yaml")[1]


def run_stage(raw: Path, out_dir: Path, workers: int) -> dict:
    from stages.tfrecords_imdb import convert

    params = stage_params().model_copy(update={"workers": workers})
    out_dir.mkdir(parents=True)
    return convert(raw, out_dir, params, SEED)


def run_baseline(raw: Path, out_dir: Path) -> None:
    """The original's single-writer loop, with this project's preprocessing and splits."""
    import tensorflow as tf

    from stages.datasets.imdb_text import build_vocabulary, count_tokens, encode, save_vocabulary
    from stages.tfrecords_imdb import SPLITS, find_reviews, movie_of, split_reviews

    p = stage_params()
    splits = split_reviews(
        find_reviews(raw, "train"), find_reviews(raw, "test"), p.valid_fraction, SEED, movie_of(raw, "train")
    )
    texts = {r.path: Path(r.path).read_text(encoding="utf-8") for name in SPLITS for r in splits[name]}
    vocab = build_vocabulary(count_tokens(texts[r.path] for r in splits["train"]), p.min_word_frequency)
    out_dir.mkdir(parents=True)
    save_vocabulary(vocab, out_dir / "imdb_vocab.txt")
    for name in SPLITS:
        with tf.io.TFRecordWriter(str(out_dir / f"{name}.tfrecord")) as writer:
            for r in splits[name]:
                ids = encode(texts[r.path], vocab, p.max_words)
                example = tf.train.SequenceExample()
                context = example.context.feature
                context["sequence_length"].int64_list.value.append(len(ids))
                context["target"].int64_list.value.append(r.target)
                context["rating"].int64_list.value.append(r.rating)
                context["review_id"].int64_list.value.append(r.review_id)
                steps = example.feature_lists.feature_list["token_indexes"]
                for index in ids:
                    steps.feature.add().int64_list.value.append(index)
                writer.write(example.SerializeToString())


def same_records(stage_dir: Path, baseline_dir: Path) -> bool:
    """The stage's shards hold the baseline's records (compared as parsed messages)."""
    import tensorflow as tf

    from stages.common.tfrecords import read_records, shard_paths
    from stages.tfrecords_imdb import SPLITS

    if (stage_dir / "imdb_vocab.txt").read_bytes() != (baseline_dir / "imdb_vocab.txt").read_bytes():
        return False
    for name in SPLITS:
        ours = [r for path in shard_paths(stage_dir, name) for r in read_records(path)]
        theirs = [r.numpy() for r in tf.data.TFRecordDataset(str(baseline_dir / f"{name}.tfrecord"))]
        if len(ours) != len(theirs) or any(
            tf.train.SequenceExample.FromString(a) != tf.train.SequenceExample.FromString(b)
            for a, b in zip(ours, theirs, strict=True)
        ):
            return False
    return True


def timed(label: str, fn, *args) -> tuple[float, list[float]]:
    load = load_average()
    start = time.perf_counter()
    fn(*args)
    seconds = time.perf_counter() - start
    print(f"{label}: {seconds:.2f} s (load average before {load[0]:.2f})", file=sys.stderr)
    return seconds, load


def main() -> None:
    from stages.samples.imdb import PRESETS, write_sample

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=PRESETS["full"], help="reviews per class and split")
    parser.add_argument("--raw", type=Path, help="an aclImdb folder to convert instead of the generated sample")
    parser.add_argument("--workers", type=int, default=2, help="the stage's workers param")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    import google.protobuf
    import numpy as np
    import tensorflow as tf  # imported before timing: neither side pays for it

    with tempfile.TemporaryDirectory(prefix="bench-imdb-") as tmp_name:
        tmp = Path(tmp_name)
        if args.raw is None:
            print(f"generating {4 * args.per_class} reviews ...", file=sys.stderr)
            raw = tmp / "raw/aclImdb"
            write_sample(raw, SEED, per_class=args.per_class)
        else:
            raw = args.raw.expanduser().resolve()
            for path in raw.glob("*/*/*.txt"):  # into the page cache: both sides then read warm files
                path.read_bytes()
        reviews = sum(1 for _ in raw.glob("*/*/*.txt"))
        stage_s, stage_load = timed("stage", run_stage, raw, tmp / "stage", args.workers)
        baseline_s, baseline_load = timed("baseline", run_baseline, raw, tmp / "baseline")
        identical = same_records(tmp / "stage", tmp / "baseline")
        spec = json.loads((tmp / "stage/spec.json").read_text())

    speedup = baseline_s / stage_s
    results = {
        "data": str(args.raw) if args.raw else f"stages/samples/imdb.py, {args.per_class} per class and split",
        "reviews": reviews,
        "stage": {
            "seconds": round(stage_s, 3),
            "reviews_per_s": round(reviews / stage_s, 1),
            "workers": args.workers,
            "load_average_before": stage_load,
        },
        "baseline": {
            "seconds": round(baseline_s, 3),
            "reviews_per_s": round(reviews / baseline_s, 1),
            "load_average_before": baseline_load,
        },
        "speedup": round(speedup, 2),
        "target_speedup": TARGET_SPEEDUP,
        "target_met": speedup >= TARGET_SPEEDUP,
        "same_records": identical,
        "vocab_size": spec["vocab_size"],
        "note": "2 cores may be shared with other processes; see the load averages",
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
            "protobuf": google.protobuf.__version__,
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.output, results)

    print(f"\n{'':10} {'seconds':>9} {'reviews/s':>10}")
    for name in ("stage", "baseline"):
        print(f"{name:10} {results[name]['seconds']:9.2f} {results[name]['reviews_per_s']:10.0f}")
    print(
        f"speed-up {speedup:.2f}x (target {TARGET_SPEEDUP:.0f}x: {'met' if results['target_met'] else 'NOT met'}); "
        f"same records: {identical}; {reviews} reviews, {os.cpu_count()} cores -> {args.output}"
    )


if __name__ == "__main__":
    main()
