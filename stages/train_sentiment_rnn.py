"""Stage ``train_sentiment_rnn`` (tutorial 08): sentiment of IMDB reviews with a recurrent network.

``Embedding(V, 100) -> LSTM(64) | GRU(64) -> dropout 0.3 -> Dense(128, relu) -> Dense(2)``
(stages/models/sentiment_rnn.py: the network, read at each review's last real
token so that padding never changes a result, and its export) on the review
TFRecords (stages/tfrecords_imdb.py). A batch is padded with id 0 to its
longest review (``input_pipelines.text_batches``; ``bucket_boundaries`` groups
reviews of similar length to pad less).

Training: the shared eager loop (stages/common/training.py), Adam, early
stopping on the **validation** accuracy with the best weights restored (the
original stopped on the test set), resumable checkpoints. The test split is
scored once, at the end. ``ensemble: N`` trains N networks (seeds ``seed``,
``seed + 1``, ...) and scores, and exports, the mean of their probabilities.

Defaults are sized for the embedded sample (2,250 training reviews): the
tutorial's Adam 1e-4 with batch 512 made ~50 updates an epoch on 25,000
reviews but would make 5 here, so lr 3e-3 with batch 64 (35 updates an epoch);
length buckets halve the padded steps an LSTM runs on the CPU. The real-data
recipe is in the README.

Outputs:

- ``models/sentiment_rnn/model.weights.h5`` (the weights) and
  ``models/sentiment_rnn/saved_model/``: an exported SavedModel that loads with
  plain ``tf.saved_model.load`` and carries what scoring new text needs: the
  vocabulary (an asset, ``vocabulary``), ``max_words`` and the ``serve``
  signature ``(token_indexes, sequence_length) -> logits, probabilities``
  (stages/models/sentiment_rnn.py); ``python -m stages.apps.sentiment_predict`` uses
  it (stages/apps/sentiment_predict.py);
- ``metrics/sentiment_rnn.json``: validation and test accuracy, test ROC-AUC,
  precision / recall / F1 of the positive class, best epoch;
- ``plots/train_sentiment_rnn/``: ``history.tsv`` (per-epoch loss and accuracy),
  ``roc.tsv`` (the test ROC curve) and ``memory_cells.png``, tutorial 08's
  heatmap: tanh of the LSTM's cell state for the first units over the tokens
  of one short test review rated 1 or 10 (for a GRU, which has no separate cell, its
  hidden state).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from stages.common.cli import StageError, run_stage
from stages.common.params import TrainingSection, load_params

log = logging.getLogger(__name__)

STAGE = "train_sentiment_rnn"
DATA_DIR = Path("data/tfrecords/imdb")
MODEL_DIR = Path("models/sentiment_rnn")
SAVED_MODEL = "saved_model"
METRICS = Path("metrics/sentiment_rnn.json")
PLOTS = Path("plots/train_sentiment_rnn")
CHECKPOINTS = Path("checkpoints")
POSITIVE = 1  # target of a positive review


class TrainSentimentRnnParams(TrainingSection):
    cell: Literal["lstm", "gru"]
    embedding_dim: int = Field(ge=1)
    units: int = Field(ge=1, description="recurrent units")
    dropout: float = Field(ge=0.0, lt=1.0)
    dense_units: int = Field(ge=1)
    bidirectional: bool = Field(description="also read each review backwards (a second recurrent layer)")
    readout: Literal["last", "max", "mean_max"] = Field(
        description="last: the output at the last real token (the tutorial); max / mean_max: pooled over steps"
    )
    embedding_dropout: float = Field(ge=0.0, lt=1.0, description="share of embedding channels dropped per review")
    word_dropout: float = Field(ge=0.0, lt=1.0, description="share of words replaced by <unk> in training")
    nb_ratio_input: bool = Field(
        description="append each word's Naive Bayes log-count ratio (training split, fixed) to its embedding"
    )
    nb_buckets: int = Field(ge=0, description="with nb_ratio_input: bigram hash buckets (0: the words' ratios only)")
    nb_alpha: float = Field(
        gt=0.0, description="smoothing count of those ratios: larger shrinks rare words' ratios towards 0"
    )
    weight_decay: float = Field(ge=0.0, description="decoupled weight decay (AdamW) when > 0")
    learning_rate: float = Field(gt=0.0, description="Adam")
    batch_size: int = Field(ge=1)
    bucket_boundaries: list[int] | None = Field(
        description="review lengths at which buckets split (null: plain padded batches)"
    )
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=1, description="epochs without a higher validation accuracy before stopping")
    ensemble: int = Field(
        ge=1, le=16, description="networks trained with seeds seed, seed + 1, ...; their probabilities averaged"
    )
    heatmap_units: int = Field(ge=1, description="recurrent units shown in memory_cells.png")
    heatmap_min_tokens: int = Field(
        ge=1, description="the heatmap's review: the shortest rated 1 or 10 with this many tokens"
    )

    @field_validator("bucket_boundaries")
    @classmethod
    def _increasing(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(b < 1 for b in value) or value != sorted(set(value))):
            raise ValueError("must be null or a non-empty, strictly increasing list of positive lengths")
        return value


# --- training ------------------------------------------------------------------------------------


def network(vocab_size: int, p: TrainSentimentRnnParams):
    """The network these params describe (stages/models/sentiment_rnn.py)."""
    from stages.models.sentiment_rnn import build_sentiment_rnn

    return build_sentiment_rnn(
        vocab_size,
        embedding_dim=p.embedding_dim,
        embedding_dropout=p.embedding_dropout,
        word_dropout=p.word_dropout,
        cell=p.cell,
        units=p.units,
        bidirectional=p.bidirectional,
        readout=p.readout,
        dropout=p.dropout,
        dense_units=p.dense_units,
        nb_ratio_input=p.nb_ratio_input,
        nb_buckets=p.nb_buckets,
    )


def new_trainer(vocab_size: int, p: TrainSentimentRnnParams):
    import keras

    from stages.common.training import Trainer

    optimizer = (
        keras.optimizers.AdamW(learning_rate=p.learning_rate, weight_decay=p.weight_decay)
        if p.weight_decay
        else keras.optimizers.Adam(learning_rate=p.learning_rate)
    )
    return Trainer(
        network(vocab_size, p),
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics={"accuracy": keras.metrics.SparseCategoricalAccuracy},
        run_eagerly=p.run_eagerly,
    )


def train_model(p: TrainSentimentRnnParams, seed: int, data_dir: Path, checkpoints: Path | None, on_epoch_end=None):
    """Seed, build and train; return ``(trainer, history)`` with the best weights restored."""
    from stages.common.early_stopping import EarlyStopping
    from stages.common.input_pipelines import read_spec, text_batches
    from stages.common.seeding import seed_everything

    seed_everything(seed)
    vocab_size = int(read_spec(data_dir)["vocab_size"])
    trainer = new_trainer(vocab_size, p)
    if p.nb_ratio_input:
        from stages.models.sentiment_ngram import nb_ratios
        from stages.models.sentiment_rnn import set_nb_ratios

        train = text_batches(data_dir, "train", 256)
        set_nb_ratios(trainer.model, nb_ratios(train, vocab_size, buckets=p.nb_buckets, alpha=p.nb_alpha))
    history = trainer.fit(
        train=lambda epoch: text_batches(
            data_dir, "train", p.batch_size, shuffle_seed=seed, epoch=epoch, bucket_boundaries=p.bucket_boundaries
        ),
        epochs=p.max_epochs,
        validation=lambda: text_batches(data_dir, "valid", p.batch_size, bucket_boundaries=p.bucket_boundaries),
        early_stopping=EarlyStopping(monitor="val_accuracy", mode="max", patience=p.patience),
        checkpoint_dir=checkpoints,
        checkpoint_every_s=p.checkpoint_every_s,
        on_epoch_end=on_epoch_end,
        desc=STAGE,
    )
    return trainer, history


def member_predictions(trainers: list, batches) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(labels, [each network's logits])`` of a split; ``batches()`` gives its batches."""
    outputs = [trainer.predict_labelled(batches()) for trainer in trainers]
    return outputs[0][0], [logits for _, logits in outputs]


def mean_probability_logits(each: list[np.ndarray]) -> np.ndarray:
    """One network's logits as they are; for an ensemble the log of the networks' mean probability
    (so a softmax of it is that mean)."""
    if len(each) == 1:
        return each[0]
    return np.log(np.mean([softmax(logits) for logits in each], axis=0))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


# --- tutorial 08's memory-cell heatmap ---------------------------------------------------------------


def plot_memory_cells(states: np.ndarray, tokens: list[str], cell: str, title: str, path: Path) -> None:
    """Heatmap of tanh(state) (units x tokens), tokens on the x axis, as in tutorial 08."""
    from stages.common.plotting import plt, save_png

    values = np.tanh(states.T)  # (units, T)
    width = max(6.0, 0.28 * len(tokens) + 2.0)
    figure, ax = plt.subplots(figsize=(width, 0.35 * len(values) + 2.2), layout="constrained")
    image = ax.imshow(values, cmap="RdBu_r", vmin=-1.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(len(values)), [str(i) for i in range(len(values))], fontsize=8)
    what = "tanh(LSTM cell state c_t)" if cell == "lstm" else "tanh(GRU hidden state h_t; a GRU has no separate cell)"
    ax.set_ylabel("unit")
    ax.set_title(f"{what}\n{title}", fontsize=9)
    figure.colorbar(image, ax=ax, shrink=0.8)
    save_png(figure, path)


def heatmap_review(data_dir: Path, min_tokens: int) -> tuple[np.ndarray, int]:
    """The review of the heatmap: the shortest test review rated 1 or 10 with at least
    ``min_tokens`` tokens (``<eos>`` included; the first in file order among equals), short
    enough to read on one axis, long enough to hold an opinion. Returns its ids and rating."""
    from stages.common.input_pipelines import text_batches

    best = None
    for features, _ in text_batches(data_dir, "test", 256, metadata=True).as_numpy_iterator():
        for ids, length, rating in zip(
            features["token_indexes"], features["sequence_length"], features["rating"], strict=True
        ):
            if rating in (1, 10) and length >= min_tokens and (best is None or length < len(best[0])):
                best = (ids[:length], int(rating))
    if best is None:
        raise StageError(
            f"{data_dir}: no test review rated 1 or 10 with at least {min_tokens} tokens "
            "(lower train_sentiment_rnn.heatmap_min_tokens)"
        )
    return best


def main() -> None:
    seed, p = load_params(STAGE, TrainSentimentRnnParams)

    from stages.common.checkpoints import checkpoint_dir, clear_checkpoints, member_checkpoints, member_seeds
    from stages.common.input_pipelines import read_spec, text_batches
    from stages.common.outputs import atomic_outputs, write_history, write_json, write_tsv
    from stages.common.streaming_metrics import binary_metrics
    from stages.datasets.imdb_text import decode, load_vocabulary
    from stages.models.sentiment_rnn import export_saved_model, recurrent_states

    spec = read_spec(DATA_DIR)
    vocab_file = DATA_DIR / spec["vocab_file"]
    try:
        vocab = load_vocabulary(vocab_file)
    except (OSError, ValueError) as exc:
        raise StageError(f"{vocab_file}: {exc}") from None
    if len(vocab) != int(spec["vocab_size"]):
        raise StageError(f"{vocab_file}: {len(vocab)} tokens, spec.json says {spec['vocab_size']}")

    ckpt = checkpoint_dir(CHECKPOINTS, STAGE, p, seed)
    members = [
        train_model(p, member_seed, DATA_DIR, member_checkpoints(ckpt, k))
        for k, member_seed in enumerate(member_seeds(seed, p.ensemble))
    ]
    trainers = [trainer for trainer, _ in members]
    trainer, history = members[0]  # the first network's curve and heatmap stand for the run
    if p.ensemble == 1:
        valid_accuracy = trainer.evaluate(text_batches(DATA_DIR, "valid", p.batch_size))["val_accuracy"]
    else:  # the mean probability's: no single network's accuracy describes it
        valid_labels, valid_each = member_predictions(trainers, lambda: text_batches(DATA_DIR, "valid", p.batch_size))
        valid_accuracy = accuracy(valid_labels, mean_probability_logits(valid_each))
    labels, test_each = member_predictions(trainers, lambda: text_batches(DATA_DIR, "test", p.batch_size))
    test, roc = binary_metrics(labels, mean_probability_logits(test_each))
    metrics = {
        "valid_accuracy": valid_accuracy,
        **{f"test_{name}": value for name, value in test.items()},
        "best_epoch": history.best_epoch,
        "epochs": len(history),
        "cell": p.cell,
        "vocab_size": len(vocab),
        "test_reviews": len(labels),
    }
    if p.ensemble > 1:  # what averaging bought: each network alone, on the same reviews
        metrics |= {
            "ensemble": p.ensemble,
            "member_valid_accuracy": [accuracy(valid_labels, logits) for logits in valid_each],
            "member_test_accuracy": [accuracy(labels, logits) for logits in test_each],
            "member_best_epoch": [member_history.best_epoch for _, member_history in members],
        }
    log.info(
        "test accuracy %.4f, AUC %.4f, F1 %.4f (valid accuracy %.4f; best epoch %d of %d%s)",
        metrics["test_accuracy"],
        metrics["test_auc"],
        metrics["test_f1"],
        valid_accuracy,
        history.best_epoch,
        len(history),
        f"; mean of {p.ensemble} networks" if p.ensemble > 1 else "",
    )

    ids, rating = heatmap_review(DATA_DIR, p.heatmap_min_tokens)
    _, memory = recurrent_states(trainer.model, ids)
    review = [{"token_indexes": ids[None, :], "sequence_length": np.array([len(ids)])}]
    review_logits = [member.predict(review)[0] for member in trainers]
    probability = float(softmax(np.stack(review_logits))[:, POSITIVE].mean())
    with atomic_outputs() as out:
        write_json(out.file(METRICS), metrics)
        write_history(out.file(PLOTS / "history.tsv"), history)
        write_tsv(out.file(PLOTS / "roc.tsv"), ["fpr", "tpr", "threshold"], roc)
        plot_memory_cells(
            memory[:, : p.heatmap_units],
            decode(ids, vocab),
            p.cell,
            f"test review rated {rating}/10; model's P(positive) = {probability:.3f}",
            out.file(PLOTS / "memory_cells.png"),
        )
        model_dir = out.directory(MODEL_DIR)
        trainer.model.save_weights(model_dir / "model.weights.h5")
        for k, member in enumerate(trainers[1:], start=1):
            member.model.save_weights(model_dir / f"member-{k}.weights.h5")
        export_saved_model(
            [member.model for member in trainers], vocab_file, int(spec["max_words"]), model_dir / SAVED_MODEL
        )
    clear_checkpoints(ckpt)


if __name__ == "__main__":
    run_stage(main, STAGE)
