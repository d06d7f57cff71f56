"""Command (not a DVC stage): the probability that a movie review is positive.

    python -m stages.apps.sentiment_predict "The acting was not bad at all. Recommended."
    python -m stages.apps.sentiment_predict --file review.txt [--file other.txt ...]   # "-" reads stdin
    python -m stages.apps.sentiment_predict --kind ngram "text"        # the n-gram baseline
    python -m stages.apps.sentiment_predict --model path/to/saved_model "text"

Uses the SavedModel that ``train_sentiment_rnn`` exports
(``models/sentiment_rnn/saved_model`` by default) or, with ``--kind ngram``, the
one of ``train_sentiment_ngram`` (``models/sentiment_ngram/saved_model``); both
have the same signature, vocabulary asset and ``max_words``. The text is prepared exactly
as the training reviews were: the vocabulary and ``max_words`` come from the
SavedModel, and the encoding is ``stages.datasets.imdb_text.encode`` - HTML stripped,
the same tokenizer, unknown words -> ``<unk>``, the last ``max_words`` tokens
then ``<eos>`` - the functions ``tfrecords_imdb`` used to write the TFRecords
(a test checks the ids equal the records' for the same raw review).

Prints one line per review: the probability of a positive review, followed by
a tab and the review's source (``--file`` path or ``text N``) when there are
several. Empty text, an unreadable file or a missing model: one line
``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from stages.common.cli import StageError, run_stage

# --kind -> (the stage that exports it, its SavedModel)
MODELS = {
    "rnn": ("train_sentiment_rnn", Path("models/sentiment_rnn/saved_model")),
    "ngram": ("train_sentiment_ngram", Path("models/sentiment_ngram/saved_model")),
}
POSITIVE = 1  # column of a positive review in the model's output


@dataclass(frozen=True)
class Review:
    source: str  # "text 1", or the file it came from
    text: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stages.apps.sentiment_predict", description="Probability that a movie review is positive."
    )
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="text of a review (quote it)")
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="PATH",
        type=Path,
        help="a file holding one review (UTF-8); may be repeated; '-' reads stdin",
    )
    parser.add_argument(
        "--kind",
        choices=sorted(MODELS),
        default="rnn",
        help="which pipeline model scores: the RNN of tutorial 08 (default) or the n-gram baseline",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"an exported SavedModel (default: the --kind's, {MODELS['rnn'][1]} or {MODELS['ngram'][1]})",
    )
    return parser.parse_args(argv)


def read_reviews(texts: list[str], files: list[Path]) -> list[Review]:
    """The reviews given on the command line, each checked to hold some text."""
    if not texts and not files:
        raise StageError("no review given: pass its text, or --file PATH")
    reviews = [Review(f"text {i}", text) for i, text in enumerate(texts, 1)]
    for path in files:
        if str(path) == "-":
            reviews.append(Review("stdin", sys.stdin.read()))
            continue
        try:
            reviews.append(Review(str(path), path.read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:
            raise StageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise StageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    from stages.datasets.imdb_text import tokenize

    for review in reviews:
        if not tokenize(review.text):
            raise StageError(f"{review.source}: empty review (no words once HTML is stripped)")
    return reviews


class SentimentModel:
    """The exported model with the preprocessing it was trained with."""

    def __init__(self, path: Path, stage: str = "train_sentiment_rnn") -> None:
        """``stage``: the stage that exports ``path``, named when it is missing."""
        if not (path / "saved_model.pb").is_file():
            raise StageError(f"{path}: no exported model here (run `dvc repro {stage}`, or pass --model)")
        import tensorflow as tf

        from stages.datasets.imdb_text import load_vocabulary

        try:
            self.loaded = tf.saved_model.load(str(path))
        except (OSError, ValueError, tf.errors.OpError) as exc:
            raise StageError(f"{path}: cannot load the SavedModel ({str(exc).splitlines()[0]})") from None
        if not all(hasattr(self.loaded, name) for name in ("serve", "vocabulary", "max_words")):
            raise StageError(
                f"{path}: not a model exported by train_sentiment_rnn or train_sentiment_ngram "
                "(no serve/vocabulary/max_words)"
            )
        vocab_file = Path(self.loaded.vocabulary.asset_path.numpy().decode())
        try:
            self.vocab = load_vocabulary(vocab_file)
        except (OSError, ValueError) as exc:
            raise StageError(f"{vocab_file}: {exc}") from None
        self.max_words = int(self.loaded.max_words.numpy())

    def encode(self, text: str) -> list[int]:
        """Token ids of a raw review, exactly as tfrecords_imdb wrote them."""
        from stages.datasets.imdb_text import encode

        return encode(text, self.vocab, self.max_words)

    def probabilities(self, texts: list[str]) -> list[float]:
        """P(positive) of each review (one batch, padded with 0: padding does not change a result)."""
        import numpy as np
        import tensorflow as tf

        from stages.datasets.imdb_text import PAD_ID

        ids = [self.encode(text) for text in texts]
        lengths = np.array([len(i) for i in ids], np.int64)
        batch = np.full((len(ids), lengths.max()), PAD_ID, np.int64)
        for row, review in enumerate(ids):
            batch[row, : len(review)] = review
        outputs = self.loaded.serve(tf.constant(batch), tf.constant(lengths))
        return outputs["probabilities"].numpy()[:, POSITIVE].astype(float).tolist()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    reviews = read_reviews(args.texts, args.file)  # before the model: a bad input fails fast
    stage, default = MODELS[args.kind]
    model = SentimentModel(args.model or default, stage)
    for review, probability in zip(reviews, model.probabilities([r.text for r in reviews]), strict=True):
        print(f"{probability:.4f}" if len(reviews) == 1 else f"{probability:.4f}\t{review.source}")


if __name__ == "__main__":
    run_stage(main, "sentiment_predict", lock=False)  # reads only: any number may run
