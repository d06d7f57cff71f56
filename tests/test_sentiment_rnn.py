"""Stage ``train_sentiment_rnn`` (tutorial 08): padding invariance, resume, export, the quality gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import yaml

from conftest import copy_project, project_files, project_from_pipeline_run, run, stage_params
from helpers import interrupted_and_resumed
from stages.common.cli import StageError
from stages.models.sentiment_rnn import recurrent_states
from stages.train_sentiment_rnn import TrainSentimentRnnParams, network

DATA = Path("data/tfrecords/imdb")
# The quality gate, on the default sample (2,250 training reviews) at the default params. See
# test_stage_reaches_the_quality_floor for why it is this and not the bag-of-words 0.77.
ACCURACY_FLOOR = 0.70
AUC_FLOOR = 0.78


def padded(ids: list[list[int]], length: int) -> np.ndarray:
    batch = np.zeros((len(ids), length), np.int64)
    for row, review in enumerate(ids):
        batch[row, : len(review)] = review
    return batch


# --- the model ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_does_not_change_the_logits(cell: Literal["lstm", "gru"]) -> None:
    check_padding_invariance(
        stage_params("train_sentiment_rnn", TrainSentimentRnnParams, cell=cell, units=8, embedding_dim=6, dense_units=8)
    )

    # The test has teeth: reading the recurrent output at the last *padded* step differs.
    import keras

    model = network(
        50,
        stage_params(
            "train_sentiment_rnn", TrainSentimentRnnParams, cell=cell, units=8, embedding_dim=6, dense_units=8
        ),
    )
    review = np.random.default_rng(0).integers(3, 50, size=23).tolist() + [2]
    steps = keras.Model(model.inputs, model.get_layer("rnn").output)
    seq = steps(
        {"token_indexes": padded([review], len(review) + 300), "sequence_length": np.array([len(review)])}
    ).numpy()
    assert np.abs(seq[0, -1] - seq[0, len(review) - 1]).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [{"bidirectional": True}, {"readout": "max"}, {"readout": "mean_max", "bidirectional": True, "cell": "gru"}],
)
def test_bidirectional_and_pooled_readouts_ignore_padding(options: dict) -> None:
    check_padding_invariance(
        stage_params("train_sentiment_rnn", TrainSentimentRnnParams, units=8, embedding_dim=6, dense_units=8, **options)
    )


def test_word_dropout_replaces_words_by_unk_in_training_only() -> None:
    """A share of about ``word_dropout`` of the words becomes <unk> in training, the same ones for the same
    seed; padding and <eos> never change; at inference the layer passes the ids through."""
    import keras

    from stages.common.seeding import seed_everything
    from stages.datasets.imdb_text import EOS_ID, PAD_ID, UNK_ID

    p = stage_params(
        "train_sentiment_rnn", TrainSentimentRnnParams, word_dropout=0.3, units=4, embedding_dim=4, dense_units=4
    )
    rng = np.random.default_rng(0)
    reviews = [rng.integers(3, 50, size=n).tolist() + [EOS_ID] for n in (400, 250, 30)]
    tokens = padded(reviews, 401)

    def dropped_words(training: bool) -> np.ndarray:
        seed_everything(5)
        model = network(50, p)
        return keras.Model(model.inputs, model.get_layer("word_dropout").output)(
            {"token_indexes": tokens, "sequence_length": np.array([len(r) for r in reviews])}, training=training
        ).numpy()

    out = dropped_words(True)
    changed = out != tokens
    assert set(out[changed]) == {UNK_ID}
    assert not changed[(tokens == PAD_ID) | (tokens == EOS_ID)].any()
    assert 0.25 < changed.sum() / (tokens > EOS_ID).sum() < 0.35
    np.testing.assert_array_equal(dropped_words(True), out)  # seeded: the same words again
    np.testing.assert_array_equal(dropped_words(False), tokens)
    check_padding_invariance(p)  # at inference the option changes nothing about padding


def test_nb_ratio_input_is_a_fixed_channel_of_unigram_ratios_beside_the_embedding() -> None:
    """Each word's NB log-count ratio, counted once per review on the training reviews, enters the
    recurrent layer as one more channel; it is never trained, padding's is 0, and it keeps padding
    invariance."""
    from stages.models.sentiment_ngram import nb_ratios
    from stages.models.sentiment_rnn import NB_RATIO, set_nb_ratios

    p = stage_params(
        "train_sentiment_rnn", TrainSentimentRnnParams, nb_ratio_input=True, units=4, embedding_dim=3, dense_units=4
    )
    # Word 5 in both positive reviews (twice in one: counted once), word 6 in the negative one only.
    reviews = [[5, 5, 7, 2], [5, 8, 2], [6, 7, 2]]
    labels = np.array([1, 1, 0])
    batch = {"token_indexes": padded(reviews, 5), "sequence_length": np.array([4, 3, 3])}
    ratios = nb_ratios([(batch, labels)], 10, buckets=0, alpha=1.0)
    # Counted here: each review's distinct words, plus the smoothing 1 of every word.
    pos = np.ones(10) + np.bincount([5, 7, 2, 5, 8, 2], minlength=10)
    neg = np.ones(10) + np.bincount([6, 7, 2], minlength=10)
    np.testing.assert_allclose(ratios, np.log(pos / pos.sum()) - np.log(neg / neg.sum()), rtol=1e-6)
    assert ratios[5] > 0 > ratios[6]

    from stages.common.seeding import seed_everything

    seed_everything(3)
    model = network(10, p)
    layer = model.get_layer(NB_RATIO)
    assert not layer.trainable_weights and all(w is not layer.table for w in model.trainable_weights)
    assert model.get_layer("rnn").input.shape[-1] == 3 + 1
    before = model(batch).numpy()
    set_nb_ratios(model, ratios)
    table = layer.get_weights()[0]
    assert table[0] == 0.0
    np.testing.assert_array_equal(table[1:], ratios[1:])
    assert np.abs(model(batch).numpy() - before).max() > 1e-4  # the network reads the channel
    check_padding_invariance(p, ratios=np.random.default_rng(1).normal(size=50))


def test_nb_bigram_channel_reads_the_ratio_of_the_pair_ending_at_each_word() -> None:
    """With ``nb_buckets`` the second channel at word t is the ratio of the n-gram baseline's bigram
    feature (t - 1, t); the first word has none (0). Padding invariance holds."""
    from stages.models.sentiment_ngram import ngram_features, pair_hashes
    from stages.models.sentiment_rnn import NB_RATIO, set_nb_ratios

    p = stage_params(
        "train_sentiment_rnn",
        TrainSentimentRnnParams,
        nb_ratio_input=True,
        nb_buckets=16,
        units=4,
        embedding_dim=3,
        dense_units=4,
        bidirectional=True,
    )
    model = network(50, p)
    ratios = np.random.default_rng(4).normal(size=50 + 16).astype(np.float32)
    set_nb_ratios(model, ratios)
    review = np.array([[7, 9, 9, 30, 2]])
    channels = model.get_layer(NB_RATIO)(review).numpy()[0]  # (T, 2)
    np.testing.assert_array_equal(channels[:, 0], ratios[review[0]])
    pairs = 50 + pair_hashes(review, 50).numpy()[0] % 16  # (7, 9), (9, 9), (9, 30), (30, 2)
    ids, present = ngram_features(review, np.array([5]), 50, 16)  # the baseline's features of the review
    assert set(ids.numpy()[present.numpy()]) == set(review[0]) | set(pairs)
    np.testing.assert_array_equal(channels[:, 1], np.concatenate([[0.0], ratios[pairs]]))
    check_padding_invariance(p, ratios=ratios)


def check_padding_invariance(p: TrainSentimentRnnParams, ratios: np.ndarray | None = None) -> None:
    from stages.common.seeding import seed_everything

    seed_everything(3)
    model = network(50, p)
    if ratios is not None:
        from stages.models.sentiment_rnn import set_nb_ratios

        set_nb_ratios(model, ratios)
    rng = np.random.default_rng(0)
    review = rng.integers(3, 50, size=23).tolist() + [2]  # ends with <eos>, as in the records
    other = rng.integers(3, 50, size=60).tolist() + [2]
    lengths = np.array([len(review)])

    alone = model({"token_indexes": padded([review], len(review)), "sequence_length": lengths}).numpy()
    # The same review padded to 24 + 40 and, in a batch with a longer review, to 24 + 300.
    short_pad = model({"token_indexes": padded([review], len(review) + 40), "sequence_length": lengths}).numpy()
    in_batch = model(
        {
            "token_indexes": padded([review, other, review], len(review) + 300),
            "sequence_length": np.array([len(review), len(other), len(review)]),
        }
    ).numpy()
    np.testing.assert_allclose(short_pad, alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(in_batch[[0, 2]], np.repeat(alone, 2, axis=0), rtol=1e-5, atol=1e-6)
    other_alone = model({"token_indexes": padded([other], len(other)), "sequence_length": np.array([len(other)])})
    np.testing.assert_allclose(in_batch[1:2], other_alone.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("cell", "nb_ratio_input"), [("lstm", False), ("gru", False), ("lstm", True)])
def test_heatmap_states_come_from_the_trained_layer(cell: Literal["lstm", "gru"], nb_ratio_input: bool) -> None:
    """Stepping the layer's own cell gives exactly the outputs the model reads (with the NB channel too)."""
    import keras

    from stages.common.seeding import seed_everything
    from stages.models.sentiment_rnn import set_nb_ratios

    seed_everything(4)
    model = network(
        40,
        stage_params(
            "train_sentiment_rnn",
            TrainSentimentRnnParams,
            cell=cell,
            units=6,
            embedding_dim=5,
            dense_units=4,
            nb_ratio_input=nb_ratio_input,
        ),
    )
    if nb_ratio_input:
        set_nb_ratios(model, np.random.default_rng(2).normal(size=40))
    ids = np.random.default_rng(1).integers(3, 40, size=17)
    hidden, memory = recurrent_states(model, ids)
    steps = keras.Model(model.inputs, model.get_layer("rnn").output)
    expected = steps({"token_indexes": ids[None, :], "sequence_length": np.array([len(ids)])}).numpy()[0]
    np.testing.assert_allclose(hidden, expected, rtol=1e-5, atol=1e-6)
    assert memory.shape == hidden.shape == (17, 6)
    if cell == "gru":
        np.testing.assert_array_equal(memory, hidden)  # a GRU's only state is h
    else:
        assert np.abs(memory - hidden).max() > 1e-3  # an LSTM's cell state c is not its output h


@pytest.mark.parametrize("value", [[], [200, 100], [100, 100], [0, 10]])
def test_bucket_boundaries_must_increase(value: list[int]) -> None:
    with pytest.raises(StageError, match="train_sentiment_rnn.bucket_boundaries: must be null or"):
        stage_params("train_sentiment_rnn", TrainSentimentRnnParams, bucket_boundaries=value)
    assert (
        stage_params("train_sentiment_rnn", TrainSentimentRnnParams, bucket_boundaries=None).bucket_boundaries is None
    )


# --- the stage on the default sample -----------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, pipeline_run: Path) -> Path:
    """A project copy with the default IMDB sample, its TFRecords, and the stage run once at default params
    (what the session's pipeline run wrote: tests/conftest.py)."""
    return project_from_pipeline_run(
        pipeline_run,
        tmp_path_factory.mktemp("sentiment_rnn") / "project",
        ("download_imdb", "tfrecords_imdb", "train_sentiment_rnn"),
    )


def test_stage_reaches_the_quality_floor(project: Path) -> None:
    """The gate: well above chance (0.5) on 2,500 balanced test reviews, so a broken model cannot pass.

    This is the "broken model" floor, not the bag-of-words one (a unigram logistic
    regression gets 0.77 on this sample): with 2,250 training reviews the tutorial's
    network overfits (train accuracy > 0.9 while validation stalls) before it learns
    negation and contrast, and lands at 0.74-0.78 whatever the learning rate, batch
    size or cell (README). An untrained network, labels out of step with the reviews
    or ids that do not match the vocabulary score about 0.5 (AUC about 0.5).
    """
    metrics = json.loads((project / "metrics/sentiment_rnn.json").read_text())
    assert metrics["test_accuracy"] > ACCURACY_FLOOR, metrics
    assert metrics["test_auc"] > AUC_FLOOR, metrics
    assert 0.0 < metrics["test_f1"] <= 1.0 and metrics["test_reviews"] == 2500
    params = TrainSentimentRnnParams(**yaml.safe_load((project / "params.yaml").read_text())["train_sentiment_rnn"])
    assert 1 <= metrics["best_epoch"] <= metrics["epochs"] <= params.max_epochs
    assert metrics["epochs"] == params.max_epochs or metrics["epochs"] - metrics["best_epoch"] == params.patience

    plots = project / "plots/train_sentiment_rnn"
    history = plots.joinpath("history.tsv").read_text().splitlines()
    assert history[0] == "epoch\tloss\taccuracy\tval_loss\tval_accuracy" and len(history) == metrics["epochs"] + 1
    best = float(history[metrics["best_epoch"]].split("\t")[4])
    assert best == max(float(line.split("\t")[4]) for line in history[1:])
    assert metrics["valid_accuracy"] == pytest.approx(best, abs=1e-6)  # the best weights were restored
    roc = np.loadtxt(plots / "roc.tsv", skiprows=1)
    assert roc.shape[1] == 3 and roc[:, :2].min() >= 0 and roc[:, :2].max() <= 1
    assert abs(np.trapezoid(roc[::-1, 1], roc[::-1, 0]) - metrics["test_auc"]) < 1e-3
    assert (plots / "memory_cells.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (project / "checkpoints/train_sentiment_rnn").iterdir() if p.name != "README.txt"]


def test_exported_model_reloads_with_the_same_logits(project: Path) -> None:
    import tensorflow as tf

    from stages.common.input_pipelines import read_spec, text_batches

    spec = read_spec(project / DATA)
    p = TrainSentimentRnnParams(**yaml.safe_load((project / "params.yaml").read_text())["train_sentiment_rnn"])
    model = network(spec["vocab_size"], p)
    model.load_weights(project / "models/sentiment_rnn/model.weights.h5")
    served = tf.saved_model.load(str(project / "models/sentiment_rnn/saved_model"))  # plain TF, no Keras objects
    assert int(served.max_words.numpy()) == spec["max_words"]
    vocab_asset = Path(served.vocabulary.asset_path.numpy().decode())
    assert vocab_asset.read_bytes() == (project / DATA / "imdb_vocab.txt").read_bytes()

    compared = 0
    for features, _ in text_batches(project / DATA, "test", 128).take(4):
        expected = model(features, training=False).numpy()
        outputs = served.serve(features["token_indexes"], features["sequence_length"])
        np.testing.assert_allclose(outputs["logits"].numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(outputs["probabilities"].numpy(), tf.nn.softmax(expected).numpy(), atol=1e-6)
        compared += len(expected)
    assert compared == 512
    signature = served.signatures["serving_default"]
    assert set(signature.structured_outputs) == {"logits", "probabilities"}


def test_interrupted_training_resumes_to_the_same_weights(project: Path, tmp_path: Path) -> None:
    from stages.train_sentiment_rnn import train_model

    # A small training split keeps this quick: the 250 validation reviews, as "train" too.
    data = tmp_path / "imdb"
    shutil.copytree(project / DATA, data)
    for shard in data.glob("valid-*"):
        shutil.copy(shard, data / shard.name.replace("valid-", "train-", 1))
    spec = json.loads((data / "spec.json").read_text())  # the readers check shard counts against it
    valid = spec["splits"]["valid"]
    spec["splits"]["train"] = {**valid, "files": [n.replace("valid-", "train-", 1) for n in valid["files"]]}
    (data / "spec.json").write_text(json.dumps(spec))
    p = stage_params(
        "train_sentiment_rnn",
        TrainSentimentRnnParams,
        max_epochs=3,
        patience=10,
        checkpoint_every_s=0.0,
        units=16,
        dense_units=16,
        batch_size=64,
        bucket_boundaries=[150, 300],
    )
    checkpoints = tmp_path / "ckpt"
    reference, reference_history, resumed, history, seen = interrupted_and_resumed(train_model, p, data, checkpoints)
    assert seen == [2]  # only the missing epoch ran
    assert len(history) == 3
    for a, b in zip(history, reference_history, strict=True):
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for a, b in zip(resumed.model.weights, reference.model.weights, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)


def test_tiny_epoch_budget_runs(project: Path, tmp_path: Path) -> None:
    """``max_epochs: 1`` (what the pipeline test uses) trains once and writes every output."""
    work = copy_project(tmp_path / "p", [f for f in project_files() if f == "params.yaml" or f.startswith("stages/")])
    shutil.copytree(project / DATA, work / DATA)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train_sentiment_rnn"] |= {"max_epochs": 1, "cell": "gru"}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["python", "-m", "stages.train_sentiment_rnn"], work)
    metrics = json.loads((work / "metrics/sentiment_rnn.json").read_text())
    assert metrics["epochs"] == metrics["best_epoch"] == 1 and metrics["cell"] == "gru"
    assert (work / "models/sentiment_rnn/saved_model/saved_model.pb").is_file()


def test_an_ensemble_serves_and_scores_its_networks_mean_probability(project: Path, tmp_path: Path) -> None:
    """``ensemble: 2``: two networks (seeds 42 and 43); the metrics, the SavedModel and the weights files
    all describe the mean of their probabilities, and each network alone is reported beside it."""
    import tensorflow as tf

    from stages.common.input_pipelines import read_spec, text_batches

    work = copy_project(tmp_path / "p", [f for f in project_files() if f == "params.yaml" or f.startswith("stages/")])
    shutil.copytree(project / DATA, work / DATA)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train_sentiment_rnn"] |= {"max_epochs": 1, "ensemble": 2, "word_dropout": 0.2, "units": 16}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["python", "-m", "stages.train_sentiment_rnn"], work)
    metrics = json.loads((work / "metrics/sentiment_rnn.json").read_text())
    assert metrics["ensemble"] == 2 and metrics["member_best_epoch"] == [1, 1]
    assert len(metrics["member_valid_accuracy"]) == len(metrics["member_test_accuracy"]) == 2

    p = TrainSentimentRnnParams(**params["train_sentiment_rnn"])
    members = []
    for weights in ("model.weights.h5", "member-1.weights.h5"):
        model = network(read_spec(work / DATA)["vocab_size"], p)
        model.load_weights(work / "models/sentiment_rnn" / weights)
        members.append(model)
    served = tf.saved_model.load(str(work / "models/sentiment_rnn/saved_model"))
    right = total = 0
    each_right = np.zeros(2)
    for features, labels in text_batches(work / DATA, "test", 500):
        each = [tf.nn.softmax(m(features, training=False)).numpy() for m in members]
        assert np.abs(each[0] - each[1]).max() > 1e-3  # two different networks
        outputs = served.serve(features["token_indexes"], features["sequence_length"])
        np.testing.assert_allclose(outputs["probabilities"].numpy(), np.mean(each, axis=0), atol=1e-5)
        right += int((np.argmax(np.mean(each, axis=0), axis=1) == labels.numpy()).sum())
        each_right += [(np.argmax(e, axis=1) == labels.numpy()).sum() for e in each]
        total += len(labels)
    assert total == metrics["test_reviews"]
    assert metrics["test_accuracy"] == pytest.approx(right / total, abs=1e-6)
    np.testing.assert_allclose(metrics["member_test_accuracy"], each_right / total, atol=1e-6)


# --- the predict command (stages/apps/sentiment_predict.py) ----------------------------------------


def raw_review(project: Path, split: str, target: int, review_id: int, rating: int) -> Path:
    """The raw file a record came from (the valid split was carved from train)."""
    folder = "test" if split == "test" else "train"
    return project / "data/raw/imdb/aclImdb" / folder / ("neg", "pos")[target] / f"{review_id}_{rating}.txt"


def records_with_sources(project: Path, split: str, n: int) -> list[tuple[list[int], Path]]:
    """``n`` records of ``split`` (the longest, truncated one included): their token ids and raw file."""
    from stages.common.input_pipelines import text_batches

    found = []
    for features, target in text_batches(project / DATA, split, 256, metadata=True).as_numpy_iterator():
        for ids, length, label, review_id, rating in zip(
            features["token_indexes"],
            features["sequence_length"],
            target,
            features["review_id"],
            features["rating"],
            strict=True,
        ):
            found.append((ids[:length].tolist(), raw_review(project, split, int(label), int(review_id), int(rating))))
    found.sort(key=lambda item: -len(item[0]))  # truncated reviews (700 words + <eos>) first
    return found[:3] + found[-3:] + found[len(found) // 2 : len(found) // 2 + n - 6]


@pytest.mark.parametrize("split", ["train", "test"])
def test_predict_encodes_raw_text_exactly_as_the_tfrecords(project: Path, split: str) -> None:
    from stages.apps.sentiment_predict import SentimentModel

    model = SentimentModel(project / "models/sentiment_rnn/saved_model")
    checked = 0
    for ids, path in records_with_sources(project, split, 60):
        assert model.encode(path.read_text(encoding="utf-8")) == ids, path
        checked += 1
    assert checked == 60 and max(len(ids) for ids, _ in records_with_sources(project, split, 6)) == 701


def test_predict_command_scores_files_like_the_model_scores_the_records(project: Path) -> None:
    import tensorflow as tf

    from stages.common.input_pipelines import read_spec

    chosen = records_with_sources(project, "test", 8)[2:6]  # a truncated review among them
    result = run(
        ["python", "-m", "stages.apps.sentiment_predict", *[a for _, path in chosen for a in ("--file", str(path))]],
        project,
    )
    lines = result.stdout.splitlines()
    assert [line.split("\t")[1] for line in lines] == [str(path) for _, path in chosen]

    p = TrainSentimentRnnParams(**yaml.safe_load((project / "params.yaml").read_text())["train_sentiment_rnn"])
    model = network(read_spec(project / DATA)["vocab_size"], p)
    model.load_weights(project / "models/sentiment_rnn/model.weights.h5")
    for line, (ids, _) in zip(lines, chosen, strict=True):
        logits = model({"token_indexes": np.array([ids]), "sequence_length": np.array([len(ids)])}, training=False)
        assert float(line.split("\t")[0]) == pytest.approx(float(tf.nn.softmax(logits)[0, 1]), abs=6e-5)

    one = run(
        ["python", "-m", "stages.apps.sentiment_predict", "The acting was not bad at all. Highly recommended."], project
    ).stdout
    assert 0.0 <= float(one) <= 1.0 and one.count("\n") == 1  # a single review: just the probability


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "error: no review given: pass its text, or --file PATH"),
        (["   "], "error: text 1: empty review (no words once HTML is stripped)"),
        (["<br /><br />"], "error: text 1: empty review (no words once HTML is stripped)"),
        (["--file", "missing.txt"], "error: missing.txt: cannot read (No such file or directory)"),
        (["--file", "latin1.txt"], "error: latin1.txt: not UTF-8 text (invalid continuation byte at byte 2)"),
        (["--file", "empty.txt"], "error: empty.txt: empty review (no words once HTML is stripped)"),
        (
            ["--model", "nowhere", "Great film."],
            "error: nowhere: no exported model here (run `dvc repro train_sentiment_rnn`, or pass --model)",
        ),
    ],
)
def test_predict_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "latin1.txt").write_bytes("Tr\xe8s bon film".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("")
    result = run(["python", "-m", "stages.apps.sentiment_predict", *args], tmp_path, check=False)
    assert result.returncode == 2, result
    assert result.stderr == message + "\n" and result.stdout == ""
