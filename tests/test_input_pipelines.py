"""Input pipelines (tutorial 06) over small TFRecord sets, and the inspect_batches stage."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import ROOT, run
from stages.common import input_pipelines as P, tfrecords as T
from stages.common.cli import StageError
from stages.datasets.fer2013_csv import EMOTIONS

N_FACES, N_REVIEWS = 70, 23


def encode_review(item: tuple[int, list[int]]) -> bytes:
    """The tfrecords_imdb record format: context + token_indexes feature list."""
    review_id, tokens = item
    context = {
        "sequence_length": T.int64_feature(len(tokens)),
        "target": T.int64_feature(review_id % 2),
        "rating": T.int64_feature(1 + review_id % 10),
        "review_id": T.int64_feature(review_id),
    }
    return T.sequence_example(context, {"token_indexes": T.int64_feature_list(tokens)})


def write_datasets(root: Path) -> None:
    """Tiny fer2013, series and imdb TFRecord sets, as the three stages lay them out."""
    from stages.tfrecords_fer2013 import encode_face
    from stages.tfrecords_series import Split, encode_window, fit_scaler, windows

    rng = np.random.default_rng(0)
    fer = root / "data/tfrecords/fer2013"
    faces = [(i, i % 7, 0, rng.integers(0, 256, 48 * 48, dtype=np.uint8)) for i in range(N_FACES)]
    T.write_split(fer, "train", faces, encode_face, num_shards=3, workers=1)
    T.write_spec(
        fer / "spec.json",
        {"class_names": list(EMOTIONS), "image_shape": [48, 48, 1], "splits": {"train": {"examples": N_FACES}}},
    )

    series = root / "data/tfrecords/series"
    n_days = 30
    dates = [dt.date(2016, 1, 1) + dt.timedelta(days=i) for i in range(n_days)]
    load = 20000 + 100 * rng.standard_normal((n_days, 24))
    split = Split("train", dates, load, load + 50, 0, 0)
    items = windows(split, 3, fit_scaler(split))
    T.write_split(series, "train", items, encode_window, num_shards=2, workers=1)
    T.write_spec(
        series / "spec.json", {"look_back": 3, "hours_per_day": 24, "splits": {"train": {"examples": len(items)}}}
    )

    imdb = root / "data/tfrecords/imdb"
    reviews = [(i, rng.integers(3, 50, 1 + (i * 7) % 31).tolist()) for i in range(N_REVIEWS)]
    T.write_split(imdb, "train", reviews, encode_review, num_shards=2, workers=1)
    T.write_spec(imdb / "spec.json", {"vocab_size": 50, "splits": {"train": {"examples": N_REVIEWS}}})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipelines")
    write_datasets(root)
    return root


def labels_of(dataset: Any) -> list[int]:  # a tf.data.Dataset
    return [int(v) for _, y in dataset.as_numpy_iterator() for v in y]


# --- images ---------------------------------------------------------------------------------


def test_image_batches_shapes_dtypes_and_values(data_root: Path) -> None:
    fer = data_root / "data/tfrecords/fer2013"
    batches = list(P.image_batches(fer, "train", 32).as_numpy_iterator())
    assert [len(y) for _, y in batches] == [32, 32, 6]
    images, labels = batches[0]
    assert images.shape == (32, 48, 48, 1) and images.dtype == np.float32 and labels.dtype == np.int64
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert sorted(labels_of(P.image_batches(fer, "train", 32))) == sorted(i % 7 for i in range(N_FACES))


def test_shuffle_depends_only_on_seed_and_epoch(data_root: Path) -> None:
    fer = data_root / "data/tfrecords/fer2013"
    first = labels_of(P.image_batches(fer, "train", 16, shuffle_seed=7, epoch=0))
    tf.random.set_seed(12345)  # TF's global seed must not matter
    assert labels_of(P.image_batches(fer, "train", 16, shuffle_seed=7, epoch=0)) == first
    assert labels_of(P.image_batches(fer, "train", 16, shuffle_seed=7, epoch=1)) != first
    assert labels_of(P.image_batches(fer, "train", 16, shuffle_seed=8, epoch=0)) != first
    assert sorted(first) == sorted(labels_of(P.image_batches(fer, "train", 16)))


@pytest.mark.parametrize("buffer", [None, 20])
def test_cached_and_streamed_batches_are_the_same(data_root: Path, buffer: int | None) -> None:
    fer = data_root / "data/tfrecords/fer2013"
    kwargs: dict[str, Any] = {"shuffle_seed": 3, "epoch": 2, "shuffle_buffer": buffer}
    cached = list(P.image_batches(fer, "train", 25, cache=True, **kwargs).as_numpy_iterator())
    streamed = list(P.image_batches(fer, "train", 25, cache=False, **kwargs).as_numpy_iterator())
    for (xa, ya), (xb, yb) in zip(cached, streamed, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_shuffle_order_blocks_stay_within_their_block() -> None:
    order = P.shuffle_order(10, seed=1, epoch=0, block=4)
    assert sorted(order[:4]) == [0, 1, 2, 3] and sorted(order[4:8]) == [4, 5, 6, 7] and sorted(order[8:]) == [8, 9]
    assert sorted(P.shuffle_order(10, 1, 0)) == list(range(10))


def test_gzip_shards_are_read_from_their_extension(tmp_path: Path, data_root: Path) -> None:
    from stages.tfrecords_fer2013 import encode_face

    faces = [(i, 3, 0, np.full(48 * 48, i, dtype=np.uint8)) for i in range(5)]
    paths = T.write_split(tmp_path, "valid", faces, encode_face, num_shards=2, compression="gzip", workers=1)
    assert all(p.name.endswith(".tfrecord.gz") for p in paths)
    T.write_spec(tmp_path / "spec.json", {"image_shape": [48, 48, 1], "splits": {"valid": {"examples": 5}}})
    images, labels = next(P.image_batches(tmp_path, "valid", 8, cache=False).as_numpy_iterator())
    assert labels.tolist() == [3] * 5
    np.testing.assert_allclose(
        images[:, 0, 0, 0], np.array([0, 2, 1, 3, 4]) / 255, rtol=1e-6
    )  # shards [0, 1], [2, 3, 4], round-robin


# --- series and text -------------------------------------------------------------------------


def test_series_batches(data_root: Path) -> None:
    series = data_root / "data/tfrecords/series"
    inputs, target = next(P.series_batches(series, "train", 8, shuffle_seed=1).as_numpy_iterator())
    assert inputs.shape == (8, 3, 24) and target.shape == (8, 24) and inputs.dtype == target.dtype == np.float32
    features, _ = next(P.series_batches(series, "train", 8, metadata=True).as_numpy_iterator())
    assert features["inputs_mw"].shape == (8, 3, 24) and features["target_mw"].shape == (8, 24)
    assert features["target_day"][0] == b"2016-01-04" and features["weekday"][0] == dt.date(2016, 1, 4).weekday()
    np.testing.assert_allclose(features["forecast_mw"], features["target_mw"] + 50, rtol=1e-6)
    kwargs: dict[str, Any] = {"shuffle_seed": 2, "epoch": 5, "metadata": True}
    cached = list(P.series_batches(series, "train", 8, cache=True, **kwargs).as_numpy_iterator())
    streamed = list(P.series_batches(series, "train", 8, cache=False, **kwargs).as_numpy_iterator())
    for (fa, ya), (fb, yb) in zip(cached, streamed, strict=True):
        np.testing.assert_array_equal(ya, yb)
        for name in fa:
            np.testing.assert_array_equal(fa[name], fb[name])


@pytest.mark.parametrize("buckets", [None, [8, 16]])
def test_text_batches_pad_with_zero(data_root: Path, buckets: list[int] | None) -> None:
    imdb = data_root / "data/tfrecords/imdb"
    dataset = P.text_batches(imdb, "train", 5, shuffle_seed=4, bucket_boundaries=buckets, metadata=True)
    seen = 0
    for features, targets in dataset.as_numpy_iterator():
        tokens, lengths = features["token_indexes"], features["sequence_length"]
        assert tokens.dtype == np.int64 and tokens.shape == (len(targets), lengths.max())
        for row, length in zip(tokens, lengths, strict=True):
            assert np.all(row[:length] >= 3) and np.all(row[length:] == P.PAD_ID)
        assert targets.tolist() == (features["review_id"] % 2).tolist()
        if buckets:  # a bucket holds lengths from one interval only
            assert len({int(np.searchsorted(buckets, n, side="right")) for n in lengths}) == 1
        seen += len(targets)
    assert seen == N_REVIEWS


# --- integrity ------------------------------------------------------------------------------------


def test_damaged_shard_is_named_before_and_while_reading(tmp_path: Path, data_root: Path) -> None:
    fer = tmp_path / "fer2013"
    shutil.copytree(data_root / "data/tfrecords/fer2013", fer)
    dataset = P.image_batches(fer, "train", 8, cache=False)  # checked and built while intact
    shard = T.shard_paths(fer, "train")[1]
    intact = shard.read_bytes()
    data = bytearray(intact)
    data[100] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(StageError, match=rf"^{shard}: corrupted file"):
        with P.naming_damaged_file(T.shard_paths(fer, "train")):
            for _ in dataset:
                pass
    with pytest.raises(StageError, match=rf"^{shard}: corrupted file"):
        P.image_batches(fer, "train", 8)
    shard.write_bytes(intact[:-10])
    with pytest.raises(StageError, match=rf"^{shard}: truncated file"):
        P.dataset_files(fer, "train")


# --- stage inspect_batches -------------------------------------------------------------------------


@pytest.fixture
def inspect_project(tmp_path: Path, data_root: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(data_root / "data", project / "data")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["inspect_batches"] = {"split": "train", "image_batch_size": 16, "text_batch_size": 4, "series_batch_size": 4}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project


def test_inspect_batches_writes_a_face_grid_and_batch_summaries(inspect_project: Path) -> None:
    run(["python", "-m", "stages.inspect_batches"], inspect_project)
    plots = inspect_project / "plots/inspect_batches"
    assert (plots / "fer2013_batch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = json.loads((plots / "imdb_batch.json").read_text())
    assert text["batch_size"] == 4 and text["vocab_size"] == 50
    assert text["token_indexes_shape"] == [4, max(text["sequence_length"])]
    series = json.loads((plots / "series_batch.json").read_text())
    assert series["inputs_shape"] == [4, 3, 24] and len(series["target_days"]) == 4
    first = {p.name: p.read_bytes() for p in plots.iterdir()}
    run(["python", "-m", "stages.inspect_batches"], inspect_project)
    assert {p.name: p.read_bytes() for p in plots.iterdir()} == first  # byte-stable


def test_inspect_batches_names_a_damaged_file_and_writes_nothing(inspect_project: Path) -> None:
    shard = T.shard_paths(inspect_project / "data/tfrecords/imdb", "train")[0]
    shard.write_bytes(shard.read_bytes()[:-5])
    result = run(["python", "-m", "stages.inspect_batches"], inspect_project, check=False)
    assert result.returncode == 2
    # TensorFlow's C++ start-up lines may precede it (absl logging); the error is one line, last.
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {shard.relative_to(inspect_project)}: truncated file: record ")
    assert "Traceback" not in result.stderr and result.stderr.count("error: ") == 1
    assert not (inspect_project / "plots").exists()


# --- one part per worker (tf.distribute) ----------------------------------------------------


@pytest.mark.parametrize("workers", [2, 3])  # 2 shards: by file for 2 workers, by record for 3
def test_each_worker_reads_its_own_part_of_a_split(data_root: Path, workers: int) -> None:
    imdb = data_root / "data/tfrecords/imdb"
    parts = []
    for index in range(workers):
        context = tf.distribute.InputContext(
            num_input_pipelines=workers, input_pipeline_id=index, num_replicas_in_sync=workers
        )
        files, record_shard = P.worker_part(P.dataset_files(imdb, "train"), context)
        assert (record_shard is None) == (workers <= 2)
        batches = list(P.text_batches(imdb, "train", 4 * workers, metadata=True, input_context=context))
        assert all(len(y) <= 4 for _, y in batches)  # per replica: the global batch / replicas
        parts.append([int(i) for x, _ in batches for i in x["review_id"]])
    ids = [i for part in parts for i in part]
    assert sorted(ids) == list(range(N_REVIEWS))  # every review once, on one worker


def test_images_and_series_by_file_with_per_replica_batches(data_root: Path) -> None:
    fer, series = data_root / "data/tfrecords/fer2013", data_root / "data/tfrecords/series"
    sizes = []
    for index in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=index, num_replicas_in_sync=2)
        faces = list(P.image_batches(fer, "train", 32, shuffle_seed=1, input_context=context).as_numpy_iterator())
        assert all(len(y) <= 16 for _, y in faces)
        sizes.append(sum(len(y) for _, y in faces))
        windows = list(P.series_batches(series, "train", 8, input_context=context).as_numpy_iterator())
        assert windows and all(len(y) <= 4 for _, y in windows)
    assert sum(sizes) == N_FACES and all(sizes)
