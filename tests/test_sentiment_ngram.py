"""Stage ``train_sentiment_ngram``: the n-gram model (shapes, features, padding, determinism), the stage on
the sample (above chance, resume, export, predict --kind ngram) and its bad inputs (one line, outputs kept)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import project_from_pipeline_run, run, stage_env, stage_params
from helpers import interrupted_and_resumed
from stages.common.cli import StageError
from stages.common.params import validate
from stages.models.sentiment_ngram import nb_ratios, ngram_features, set_nb_ratios
from stages.train_sentiment_ngram import TrainSentimentNgramParams, network, train_model

DATA = Path("data/tfrecords/imdb")
METRICS = Path("metrics/sentiment_ngram.json")
MODEL = Path("models/sentiment_ngram")
# The gate (params.yaml gate.train_sentiment_ngram): chance is 0.5; the default sample gives 0.92.
ACCURACY_FLOOR = 0.85
AUC_FLOOR = 0.90


def padded(ids: list[list[int]], length: int, fill: int = 0) -> np.ndarray:
    batch = np.full((len(ids), length), fill, np.int64)
    for row, review in enumerate(ids):
        batch[row, : len(review)] = review
    return batch


def random_model(vocab_size: int, buckets: int, seed: int = 0):
    """A model with random weights and ratios (zeros would hide any feature a bug adds or drops)."""
    model = network(vocab_size, stage_params("train_sentiment_ngram", TrainSentimentNgramParams, buckets=buckets))
    rng = np.random.default_rng(seed)
    bag = model.get_layer("ngram_bag")
    bag.weight.assign(rng.normal(size=bag.weight.shape).astype(np.float32))
    bag.bias.assign(np.float32(0.3))
    set_nb_ratios(model, rng.normal(size=bag.nb_ratio.shape).astype(np.float32))
    return model


# --- the model ------------------------------------------------------------------------------------


def test_shapes_and_parameter_count() -> None:
    model = network(50, stage_params("train_sentiment_ngram", TrainSentimentNgramParams, buckets=64))
    logits = model({"token_indexes": padded([[5, 6, 2], [7, 2]], 3), "sequence_length": np.array([3, 2])}).numpy()
    assert logits.shape == (2, 2) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits[:, 0], 0.0)  # a logistic regression read as two classes
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    fixed = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert trainable == 50 + 64 + 1  # a weight per unigram and bigram bucket, and the bias
    assert fixed == 50 + 64  # the NB ratios


def test_features_are_the_distinct_real_unigrams_and_bigrams() -> None:
    vocab_size, buckets = 20, 1 << 20
    review = [5, 6, 5, 6, 7, 2]  # "5 6" twice: one feature
    ids, present = ngram_features(
        padded([review, review], 9, fill=9), np.array([6, 3]), vocab_size, buckets
    )  # the second row: only its first 3 tokens are real
    ids, present = ids.numpy(), present.numpy()
    assert ids.shape == present.shape == (2, 2 * 9 - 1)
    first = set(ids[0][present[0]].tolist())
    assert {5, 6, 7, 2} <= first and len(first) == 4 + 4  # 4 unigrams, bigrams 56 65 67 72
    assert all(vocab_size <= i < vocab_size + buckets for i in first - {5, 6, 7, 2})
    second = set(ids[1][present[1]].tolist())  # "5 6 5": unigrams 5 6, bigrams 56 65 (the first row's)
    assert {5, 6} < second and second - {5, 6} < first - {5, 6, 7, 2} and len(second) == 4
    assert present.sum(axis=1).tolist() == [8, 4]


def test_padding_and_tokens_past_the_length_do_not_change_the_logits() -> None:
    model = random_model(50, 97)
    rng = np.random.default_rng(1)
    review = rng.integers(3, 50, size=23).tolist() + [2]
    other = rng.integers(3, 50, size=60).tolist() + [2]
    lengths = np.array([len(review)])
    alone = model({"token_indexes": padded([review], len(review)), "sequence_length": lengths}).numpy()
    assert abs(alone[0, 1]) > 0.1
    for length, fill in [(len(review) + 40, 0), (len(review) + 7, 11)]:  # padding, then real ids past the length
        logits = model({"token_indexes": padded([review], length, fill), "sequence_length": lengths}).numpy()
        np.testing.assert_allclose(logits, alone, rtol=1e-5, atol=1e-5)
    in_batch = model(
        {
            "token_indexes": padded([review, other, review], len(review) + 300),
            "sequence_length": np.array([len(review), len(other), len(review)]),
        }
    ).numpy()
    np.testing.assert_allclose(in_batch[[0, 2]], np.repeat(alone, 2, axis=0), rtol=1e-5, atol=1e-5)
    other_alone = model({"token_indexes": padded([other], len(other)), "sequence_length": np.array([len(other)])})
    np.testing.assert_allclose(in_batch[1:2], other_alone.numpy(), rtol=1e-5, atol=1e-5)

    # The test has teeth: one more real token (its unigram and bigram) changes the score.
    longer = model({"token_indexes": padded([review + [7]], len(review) + 1), "sequence_length": lengths + 1})
    assert abs(float(longer.numpy()[0, 1]) - float(alone[0, 1])) > 1e-3


def test_nb_ratios_are_the_log_count_ratios_of_distinct_ngrams() -> None:
    vocab_size, buckets, alpha = 10, 16, 1.0
    reviews = [[3, 3, 4, 2], [3, 5, 2], [4, 6, 2], [6, 6, 6, 2]]
    labels = np.array([1, 1, 0, 0])
    x = {"token_indexes": padded(reviews, 4), "sequence_length": np.array([len(r) for r in reviews])}
    ratios = nb_ratios([(x, labels)], vocab_size, buckets, alpha)
    assert ratios.shape == (vocab_size + buckets,) and ratios.dtype == np.float32
    ids, present = (t.numpy() for t in ngram_features(x["token_indexes"], x["sequence_length"], vocab_size, buckets))
    counts = np.zeros((2, vocab_size + buckets))
    for row, label in enumerate(labels):
        counts[label, sorted(set(ids[row][present[row]].tolist()))] += 1  # each distinct n-gram once
    p, q = alpha + counts[1], alpha + counts[0]
    np.testing.assert_allclose(ratios, np.log(p / p.sum()) - np.log(q / q.sum()), rtol=1e-6)
    assert counts[1, 3] == 2 and counts[0, 6] == 2  # "3 3" and "6 6 6" count once in their review
    assert ratios[3] > 0 > ratios[6]


def test_bad_params_are_named() -> None:
    with pytest.raises(StageError, match=r"train_sentiment_ngram\.bucket_boundaries: must be null or"):
        validate(TrainSentimentNgramParams, {"bucket_boundaries": [200, 100]}, "train_sentiment_ngram")
    with pytest.raises(StageError, match=r"train_sentiment_ngram\.nb_alpha: must be greater than 0"):
        validate(TrainSentimentNgramParams, {"nb_alpha": 0.0}, "train_sentiment_ngram")


# --- the stage on the default sample -----------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, pipeline_run: Path) -> Path:
    """A project copy with the default IMDB sample, its TFRecords, and the stage run once at default params
    (what the session's pipeline run wrote: tests/conftest.py)."""
    return project_from_pipeline_run(
        pipeline_run,
        tmp_path_factory.mktemp("sentiment_ngram") / "project",
        ("download_imdb", "tfrecords_imdb", "train_sentiment_ngram"),
    )


def test_stage_beats_chance_by_a_clear_margin(project: Path) -> None:
    metrics = json.loads((project / METRICS).read_text())
    assert metrics["test_accuracy"] > ACCURACY_FLOOR and metrics["test_auc"] > AUC_FLOOR, metrics
    rnn_keys = {"valid_accuracy", "test_accuracy", "test_auc", "test_precision", "test_recall", "test_f1"}
    assert rnn_keys | {"best_epoch", "epochs", "vocab_size", "test_reviews"} <= set(metrics)
    params = TrainSentimentNgramParams(**yaml.safe_load((project / "params.yaml").read_text())["train_sentiment_ngram"])
    assert metrics["parameters"] == metrics["vocab_size"] + params.buckets + 1 and metrics["test_reviews"] == 2500
    assert 1 <= metrics["best_epoch"] <= metrics["epochs"] <= params.max_epochs

    plots = project / "plots/train_sentiment_ngram"
    history = plots.joinpath("history.tsv").read_text().splitlines()
    assert history[0] == "epoch\tloss\taccuracy\tval_loss\tval_accuracy" and len(history) == metrics["epochs"] + 1
    best = float(history[metrics["best_epoch"]].split("\t")[4])
    assert best == max(float(line.split("\t")[4]) for line in history[1:])
    assert metrics["valid_accuracy"] == pytest.approx(best, abs=1e-6)  # the best weights were restored
    roc = np.loadtxt(plots / "roc.tsv", skiprows=1)
    assert abs(np.trapezoid(roc[::-1, 1], roc[::-1, 0]) - metrics["test_auc"]) < 1e-3
    assert not [p for p in (project / "checkpoints/train_sentiment_ngram").iterdir() if p.name != "README.txt"]


def small_split(project: Path, tmp_path: Path) -> Path:
    """The sample's TFRecords with the 250 validation reviews as the training split too (quick to train)."""
    data = tmp_path / "imdb"
    shutil.copytree(project / DATA, data)
    for shard in data.glob("valid-*"):
        shutil.copy(shard, data / shard.name.replace("valid-", "train-", 1))
    spec = json.loads((data / "spec.json").read_text())
    valid = spec["splits"]["valid"]
    spec["splits"]["train"] = {**valid, "files": [n.replace("valid-", "train-", 1) for n in valid["files"]]}
    (data / "spec.json").write_text(json.dumps(spec))
    return data


def test_same_seed_gives_the_same_weights(project: Path, tmp_path: Path) -> None:
    data = small_split(project, tmp_path)
    p = stage_params("train_sentiment_ngram", TrainSentimentNgramParams, buckets=4096, max_epochs=2, patience=5)
    first, _ = train_model(p, 7, data, None)
    second, _ = train_model(p, 7, data, None)
    other, _ = train_model(p, 8, data, None)
    for a, b in zip(first.model.weights, second.model.weights, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    assert not np.array_equal(np.array(first.model.weights[0]), np.array(other.model.weights[0]))  # order differs


def test_interrupted_training_resumes_to_the_same_weights(project: Path, tmp_path: Path) -> None:
    data = small_split(project, tmp_path)
    p = stage_params(
        "train_sentiment_ngram",
        TrainSentimentNgramParams,
        buckets=4096,
        max_epochs=3,
        patience=10,
        checkpoint_every_s=0.0,
    )
    checkpoints = tmp_path / "ckpt"
    reference, reference_history, resumed, history, seen = interrupted_and_resumed(train_model, p, data, checkpoints)
    assert seen == [2] and len(history) == 3  # only the missing epoch ran
    for a, b in zip(history, reference_history, strict=True):
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-6)
    for a, b in zip(resumed.model.weights, reference.model.weights, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)


def test_exported_model_reloads_with_the_same_logits(project: Path) -> None:
    import tensorflow as tf

    from stages.common.input_pipelines import read_spec, text_batches

    spec = read_spec(project / DATA)
    p = TrainSentimentNgramParams(**yaml.safe_load((project / "params.yaml").read_text())["train_sentiment_ngram"])
    model = network(spec["vocab_size"], p)
    model.load_weights(project / MODEL / "model.weights.h5")
    assert np.abs(np.array(model.get_layer("ngram_bag").nb_ratio) - 1).max() > 0.1  # the fitted ratios came back
    served = tf.saved_model.load(str(project / MODEL / "saved_model"))  # plain TF, no Keras objects
    assert int(served.max_words.numpy()) == spec["max_words"]
    compared = 0
    for features, _ in text_batches(project / DATA, "test", 128).take(3):
        expected = model(features, training=False).numpy()
        outputs = served.serve(features["token_indexes"], features["sequence_length"])
        np.testing.assert_allclose(outputs["logits"].numpy(), expected, rtol=1e-5, atol=1e-5)
        compared += len(expected)
    assert compared == 384


def test_predict_kind_ngram_scores_files_like_the_model(project: Path) -> None:
    from stages.common.input_pipelines import text_batches

    features, target = next(text_batches(project / DATA, "test", 4, metadata=True).as_numpy_iterator())
    files = [
        project / "data/raw/imdb/aclImdb/test" / ("neg", "pos")[label] / f"{review_id}_{rating}.txt"
        for label, review_id, rating in zip(target, features["review_id"], features["rating"], strict=True)
    ]
    result = run(
        [
            "python",
            "-m",
            "stages.apps.sentiment_predict",
            "--kind",
            "ngram",
            *[a for f in files for a in ("--file", str(f))],
        ],
        project,
    )
    lines = result.stdout.splitlines()
    p = TrainSentimentNgramParams(**yaml.safe_load((project / "params.yaml").read_text())["train_sentiment_ngram"])
    model = network(int(json.loads((project / DATA / "spec.json").read_text())["vocab_size"]), p)
    model.load_weights(project / MODEL / "model.weights.h5")
    logits = model({"token_indexes": features["token_indexes"], "sequence_length": features["sequence_length"]})
    expected = 1 / (1 + np.exp(-logits.numpy()[:, 1]))
    assert [line.split("\t")[1] for line in lines] == [str(f) for f in files]
    np.testing.assert_allclose([float(line.split("\t")[0]) for line in lines], expected, atol=6e-5)

    missing = run(
        ["python", "-m", "stages.apps.sentiment_predict", "--kind", "ngram", "Great film."],
        project / "data",
        check=False,
    )
    assert missing.returncode == 2 and missing.stderr == (
        "error: models/sentiment_ngram/saved_model: no exported model here "
        "(run `dvc repro train_sentiment_ngram`, or pass --model)\n"
    )


# --- bad inputs: one line, exit 2, the previous outputs kept --------------------------------------


def outputs(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for top in ("metrics", "models", "plots")
        for p in sorted((root / top).rglob("*"))
        if p.is_file()
    }


def one_error(root: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "stages.train_sentiment_ngram"],
        cwd=root,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def broken_inputs(root: Path) -> list[tuple[str, str]]:
    data = root / DATA
    shard = sorted(data.glob("train-*"))[0]
    vocab = data / "imdb_vocab.txt"
    return [
        ("params", "error: params.yaml: train_sentiment_ngram.buckets: must be greater than or equal to 1 (got 0)"),
        ("vocabulary", f"error: {DATA}/imdb_vocab.txt: {len(vocab.read_text().splitlines()) - 1} tokens, spec.json"),
        ("shard", f"error: {shard.relative_to(root)}:"),
        ("no data", f"error: {DATA}: not found (run the stage that writes this dataset first)"),
    ]


@pytest.mark.parametrize("case", ["params", "vocabulary", "shard", "no data"])
def test_bad_inputs_are_one_line_and_keep_the_outputs(project: Path, tmp_path: Path, case: str) -> None:
    root = tmp_path / "project"
    shutil.copytree(project, root, ignore=shutil.ignore_patterns("raw", "downloads", ".git"))
    before = outputs(root)
    expected = dict(broken_inputs(root))[case]
    data = root / DATA
    if case == "params":
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["train_sentiment_ngram"]["buckets"] = 0
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    elif case == "vocabulary":
        vocab = data / "imdb_vocab.txt"
        vocab.write_text("".join(vocab.read_text().splitlines(keepends=True)[:-1]))  # one token short
    elif case == "shard":
        shard = sorted(data.glob("train-*"))[0]
        shard.write_bytes(shard.read_bytes()[:-100])  # cut inside a record
    else:
        shutil.rmtree(data)
    assert one_error(root).startswith(expected)
    assert outputs(root) == before
