"""Tutorial 04: text preprocessing (stages/datasets/imdb_text.py) and the ``tfrecords_imdb`` stage."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import copy_project, project_files, run
from stages.common.cli import StageError
from stages.datasets.imdb_text import (
    EOS_ID,
    PAD_ID,
    RESERVED,
    UNK_ID,
    Vocabulary,
    build_vocabulary,
    clean_html,
    count_tokens,
    decode,
    encode,
    load_vocabulary,
    save_vocabulary,
    token_ids,
    tokenize,
)
from stages.tfrecords_imdb import Review, find_reviews, split_reviews
from tfrecord_reader import read_independently

OUT = Path("data/tfrecords/imdb")


# --- text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("Great film.<br /><br />Loved it!", ["great", "film", ".", "loved", "it", "!"]),
        ("I didn't like it; it's bad", ["i", "did", "n't", "like", "it", ";", "it", "'s", "bad"]),
        (
            "They'll say I'm wrong, we've gone, you're right, he'd go",
            [
                "they",
                "'ll",
                "say",
                "i",
                "'m",
                "wrong",
                ",",
                "we",
                "'ve",
                "gone",
                ",",
                "you",
                "'re",
                "right",
                ",",
                "he",
                "'d",
                "go",
            ],
        ),
        ("Can't won't DON'T", ["ca", "n't", "wo", "n't", "do", "n't"]),
        ("It\u2019s a well-made, low-budget film...", ["it", "'s", "a", "well-made", ",", "low-budget", "film", "..."]),
        ("3.5/10, 1,000 extras!!", ["3.5", "/", "10", ",", "1,000", "extras", "!", "!"]),
        ("Tom &amp; Jerry &lt;3 &quot;yes&quot;", ["tom", "&", "jerry", "<", "3", '"', "yes", '"']),
        ("A caf\u00e9 in Montr\u00e9al <i>rocks</i>", ["a", "caf\u00e9", "in", "montr\u00e9al", "rocks"]),
        ("The end.The start", ["the", "end", ".", "the", "start"]),
        ("", []),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_clean_html_strips_tags_and_unescapes() -> None:
    assert clean_html("a<br />b<br/>c<p class='x'>d&amp;e") == "a b c d&e"


def test_vocabulary_min_frequency_ties_and_reserved_ids() -> None:
    counts = Counter({"b": 5, "a": 5, "c": 7, "rare": 4, "z": 9, "<unk>": 50})
    vocab = build_vocabulary(counts, min_word_frequency=5)
    assert vocab.tokens == (*RESERVED, "z", "c", "a", "b")  # count desc, then token asc
    assert (vocab.ids["<pad>"], vocab.ids["<unk>"], vocab.ids["<eos>"]) == (PAD_ID, UNK_ID, EOS_ID) == (0, 1, 2)
    assert "rare" not in vocab.ids
    # Ties do not depend on the order tokens were counted in.
    assert build_vocabulary(Counter(dict(reversed(list(counts.items())))), 5) == vocab
    assert len(build_vocabulary(counts, 1)) == len(RESERVED) + 5


def test_vocabulary_file_round_trip(tmp_path: Path) -> None:
    vocab = build_vocabulary(count_tokens(["Caf\u00e9 caf\u00e9 n't \u2028 x", "x \x1c y"]), 1)
    path = tmp_path / "vocab.txt"
    save_vocabulary(vocab, path)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[:3] == list(RESERVED) and lines[-1] == ""  # one token per line, id = line number
    assert load_vocabulary(path) == vocab
    with pytest.raises(ValueError, match="whitespace"):
        save_vocabulary(Vocabulary((*RESERVED, "two words")), path)
    path.write_text("hello\n", encoding="utf-8")
    with pytest.raises(ValueError, match="reserved"):
        load_vocabulary(path)


def test_encode_keeps_the_last_words_then_eos() -> None:
    vocab = build_vocabulary(count_tokens(["one two three four five"]), 1)
    ids = encode("one two three four five", vocab, max_words=3)
    assert decode(ids, vocab) == ["three", "four", "five", "<eos>"]
    assert encode("one <br /> six", vocab, max_words=700) == [vocab.ids["one"], UNK_ID, EOS_ID]
    assert encode("", vocab) == [EOS_ID]
    assert token_ids(["one"] * 1000, vocab) == [vocab.ids["one"]] * 700 + [EOS_ID]


def test_split_is_stratified_seeded_and_disjoint() -> None:
    train = [Review(f"train/{t}/{i}", i, 2 if t == 0 else 9, t) for t in (0, 1) for i in range(50)]
    test = [Review(f"test/{i}", i, 1, 0) for i in range(7)]
    splits = split_reviews(train, test, 0.2, seed=3)
    assert splits == split_reviews(train, test, 0.2, seed=3)
    assert splits["valid"] != split_reviews(train, test, 0.2, seed=4)["valid"]
    assert [sum(r.target for r in splits["valid"]), len(splits["valid"])] == [10, 20]
    assert set(splits["train"]).isdisjoint(splits["valid"])
    assert set(splits["train"]) | set(splits["valid"]) == set(train)
    assert sorted(splits["test"]) == sorted(test)
    with pytest.raises(StageError, match="no train reviews"):
        split_reviews(train[:1], test, 0.9, seed=3)


def test_split_by_movie_keeps_every_movie_on_one_side() -> None:
    # 40 movies with 1-8 reviews each, of both classes, as aclImdb lists them in urls_*.txt.
    train, movies = [], {}
    for i in range(200):
        target, movie = i % 2, f"tt{(i * 7) % 40:07d}"
        train.append(Review(f"train/{target}/{i}", i, 2 if target == 0 else 9, target))
        movies[(target, i)] = movie
    test = [Review(f"test/{i}", i, 1, 0) for i in range(5)]
    splits = split_reviews(train, test, 0.2, seed=3, movies=movies)
    assert splits == split_reviews(train, test, 0.2, seed=3, movies=movies)
    valid_movies = {movies[(r.target, r.review_id)] for r in splits["valid"]}
    train_movies = {movies[(r.target, r.review_id)] for r in splits["train"]}
    assert valid_movies and valid_movies.isdisjoint(train_movies)
    assert 40 <= len(splits["valid"]) < 40 + 5  # whole movies until a fifth of the reviews (5 per movie here)
    assert set(splits["train"]) | set(splits["valid"]) == set(train)


def test_int64_steps_table_and_scalar_features_match_the_shared_codec() -> None:
    import numpy as np

    from stages.common.tfrecords import feature_list, int64_feature, int64_steps

    table = int64_steps(0, 20_000)
    assert len(table) == 20_000
    for value in (0, 1, 127, 128, 300, 16_383, 16_384, 19_999):
        assert table[value] == feature_list([int64_feature(value)])
    # A table grown in pieces, as the stage grows it, holds the same steps.
    assert int64_steps(0, 127) + int64_steps(127, 20_000) == table
    assert int64_steps(5, 5) == []
    # The scalar fast path gives the vectorized path's bytes, negatives and large values included.
    for value in (0, 1, 127, 128, 300, 16_383, 16_384, 19_999, 2**40, 2**63 - 1, -1, -(2**63)):
        assert int64_feature(value) == int64_feature(np.array([value], dtype=np.int64))


def test_bad_tree_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"train/neg: missing folder"):
        find_reviews(tmp_path, "train")
    for label in ("neg", "pos"):
        (tmp_path / "train" / label).mkdir(parents=True)
    with pytest.raises(StageError, match=r"train/neg: no reviews"):
        find_reviews(tmp_path, "train")
    (tmp_path / "train" / "neg" / "notes.txt").write_text("x")
    with pytest.raises(StageError, match=r"notes\.txt: unexpected file name"):
        find_reviews(tmp_path, "train")


# --- the stage on a tiny tree -------------------------------------------------------------

PER_CLASS = {"train": 10, "test": 4}
PARAMS: dict[str, Any] = {
    "min_word_frequency": 5,
    "max_words": 12,
    "valid_fraction": 0.2,
    "num_shards": 2,
    "compression": "none",
    "workers": 2,
}


def review_text(split: str, label: str, review_id: int) -> str:
    """Shared words (counted >= 5 times), a word unique to the review repeated 5 times (in
    the vocabulary iff the review stays in train), and in test a word never seen in train."""
    mood = "great wonderful" if label == "pos" else "awful boring"
    unique = f"w{split}{label}{review_id}"
    extra = " zebra" * 6 if split == "test" else ""
    return (
        f"The film was {mood}.<br /><br />I didn't think it's &quot;{unique}&quot;"
        + f" {unique}" * 4
        + f"{extra} and the end"
        + " of it" * (review_id % 5)
    )


def make_tree(root: Path) -> None:
    for split, n in PER_CLASS.items():
        for label, ratings in (("neg", (1, 2, 3, 4)), ("pos", (7, 8, 9, 10))):
            folder = root / split / label
            folder.mkdir(parents=True)
            for review_id in range(n):
                rating = ratings[review_id % 4]
                (folder / f"{review_id * 3}_{rating}.txt").write_text(
                    review_text(split, label, review_id * 3), encoding="utf-8"
                )


def set_params(project: Path, **changes: object) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["tfrecords_imdb"] = {**PARAMS, **changes}
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def read_outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = [f for f in project_files() if f == "params.yaml" or f.startswith("stages/")]
    project = copy_project(tmp_path_factory.mktemp("imdb") / "project", files)
    make_tree(project / "data/raw/imdb/aclImdb")
    set_params(project)
    return project


@pytest.fixture(scope="module")
def converted(project: Path) -> dict[str, bytes]:
    """The stage's outputs with two workers; checked against one worker and gzip."""
    run(["python", "-m", "stages.tfrecords_imdb"], cwd=project)
    return read_outputs(project / OUT)


def test_outputs_do_not_depend_on_workers_or_run(project: Path, converted: dict[str, bytes]) -> None:
    assert set(converted) == {"imdb_vocab.txt", "spec.json"} | {
        f"{split}-0000{i}-of-00002.tfrecord" for split in ("train", "valid", "test") for i in (0, 1)
    }
    set_params(project, workers=1)
    try:
        run(["python", "-m", "stages.tfrecords_imdb"], cwd=project)
        assert read_outputs(project / OUT) == converted
        set_params(project, compression="gzip")
        run(["python", "-m", "stages.tfrecords_imdb"], cwd=project)
        zipped = read_outputs(project / OUT)
        assert {name.removesuffix(".gz") for name in zipped} == set(converted)
        for name, data in zipped.items():
            plain = gzip.decompress(data) if name.endswith(".gz") else data
            if name != "spec.json":
                assert plain == converted[name.removesuffix(".gz")], name
    finally:
        set_params(project)
        run(["python", "-m", "stages.tfrecords_imdb"], cwd=project)


def tf_records(folder: Path) -> dict[str, list[dict]]:
    """Every record parsed by TensorFlow, per split, with its serialized bytes."""
    import tensorflow as tf

    context = {
        name: tf.io.FixedLenFeature([], tf.int64) for name in ("sequence_length", "target", "rating", "review_id")
    }
    sequence = {"token_indexes": tf.io.FixedLenSequenceFeature([], tf.int64)}
    out = {}
    for split in ("train", "valid", "test"):
        records = []
        for raw in tf.data.TFRecordDataset(sorted(str(p) for p in folder.glob(f"{split}-*.tfrecord"))):
            ctx, seq = tf.io.parse_single_sequence_example(raw, context, sequence)
            records.append(
                {
                    **{k: int(v) for k, v in ctx.items()},
                    "token_indexes": seq["token_indexes"].numpy().tolist(),
                    "raw": raw.numpy(),
                }
            )
        out[split] = records
    return out


def tf_serialized(record: dict) -> bytes:
    """The same record built by TensorFlow's protobuf classes, token by token."""
    import tensorflow as tf

    example = tf.train.SequenceExample()
    for name in ("sequence_length", "target", "rating", "review_id"):
        example.context.feature[name].int64_list.value.append(record[name])
    steps = example.feature_lists.feature_list["token_indexes"]
    for index in record["token_indexes"]:
        steps.feature.add().int64_list.value.append(index)
    return example.SerializeToString(deterministic=True)


def independent_records(folder: Path) -> dict[str, list[dict]]:
    """Every record read by the PyPI ``tfrecord`` package (no TensorFlow), CRCs checked."""
    out = {}
    for split in ("train", "valid", "test"):
        records = []
        for path in sorted(folder.glob(f"{split}-*.tfrecord")):
            result = read_independently(path, sequence=True)
            assert result["crc_ok"] and all(result["crc_ok"]), path
            for record in result["records"]:
                ids = [step for (step,) in record["feature_lists"]["token_indexes"]]
                records.append({**{k: v for k, (v,) in record["context"].items()}, "token_indexes": ids})
        out[split] = records
    return out


def test_records_read_back_with_tensorflow_and_an_independent_reader(project: Path, converted: dict) -> None:
    folder = project / OUT
    parsed = tf_records(folder)
    independent = independent_records(folder)
    assert {
        split: [{k: v for k, v in r.items() if k != "raw"} for r in records] for split, records in parsed.items()
    } == independent
    vocab = load_vocabulary(folder / "imdb_vocab.txt")
    spec = json.loads(converted["spec.json"])
    raw = project / "data/raw/imdb/aclImdb"
    for split, records in parsed.items():
        assert len(records) == spec["splits"][split]["examples"]
        for record in records:
            assert record["raw"] == tf_serialized(record)  # hand-written bytes == TF's
            label = ("neg", "pos")[record["target"]]
            source = "test" if split == "test" else "train"
            path = raw / source / label / f"{record['review_id']}_{record['rating']}.txt"
            assert record["token_indexes"] == encode(path.read_text(encoding="utf-8"), vocab, PARAMS["max_words"])
            assert record["sequence_length"] == len(record["token_indexes"]) <= PARAMS["max_words"] + 1


def test_splits_vocabulary_and_spec(project: Path, converted: dict) -> None:
    import numpy as np

    spec = json.loads(converted["spec.json"])
    raw = project / "data/raw/imdb/aclImdb"
    reviews = {split: find_reviews(raw, "test" if split == "test" else "train") for split in ("train", "test")}
    splits = split_reviews(reviews["train"], reviews["test"], PARAMS["valid_fraction"], seed=spec["seed"])
    train_ids = {(r.target, r.review_id) for r in splits["train"]}
    valid_ids = {(r.target, r.review_id) for r in splits["valid"]}
    assert not train_ids & valid_ids and len(train_ids | valid_ids) == 2 * PER_CLASS["train"]
    assert {k: v["class_counts"] for k, v in spec["splits"].items()} == {
        "train": {"neg": 8, "pos": 8},
        "valid": {"neg": 2, "pos": 2},
        "test": {"neg": 4, "pos": 4},
    }

    # The vocabulary: train only, count >= 5, count desc then token asc.
    tokens = load_vocabulary(project / OUT / "imdb_vocab.txt").tokens
    counts = count_tokens(Path(r.path).read_text(encoding="utf-8") for r in splits["train"])
    assert tokens == build_vocabulary(counts, 5).tokens
    for target, review_id in train_ids:
        assert f"wtrain{('neg', 'pos')[target]}{review_id}" in tokens
    for target, review_id in valid_ids:
        assert f"wtrain{('neg', 'pos')[target]}{review_id}" not in tokens  # seen 5 times, but in valid
    assert "zebra" not in tokens and "wtestneg0" not in tokens  # test words are <unk>
    assert spec["splits"]["test"]["unknown_share"] > 0 == spec["splits"]["train"]["unknown_share"]

    assert spec["vocab_size"] == len(tokens)
    assert spec["reserved_ids"] == {"<pad>": 0, "<unk>": 1, "<eos>": 2}
    assert spec["context_features"] == dict.fromkeys(("sequence_length", "target", "rating", "review_id"), "int64")
    assert spec["sequence_features"] == {"token_indexes": "int64"}
    lengths = [len(tokenize(Path(r.path).read_text(encoding="utf-8"))) for r in splits["test"]]
    assert spec["splits"]["test"]["tokens"]["max"] == max(lengths)
    assert spec["splits"]["test"]["truncated"] == int(np.sum(np.array(lengths) > PARAMS["max_words"])) > 0
    assert spec["splits"]["test"]["sequence_length"]["max"] == PARAMS["max_words"] + 1


def test_bad_input_fails_in_one_line_and_keeps_outputs(project: Path, converted: dict) -> None:
    neg = project / "data/raw/imdb/aclImdb/test/neg"
    moved = neg.with_name("neg.away")
    neg.rename(moved)
    try:
        result = run(["python", "-m", "stages.tfrecords_imdb"], cwd=project, check=False)
    finally:
        moved.rename(neg)
    assert result.returncode == 2
    assert (
        result.stderr == "error: data/raw/imdb/aclImdb/test/neg: missing folder (run the download_imdb stage first)\n"
    )
    assert read_outputs(project / OUT) == converted


def test_params_are_validated(project: Path) -> None:
    shutil.copy(project / "params.yaml", project / "params.good")
    try:
        set_params(project, compression="zip", valid_fraction=1.5)
        result = run(["python", "-m", "stages.tfrecords_imdb"], cwd=project, check=False)
    finally:
        shutil.move(project / "params.good", project / "params.yaml")
    assert result.returncode == 2
    assert "tfrecords_imdb.valid_fraction" in result.stderr and "tfrecords_imdb.compression" in result.stderr
