"""Stage ``tfrecords_imdb`` (tutorial 04): IMDB reviews -> vocabulary + SequenceExample TFRecords.

Reads ``data/raw/imdb/aclImdb/{train,test}/{pos,neg}/{id}_{rating}.txt`` and writes
``data/tfrecords/imdb/``:

- ``{train,valid,test}-0000i-of-0000N.tfrecord`` (``.tfrecord.gz`` with gzip): one
  ``tf.train.SequenceExample`` per review, context ``sequence_length`` (ids
  including the end token), ``target`` (0 neg, 1 pos), ``rating`` (1-10) and
  ``review_id`` (the file's id), all int64; feature list ``token_indexes``, one
  int64 id per step: the last ``max_words`` tokens, then ``<eos>``;
- ``imdb_vocab.txt``: one token per line, the line number being the id
  (stages/datasets/imdb_text.py: reserved 0 ``<pad>``, 1 ``<unk>``, 2 ``<eos>``);
- ``spec.json``: feature names and dtypes, counts per split and class, vocabulary
  size, token length statistics.

The validation split is carved from train, so the test split is only ever used
for the final score; the vocabulary comes from the remaining training reviews
alone. Where ``download_imdb`` kept the movie lists (``train/urls_{pos,neg}.txt``
of the official tarball), whole movies go to validation, chosen with the seed,
until it holds ``valid_fraction`` of the reviews: aclImdb has up to 30 reviews
per movie and its test movies are not in train, so a validation split sharing
movies with train would score higher than the test split will. Without them,
``valid_fraction`` of each class is chosen at random (seeded); ``spec.json``
says which (``valid_split``). Each split is
shuffled once with the seed, so every shard mixes both classes; the shards
hold contiguous runs of that order. Outputs are byte-identical from run to run
and whatever ``workers`` is.

Speed (bench/bench_tfrecords_imdb.py): every review is read and tokenized
exactly once, in a process pool. Workers return token ids of a per-chunk
provisional vocabulary plus that chunk's training-token counts; the parent
merges the counts and builds the vocabulary; the same pool then remaps each
chunk with one array lookup and serializes its records from pre-built bytes
per id; ``stages.common.tfrecords.write_split`` frames and shards them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from pydantic import Field

from stages.common.cli import StageError, run_stage
from stages.common.params import Section, load_params

if TYPE_CHECKING:
    from stages.datasets.imdb_text import Vocabulary

log = logging.getLogger(__name__)

RAW = Path("data/raw/imdb/aclImdb")
OUT = Path("data/tfrecords/imdb")
VOCAB_FILE = "imdb_vocab.txt"

SPLITS = ("train", "valid", "test")
LABELS = ("neg", "pos")  # target 0, 1
FILE_NAME = re.compile(r"(\d+)_(\d+)\.txt")
CHUNK_REVIEWS = 500  # reviews per tokenizing task: small enough for a smooth progress bar


class TFRecordsImdbParams(Section):
    min_word_frequency: int = Field(ge=1, description="training-split count a token needs to enter the vocabulary")
    max_words: int = Field(ge=1, description="tokens kept per review (its last ones), before <eos>")
    valid_fraction: float = Field(gt=0.0, lt=1.0, description="share of each training class moved to valid")
    num_shards: int = Field(ge=1, le=99999, description="files per split")
    compression: Literal["none", "gzip"]
    workers: int = Field(ge=1, description="processes for tokenizing and encoding (output does not depend on it)")


class Review(NamedTuple):
    """One review file; ``target`` 0 for neg, 1 for pos."""

    path: str
    review_id: int
    rating: int
    target: int


class ChunkTokens(NamedTuple):
    """What a worker returns for a run of reviews (see :func:`tokenize_chunk`)."""

    types: list[str]  # the chunk's provisional vocabulary: local id -> token
    vocab_counts: list[int]  # per local id: occurrences in the reviews that build the vocabulary
    ids: list[bytes]  # per review: local ids (int32) of its last max_words tokens
    lengths: list[int]  # per review: number of tokens before truncation


def find_reviews(root: Path, split: str) -> list[Review]:
    """The labelled reviews of ``root/<split>/{neg,pos}``, by class then numeric id."""
    reviews = []
    for target, label in enumerate(LABELS):
        folder = root / split / label
        if not folder.is_dir():
            raise StageError(f"{folder}: missing folder (run the download_imdb stage first)")
        found = []
        for path in folder.iterdir():
            match = FILE_NAME.fullmatch(path.name)
            if match is None:
                raise StageError(f"{path}: unexpected file name (expected {{id}}_{{rating}}.txt)")
            found.append(Review(str(path), int(match[1]), int(match[2]), target))
        if not found:
            raise StageError(f"{folder}: no reviews")
        reviews += sorted(found, key=lambda r: (r.review_id, r.rating))
    return reviews


def movie_of(root: Path, split: str) -> dict[tuple[int, int], str] | None:
    """``(target, review id) -> movie`` from ``root/<split>/urls_{neg,pos}.txt``, or None without them."""
    paths = [root / split / f"urls_{label}.txt" for label in LABELS]
    if not all(path.is_file() for path in paths):
        return None
    return {
        (target, i): line.strip()
        for target, path in enumerate(paths)
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines())
    }


def split_reviews(
    train: list[Review],
    test: list[Review],
    valid_fraction: float,
    seed: int,
    movies: dict[tuple[int, int], str] | None = None,
) -> dict[str, list[Review]]:
    """``{"train", "valid", "test"}``: valid is ``valid_fraction`` of the training reviews,
    whole movies chosen with the seed if ``movies`` is given, else each class's share at
    random (stratified, seeded); each split is then shuffled once with the seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    keep: list[Review] = []
    valid: list[Review] = []
    if movies is not None:
        movie = {r: movies[(r.target, r.review_id)] for r in train}
        titles = sorted(set(movie.values()))
        wanted, chosen = round(valid_fraction * len(train)), set()
        sizes = {title: 0 for title in titles}
        for r in train:
            sizes[movie[r]] += 1
        taken = 0
        for i in rng.permutation(len(titles)).tolist():
            if taken >= wanted:
                break
            chosen.add(titles[i])
            taken += sizes[titles[i]]
        for review in train:
            (valid if movie[review] in chosen else keep).append(review)
    else:
        for target in range(len(LABELS)):
            members = [r for r in train if r.target == target]
            n_valid = round(valid_fraction * len(members))
            picked = set(rng.permutation(len(members))[:n_valid].tolist())
            for i, review in enumerate(members):
                (valid if i in picked else keep).append(review)
    splits = {"train": keep, "valid": valid, "test": list(test)}
    for name, reviews in splits.items():
        if not reviews:
            raise StageError(f"tfrecords_imdb.valid_fraction: leaves no {name} reviews ({len(train)} in train)")
        order = rng.permutation(len(reviews))
        splits[name] = [reviews[i] for i in order]
    return splits


def tokenize_chunk(task: tuple[list[tuple[str, bool]], int]) -> ChunkTokens:
    """Pool task: read and tokenize ``(path, counts_for_vocab)`` reviews, keeping the
    last ``max_words`` local ids of each (module level, so it pickles by name)."""
    import numpy as np

    from stages.datasets.imdb_text import LocalIds, tokenize

    files, max_words = task
    local = LocalIds()
    ids, lengths, counted = [], [], []
    for path, counts_for_vocab in files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise StageError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise StageError(f"{path}: cannot read ({exc.strerror})") from None
        review = np.fromiter(map(local.__getitem__, tokenize(text)), dtype=np.int32)
        if counts_for_vocab:
            counted.append(review)
        ids.append(review[-max_words:].tobytes())  # only what text.table_ids keeps travels back
        lengths.append(len(review))
    counts = np.bincount(np.concatenate(counted), minlength=len(local)) if counted else np.zeros(len(local), int)
    return ChunkTokens(list(local), counts.tolist(), ids, lengths)


def vocabulary_counts(chunks: list[ChunkTokens]) -> Counter[str]:
    """Training-token counts summed over the chunks."""
    total: Counter[str] = Counter()
    for chunk in chunks:
        total.update({t: n for t, n in zip(chunk.types, chunk.vocab_counts, strict=True) if n})
    return total


# Serialized FeatureList steps of ids 0..n-1, grown on demand, per process: a record is
# mostly steps of a few thousand distinct ids, so copying their bytes beats encoding each.
_STEPS: list[bytes] = []


def encode_record(ids: list[int], target: int, rating: int, review_id: int) -> bytes:
    """One review's serialized ``tf.train.SequenceExample`` (``ids`` end with ``<eos>``)."""
    from stages.common.tfrecords import int64_feature, int64_steps, sequence_example

    if max(ids) >= len(_STEPS):
        _STEPS.extend(int64_steps(len(_STEPS), max(ids) + 1))
    steps = _STEPS
    return sequence_example(
        {
            "sequence_length": int64_feature(len(ids)),
            "target": int64_feature(target),
            "rating": int64_feature(rating),
            "review_id": int64_feature(review_id),
        },
        {"token_indexes": b"".join([steps[i] for i in ids])},
    )


def encode_chunk(task: tuple[bytes, int, list[tuple[bytes, int, int, int]]]) -> tuple[list[bytes], list[int]]:
    """Pool task: ``(table, max_words, [(local ids, target, rating, review_id), ...])`` -> the
    serialized records and each one's number of ``<unk>`` ids; ``table`` (int32) maps local ids
    to the vocabulary's (``text.lookup_table``), and ``text.table_ids`` is predict's id step too."""
    import numpy as np

    from stages.datasets.imdb_text import UNK_ID, table_ids

    table_bytes, max_words, reviews = task
    table = np.frombuffer(table_bytes, dtype=np.int32)
    records, unknown = [], []
    for local, target, rating, review_id in reviews:
        ids = table_ids(np.frombuffer(local, dtype=np.int32), table, max_words)
        unknown.append(ids.count(UNK_ID))
        records.append(encode_record(ids, target, rating, review_id))
    return records, unknown


def _serialized(record: bytes) -> bytes:
    """write_split's ``encode`` for records serialized already."""
    return record


@contextmanager
def process_map(workers: int) -> Iterator[Callable]:
    """An ordered ``map`` over ``workers`` processes (the built-in map for 1)."""
    from stages.common.tfrecords import encoder_pool

    with encoder_pool(workers) as pool:
        yield map if pool is None else pool.map


def _progress(results: Iterable, total: int, desc: str, size: Callable) -> list:
    from tqdm import tqdm

    done = []
    with tqdm(total=total, desc=desc, unit=" reviews", file=sys.stderr, disable=None, leave=False) as bar:
        for result in results:
            done.append(result)
            bar.update(size(result))
    return done


def tokenize_and_encode(
    reviews: list[Review], vocab_from: set[str], p: TFRecordsImdbParams
) -> tuple[Vocabulary, list[bytes], list[int], list[int]]:
    """Tokenize every review once, build the vocabulary from those whose path is in
    ``vocab_from``, and serialize each review's record.

    Returns ``(vocab, records, token counts, unknown counts)``, lists in review order.
    """

    from stages.datasets.imdb_text import build_vocabulary, lookup_table

    starts = range(0, len(reviews), CHUNK_REVIEWS)
    with process_map(p.workers) as pool_map:
        tokenize_tasks = [
            ([(r.path, r.path in vocab_from) for r in reviews[i : i + CHUNK_REVIEWS]], p.max_words) for i in starts
        ]
        chunks = _progress(
            pool_map(tokenize_chunk, tokenize_tasks), len(reviews), "tokenizing", lambda c: len(c.lengths)
        )
        vocab = build_vocabulary(vocabulary_counts(chunks), p.min_word_frequency)
        encode_tasks = [
            (
                lookup_table(chunk.types, vocab).tobytes(),
                p.max_words,
                [
                    (ids, r.target, r.rating, r.review_id)
                    for ids, r in zip(chunk.ids, reviews[i : i + CHUNK_REVIEWS], strict=True)
                ],
            )
            for i, chunk in zip(starts, chunks, strict=True)
        ]
        lengths = [n for chunk in chunks for n in chunk.lengths]
        del chunks
        encoded = _progress(pool_map(encode_chunk, encode_tasks), len(reviews), "encoding", lambda e: len(e[0]))
    records = [record for chunk_records, _ in encoded for record in chunk_records]
    unknown = [n for _, chunk_unknown in encoded for n in chunk_unknown]
    return vocab, records, lengths, unknown


def build_spec(
    p: TFRecordsImdbParams,
    seed: int,
    splits: dict[str, list[Review]],
    lengths: dict[str, list[int]],
    unknown: dict[str, list[int]],
    vocab_size: int,
    shards: dict[str, list[Path]],
    by_movie: bool,
) -> dict:
    """spec.json: what a reader of the records needs to know, and what the data looks like."""
    import numpy as np

    from stages.common.tfrecords import split_entry
    from stages.datasets.imdb_text import RESERVED, length_stats

    per_split = {}
    for name, reviews in splits.items():
        n_tokens = np.asarray(lengths[name])
        kept = np.minimum(n_tokens, p.max_words)
        per_split[name] = split_entry(
            len(reviews),
            shards[name],
            {label: sum(r.target == t for r in reviews) for t, label in enumerate(LABELS)},
            tokens=length_stats(n_tokens),  # before truncation
            sequence_length=length_stats(kept + 1),
            truncated=int(np.count_nonzero(n_tokens > p.max_words)),
            unknown_share=sum(unknown[name]) / max(int(kept.sum()), 1),  # of kept tokens
        )
    return {
        "dataset": "imdb",
        "record": "tf.train.SequenceExample",
        "context_features": {"sequence_length": "int64", "target": "int64", "rating": "int64", "review_id": "int64"},
        "sequence_features": {"token_indexes": "int64"},
        "label_feature": "target",
        "class_names": list(LABELS),
        "compression": p.compression,
        "num_shards": p.num_shards,
        "order": "each split shuffled once with the seed; shards are contiguous runs of it",
        "splits": per_split,
        "vocab_file": VOCAB_FILE,
        "vocab_size": vocab_size,
        "reserved_ids": {token: i for i, token in enumerate(RESERVED)},
        "vocab_from": "train",
        "max_words": p.max_words,
        "min_word_frequency": p.min_word_frequency,
        "valid_fraction": p.valid_fraction,
        "valid_split": "by_movie" if by_movie else "random_per_class",
        "seed": seed,
    }


def convert(raw: Path, out_dir: Path, p: TFRecordsImdbParams, seed: int) -> dict:
    """Write the vocabulary, the shards of every split and spec.json into ``out_dir``; return the spec."""
    from stages.common.tfrecords import SPEC_FILE, write_spec, write_split
    from stages.datasets.imdb_text import save_vocabulary

    movies = movie_of(raw, "train")
    splits = split_reviews(find_reviews(raw, "train"), find_reviews(raw, "test"), p.valid_fraction, seed, movies)
    log.info("validation split: %s", "whole movies (train/urls_*.txt)" if movies else "random, per class")
    ordered = [r for name in SPLITS for r in splits[name]]
    vocab, records, all_lengths, all_unknown = tokenize_and_encode(ordered, {r.path for r in splits["train"]}, p)
    log.info(
        "vocabulary: %d tokens (min frequency %d, from %d training reviews)",
        len(vocab),
        p.min_word_frequency,
        len(splits["train"]),
    )
    save_vocabulary(vocab, out_dir / VOCAB_FILE)
    lengths, unknown, shards = {}, {}, {}
    start = 0
    for name in SPLITS:
        stop = start + len(splits[name])
        lengths[name], unknown[name] = all_lengths[start:stop], all_unknown[start:stop]
        # Records are serialized already, in the pool that tokenized them (a fresh
        # pool per split would pay the process start-up again): write_split frames them.
        shards[name] = write_split(
            out_dir,
            name,
            records[start:stop],
            _serialized,
            num_shards=p.num_shards,
            compression=p.compression,
            workers=1,
            desc=f"writing {name}",
        )
        start = stop
        log.info("%s: %d reviews in %d shards", name, len(splits[name]), p.num_shards)
    spec = build_spec(p, seed, splits, lengths, unknown, len(vocab), shards, by_movie=movies is not None)
    write_spec(out_dir / SPEC_FILE, spec)
    return spec


def main() -> None:
    seed, p = load_params("tfrecords_imdb", TFRecordsImdbParams)

    from stages.common.outputs import atomic_outputs

    with atomic_outputs() as out:
        convert(RAW, out.directory(OUT), p, seed)


if __name__ == "__main__":
    run_stage(main, "tfrecords_imdb")
