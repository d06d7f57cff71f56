"""Stage ``train_sentiment_ngram``: the n-gram baseline for IMDB sentiment, beside the RNN of tutorial 08.

NB-weighted logistic regression over each review's distinct unigrams and
hashed bigrams (Wang & Manning 2012's NB features; stages/models/sentiment_ngram.py):
one weight per n-gram, scaled by its Naive Bayes log-count ratio, fitted once
on the training split before training. It reads the same review TFRecords and
vocabulary as ``train_sentiment_rnn`` (stages/tfrecords_imdb.py) and only each
review's real tokens (padding id 0 is never a feature).

Training: the shared eager loop (stages/common/training.py), Adam, early stopping
on the **validation** accuracy with the best weights restored, resumable
checkpoints. The test split is scored once, at the end. On the real reviews it
is several times faster than one RNN epoch and more accurate (README, results/sentiment-ngram/).

Outputs (as the RNN's, so the report, the gate and the predict command treat both alike):

- ``models/sentiment_ngram/model.weights.h5`` and ``models/sentiment_ngram/saved_model/``:
  the SavedModel of the sentiment models (vocabulary asset, ``max_words``, the ``serve``
  signature ``(token_indexes, sequence_length) -> logits, probabilities``);
  ``python -m stages.apps.sentiment_predict --kind ngram`` uses it;
- ``metrics/sentiment_ngram.json``: validation and test accuracy, test ROC-AUC,
  precision / recall / F1 of the positive class, best epoch, parameters;
- ``plots/train_sentiment_ngram/``: ``history.tsv`` (per-epoch loss and accuracy) and
  ``roc.tsv`` (the test ROC curve).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field, field_validator

from stages.common.cli import StageError, run_stage
from stages.common.params import TrainingSection, load_params

log = logging.getLogger(__name__)

STAGE = "train_sentiment_ngram"
DATA_DIR = Path("data/tfrecords/imdb")
MODEL_DIR = Path("models/sentiment_ngram")
SAVED_MODEL = "saved_model"
METRICS = Path("metrics/sentiment_ngram.json")
PLOTS = Path("plots/train_sentiment_ngram")
CHECKPOINTS = Path("checkpoints")


class TrainSentimentNgramParams(TrainingSection):
    buckets: int = Field(ge=1, description="hash buckets of the bigrams (the unigrams are the vocabulary's)")
    nb_alpha: float = Field(gt=0.0, description="Naive Bayes smoothing count of the log-count ratios")
    l2: float = Field(ge=0.0, description="penalty l2 * sum(w ** 2) on the n-gram weights")
    learning_rate: float = Field(gt=0.0, description="Adam")
    batch_size: int = Field(ge=1)
    bucket_boundaries: list[int] | None = Field(
        description="review lengths at which buckets split (null: plain padded batches)"
    )
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=1, description="epochs without a higher validation accuracy before stopping")

    @field_validator("bucket_boundaries")
    @classmethod
    def _increasing(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(b < 1 for b in value) or value != sorted(set(value))):
            raise ValueError("must be null or a non-empty, strictly increasing list of positive lengths")
        return value


def network(vocab_size: int, p: TrainSentimentNgramParams):
    """The model these params describe (stages/models/sentiment_ngram.py), its NB ratios still 1."""
    from stages.models.sentiment_ngram import build_sentiment_ngram

    return build_sentiment_ngram(vocab_size, buckets=p.buckets, l2=p.l2)


def new_trainer(vocab_size: int, p: TrainSentimentNgramParams):
    import keras

    from stages.common.training import Trainer

    return Trainer(
        network(vocab_size, p),
        keras.optimizers.Adam(learning_rate=p.learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics={"accuracy": keras.metrics.SparseCategoricalAccuracy},
        run_eagerly=p.run_eagerly,
    )


def train_model(p: TrainSentimentNgramParams, seed: int, data_dir: Path, checkpoints: Path | None, on_epoch_end=None):
    """Seed, build, fit the NB ratios on the training split and train; return ``(trainer, history)``
    with the best weights restored."""
    from stages.common.early_stopping import EarlyStopping
    from stages.common.input_pipelines import read_spec, text_batches
    from stages.common.seeding import seed_everything
    from stages.models.sentiment_ngram import nb_ratios, set_nb_ratios

    seed_everything(seed)
    vocab_size = int(read_spec(data_dir)["vocab_size"])
    trainer = new_trainer(vocab_size, p)
    # Fixed features, from the training split only (a resumed run computes the same, then restores).
    ratios = nb_ratios(text_batches(data_dir, "train", 256), vocab_size, p.buckets, p.nb_alpha)
    set_nb_ratios(trainer.model, ratios)
    history = trainer.fit(
        train=lambda epoch: text_batches(
            data_dir, "train", p.batch_size, shuffle_seed=seed, epoch=epoch, bucket_boundaries=p.bucket_boundaries
        ),
        epochs=p.max_epochs,
        validation=lambda: text_batches(data_dir, "valid", 256),
        early_stopping=EarlyStopping(monitor="val_accuracy", mode="max", patience=p.patience),
        checkpoint_dir=checkpoints,
        checkpoint_every_s=p.checkpoint_every_s,
        on_epoch_end=on_epoch_end,
        desc=STAGE,
    )
    return trainer, history


def main() -> None:
    seed, p = load_params(STAGE, TrainSentimentNgramParams)

    from stages.common.checkpoints import checkpoint_dir, clear_checkpoints
    from stages.common.input_pipelines import read_spec, text_batches
    from stages.common.outputs import atomic_outputs, write_history, write_json, write_tsv
    from stages.common.streaming_metrics import binary_metrics
    from stages.datasets.imdb_text import load_vocabulary
    from stages.models.sentiment_rnn import export_saved_model

    spec = read_spec(DATA_DIR)
    vocab_file = DATA_DIR / spec["vocab_file"]
    try:
        vocab = load_vocabulary(vocab_file)
    except (OSError, ValueError) as exc:
        raise StageError(f"{vocab_file}: {exc}") from None
    if len(vocab) != int(spec["vocab_size"]):
        raise StageError(f"{vocab_file}: {len(vocab)} tokens, spec.json says {spec['vocab_size']}")

    ckpt = checkpoint_dir(CHECKPOINTS, STAGE, p, seed)
    trainer, history = train_model(p, seed, DATA_DIR, ckpt)
    valid_accuracy = trainer.evaluate(text_batches(DATA_DIR, "valid", 256))["val_accuracy"]
    labels, logits = trainer.predict_labelled(text_batches(DATA_DIR, "test", 256))
    test, roc = binary_metrics(labels, logits)
    metrics = {
        "valid_accuracy": valid_accuracy,
        **{f"test_{name}": value for name, value in test.items()},
        "best_epoch": history.best_epoch,
        "epochs": len(history),
        "features": "unigrams + hashed bigrams",
        "parameters": int(sum(w.shape.num_elements() for w in trainer.model.trainable_weights)),
        "vocab_size": len(vocab),
        "test_reviews": len(labels),
    }
    log.info(
        "test accuracy %.4f, AUC %.4f, F1 %.4f (valid accuracy %.4f; best epoch %d of %d)",
        metrics["test_accuracy"],
        metrics["test_auc"],
        metrics["test_f1"],
        valid_accuracy,
        history.best_epoch,
        len(history),
    )
    with atomic_outputs() as out:
        write_json(out.file(METRICS), metrics)
        write_history(out.file(PLOTS / "history.tsv"), history)
        write_tsv(out.file(PLOTS / "roc.tsv"), ["fpr", "tpr", "threshold"], roc)
        model_dir = out.directory(MODEL_DIR)
        trainer.model.save_weights(model_dir / "model.weights.h5")
        export_saved_model([trainer.model], vocab_file, int(spec["max_words"]), model_dir / SAVED_MODEL)
    clear_checkpoints(ckpt)


if __name__ == "__main__":
    run_stage(main, STAGE)
