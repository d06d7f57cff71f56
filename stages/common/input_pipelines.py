"""Input pipelines (tutorial 06): TFRecord shards -> parsed, shuffled, batched ``(features, label)``.

One module for every training stage. Each ``*_batches`` function builds the
``tf.data.Dataset`` of one split for one epoch::

    shards -> parallel interleave (deterministic) -> seeded shuffle
    -> parse/decode (parallel, deterministic) -> batch -> prefetch

**Shuffling** depends only on ``(shuffle_seed, epoch)``, never on TensorFlow's
global seed: ``Dataset.shuffle(seed=s)`` combines ``s`` with the global seed
(``tf.random.set_seed``), so the same seed gave a different order in a stage
that seeded TF and in a test that did not. Instead :func:`shuffle_order`
draws the order with NumPy from ``(seed, epoch)``: a permutation of the whole
split (``shuffle_buffer=None``, default: an exact uniform shuffle, holding the
split's serialized records in memory once per epoch, tens of MB here) or of
consecutive blocks of ``shuffle_buffer`` records. Build a new dataset for
each epoch: ``for epoch in ...: image_batches(..., epoch=epoch)``.

**Cache** (images and series, ``cache=True`` by default): the first call
decodes the split through the TFRecord pipeline into NumPy arrays kept in this
process (66 MB of uint8 for the 28,709 training faces), keyed by the files'
size and mtime; later epochs slice them (``from_tensor_slices``) in the same
shuffled order. Decoding PNGs (~30 µs a face) would otherwise bound every
epoch at a few 10,000 faces/s on two cores. Both paths give the same batches.

**Several workers** (``tf.distribute``, stages/common/distribute.py): pass the
``tf.distribute.InputContext`` that ``distribute_datasets_from_function`` gives
as ``input_context``, and each worker reads its part of the split and batches
per replica (``batch_size`` stays the global batch size): whole shards (worker
``i`` of ``n`` the shards ``i, i + n, ...``) when the split has at least as many
shards as workers, otherwise every ``n``-th record. Without it (the default)
nothing changes.

**Integrity.** The shards are checked (framing and CRCs, in C; once per file
version) before a dataset is built, so a damaged or truncated file stops the
stage with one line naming it before any work; :func:`naming_damaged_file`
does the same for a file damaged while being read.

Batches:

- images (FER2013): ``(float32 (b, 48, 48, 1) in [0, 1], int64 label (b,))``;
- series: ``(float32 (b, look_back, 24) scaled inputs, float32 (b, 24) scaled target)``;
  ``metadata=True`` makes the features a dict with ``inputs`` and the MW values,
  ``target_day`` and ``weekday`` (for baselines and reports), plus ``calendar``
  (b, look_back + 1, k) when the spec declares it; ``calendar=True`` makes them
  ``{"days": inputs, "calendar": calendar}`` (the load forecaster's two inputs);
- text (IMDB): ``({"token_indexes": int64 (b, T) padded with 0, "sequence_length": int64 (b,)},
  int64 target (b,))``, T the longest review of the batch; ``bucket_boundaries``
  groups reviews of similar length (``bucket_by_sequence_length``) to pad less.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from stages.common.cli import StageError
from stages.common.tfrecords import compression_of, read_spec, shard_bounds, shard_paths, verify_shards

AUTOTUNE = tf.data.AUTOTUNE
PAD_ID = 0  # token id 0 is reserved for padding by tfrecords_imdb
READ_BUFFER = 1 << 20  # bytes per shard read: fewer, larger reads
MAX_PARALLEL_FILES = 8
PARSE_BATCH = 256  # records parsed per vectorized call
MAX_CACHED_SPLITS = 8

__all__ = [
    "count_records",
    "dataset_files",
    "worker_part",
    "image_batches",
    "naming_damaged_file",
    "read_spec",
    "records",
    "series_batches",
    "shuffle_order",
    "text_batches",
]

Arrays = dict[str, np.ndarray]


# --- files and integrity --------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _verified(path: str, size: int, mtime_ns: int) -> int:
    return verify_shards([Path(path)])[0]


def _version(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def dataset_files(data_dir: Path, split: str) -> list[Path]:
    """The shards of ``split``, each checked record by record (once per file version), and
    their record counts checked against ``spec.json``.

    The count comes free with the framing check that reads every record anyway,
    so a shard cut exactly at a record boundary (valid framing, fewer records)
    is caught before training, at no extra pass over the data.
    """
    files = shard_paths(Path(data_dir), split)
    counts = [_verified(*_version(path)) for path in files]
    _check_counts(Path(data_dir), split, files, counts)
    return files


def _check_counts(data_dir: Path, split: str, files: Sequence[Path], counts: Sequence[int]) -> None:
    """StageError naming the shard whose record count disagrees with the split's count in spec.json."""
    entry = read_spec(data_dir).get("splits", {}).get(split)
    if not isinstance(entry, dict):
        raise StageError(f"{data_dir / 'spec.json'}: no split {split!r} (the shards and the spec disagree)")
    expected = entry.get("examples")  # the schema of tfrecords.split_entry
    listed = entry.get("files")
    if listed is not None and sorted(listed) != sorted(f.name for f in files):
        raise StageError(
            f"{data_dir}: the {split} shards {[f.name for f in files]} are not those spec.json lists "
            f"{listed} (re-run the stage that writes them)"
        )
    if not isinstance(expected, int):
        return
    # write_split gives shard i the contiguous chunk shard_bounds says: each shard's own count is known.
    for path, count, (start, stop) in zip(files, counts, shard_bounds(expected, len(files)), strict=True):
        if count != stop - start:
            raise StageError(
                f"{path}: {count} records, but spec.json's {expected} {split} records give it "
                f"{stop - start} (truncated or replaced shard; re-run the stage that writes it)"
            )


def count_records(files: Sequence[Path]) -> int:
    """Records in ``files`` (from the cached check)."""
    return sum(_verified(*_version(Path(f))) for f in files)


@contextmanager
def naming_damaged_file(files: Sequence[Path]) -> Iterator[None]:
    """Turn TensorFlow's DataLossError (which names no file) into a StageError naming the damaged shard,
    and a parse error (records that do not fit spec.json's features and shapes) into one naming the spec."""
    try:
        yield
    except tf.errors.DataLossError as exc:
        verify_shards(files)  # raises the StageError naming the file and record
        raise StageError(f"{Path(files[0]).parent}: damaged TFRecord data: {_first_line(exc)}") from None
    except tf.errors.InvalidArgumentError as exc:
        raise _spec_mismatch(files, exc) from None


def _first_line(exc: tf.errors.OpError) -> str:
    return (exc.message.strip().splitlines() or [""])[0][:300]


def _spec_mismatch(files: Sequence[Path], exc: tf.errors.OpError) -> StageError:
    folder = Path(files[0]).parent
    return StageError(
        f"{folder / 'spec.json'} does not fit the records of {Path(files[0]).name} ...: "
        f"{_first_line(exc)} (re-run the stage that writes {folder})"
    )


# --- records, order ----------------------------------------------------------------------


def shuffle_order(num_records: int, seed: int, epoch: int, block: int | None = None) -> np.ndarray:
    """Record positions in shuffled order: a function of (seed, epoch) and the block size only.

    ``block=None`` permutes the whole split; otherwise each run of ``block``
    consecutive records is permuted within itself.
    """
    rng = np.random.default_rng([seed, epoch])
    if block is None or block >= num_records:
        return rng.permutation(num_records)
    starts = range(0, num_records, block)
    return np.concatenate([start + rng.permutation(min(block, num_records - start)) for start in starts])


def records(files: Sequence[Path], order: np.ndarray | None = None, block: int | None = None) -> tf.data.Dataset:
    """Serialized records of ``files``, round-robin over the shards; in ``order`` when given.

    ``order`` comes from :func:`shuffle_order` with the same ``block``.
    """
    files = [Path(f) for f in files]
    compression = {"none": "", "gzip": "GZIP"}[compression_of(files[0])]
    dataset = tf.data.Dataset.from_tensor_slices([str(f) for f in files])
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression, buffer_size=READ_BUFFER),
        cycle_length=min(len(files), MAX_PARALLEL_FILES),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if order is None:
        return dataset
    block = len(order) if block is None else block
    positions = tf.constant(order, dtype=tf.int64)

    def reorder(index: tf.Tensor, chunk: tf.Tensor) -> tf.Tensor:
        start = index * block
        return tf.gather(chunk, positions[start : start + tf.shape(chunk, out_type=tf.int64)[0]] - start)

    return dataset.batch(max(1, block)).enumerate().map(reorder).unbatch()


def worker_part(
    files: Sequence[Path], input_context: tf.distribute.InputContext | None
) -> tuple[list[Path], tuple[int, int] | None]:
    """This worker's part of a split: ``(its files, None)`` when there are at least as many files as
    workers (worker ``i`` of ``n`` reads files ``i, i + n, ...``), else ``(all files, (n, i))``: every
    ``n``-th record, from record ``i`` (``Dataset.shard(n, i)``)."""
    if input_context is None or input_context.num_input_pipelines <= 1:
        return list(files), None
    workers, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    if len(files) >= workers:
        return list(files)[index::workers], None
    return list(files), (workers, index)


def _worker_batches(
    dataset: tf.data.Dataset,
    record_shard: tuple[int, int] | None,
    batch_size: int,
    input_context: tf.distribute.InputContext | None,
) -> tuple[tf.data.Dataset, int]:
    """``dataset`` sharded by record if ``record_shard``, and the batch size per replica."""
    if record_shard is not None:
        dataset = dataset.shard(*record_shard)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    return dataset, batch_size


def _order(files: Sequence[Path], shuffle_seed: int | None, epoch: int, block: int | None) -> np.ndarray | None:
    """This epoch's :func:`shuffle_order` over ``files``; ``None`` (file order) without a seed."""
    return None if shuffle_seed is None else shuffle_order(count_records(files), shuffle_seed, epoch, block)


_CACHE: dict[tuple, Arrays] = {}


def _examples(
    files: Sequence[Path],
    parse_batch: Callable[[tf.Tensor], dict[str, tf.Tensor]],
    *,
    shuffle_seed: int | None,
    epoch: int,
    shuffle_buffer: int | None,
    cache: bool,
    select: Callable[[dict[str, Any]], Any] = lambda parsed: parsed,
) -> tf.data.Dataset:
    """Parsed examples (unbatched), streamed or from the in-memory cache.

    ``select`` picks the element structure from the parsed dict with plain
    dict operations: applied to NumPy arrays for the cache (no per-epoch
    ``map`` to trace) and inside the parsing ``map`` when streaming.
    """
    order = _order(files, shuffle_seed, epoch, shuffle_buffer)
    if not cache:
        dataset = records(files, order, shuffle_buffer).batch(PARSE_BATCH)
        return dataset.map(
            lambda batch: select(parse_batch(batch)), num_parallel_calls=AUTOTUNE, deterministic=True
        ).unbatch()
    key = (parse_batch.__qualname__, tuple(_version(Path(f)) for f in files))
    if key not in _CACHE:
        if len(_CACHE) >= MAX_CACHED_SPLITS:
            _CACHE.pop(next(iter(_CACHE)))
        parsed = records(files).batch(PARSE_BATCH).map(parse_batch, num_parallel_calls=AUTOTUNE, deterministic=True)
        with naming_damaged_file(files):
            batches = list(parsed.as_numpy_iterator())
        _CACHE[key] = {name: np.concatenate([b[name] for b in batches]) for name in batches[0]} if batches else {}
    arrays = select(dict(_CACHE[key]))
    if order is not None:
        arrays = tf.nest.map_structure(lambda values: values[order], arrays)
    return tf.data.Dataset.from_tensor_slices(arrays)


def _finish(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    return dataset.prefetch(AUTOTUNE).with_options(options)


# --- images -----------------------------------------------------------------------------------


def image_batches(
    data_dir: Path,
    split: str,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    epoch: int = 0,
    shuffle_buffer: int | None = None,
    drop_remainder: bool = False,
    cache: bool = True,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """FER2013 batches: ``(images float32 (b, H, W, 1) in [0, 1], labels int64 (b,))``."""
    spec = read_spec(Path(data_dir))
    shape = [int(n) for n in spec.get("image_shape", [48, 48, 1])]
    files, record_shard = worker_part(dataset_files(data_dir, split), input_context)
    features = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    image_spec = tf.TensorSpec(shape, tf.uint8)

    def parse_faces(batch: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(batch, features)
        images = tf.map_fn(
            lambda png: tf.ensure_shape(tf.io.decode_png(png, channels=shape[-1]), shape),
            parsed["image"],
            fn_output_signature=image_spec,
            parallel_iterations=16,
        )
        return {"image": images, "label": parsed["label"]}

    dataset = _examples(
        files, parse_faces, shuffle_seed=shuffle_seed, epoch=epoch, shuffle_buffer=shuffle_buffer, cache=cache
    )
    if input_context is not None:
        dataset, batch_size = _worker_batches(dataset, record_shard, batch_size, input_context)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    # uint8 -> float32 per batch, not per face: one vectorized op.
    dataset = dataset.map(
        lambda b: (tf.image.convert_image_dtype(b["image"], tf.float32), b["label"]),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return _finish(dataset)


# --- series -----------------------------------------------------------------------------------


def series_batches(
    data_dir: Path,
    split: str,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    epoch: int = 0,
    shuffle_buffer: int | None = None,
    drop_remainder: bool = False,
    metadata: bool = False,
    calendar: bool = False,
    cache: bool = True,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Load windows: ``(inputs (b, look_back, 24), target (b, 24))``, both scaled float32.

    With ``metadata`` the features are a dict: ``inputs`` as above plus
    ``inputs_mw`` (b, look_back, 24), ``target_mw`` and ``forecast_mw`` (b, 24)
    in MW, ``target_day`` (ISO date strings) and ``weekday`` (0 = Monday), and
    ``calendar`` (b, look_back + 1, k) if the spec declares calendar features.
    With ``calendar`` (and no ``metadata``) the features are
    ``{"days": inputs, "calendar": calendar}``.
    """
    spec = read_spec(Path(data_dir))
    look_back, hours = int(spec["look_back"]), int(spec["hours_per_day"])
    n_calendar = len(spec.get("calendar", {}).get("features", []))
    if calendar and not n_calendar:
        raise StageError(f"{Path(data_dir) / 'spec.json'}: no calendar features (re-run tfrecords_series)")
    files, record_shard = worker_part(dataset_files(data_dir, split), input_context)
    window, day = [look_back * hours], [hours]
    features = {
        "inputs": tf.io.FixedLenFeature(window, tf.float32),
        "target": tf.io.FixedLenFeature(day, tf.float32),
        "inputs_mw": tf.io.FixedLenFeature(window, tf.float32),
        "target_mw": tf.io.FixedLenFeature(day, tf.float32),
        "forecast_mw": tf.io.FixedLenFeature(day, tf.float32),
        "target_day": tf.io.FixedLenFeature([], tf.string),
        "weekday": tf.io.FixedLenFeature([], tf.int64),
    }
    if n_calendar:
        features["calendar"] = tf.io.FixedLenFeature([(look_back + 1) * n_calendar], tf.float32)

    def parse_windows(batch: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(batch, features)  # vectorized: much faster than per record
        for name in ("inputs", "inputs_mw"):
            parsed[name] = tf.reshape(parsed[name], [-1, look_back, hours])
        if n_calendar:
            parsed["calendar"] = tf.reshape(parsed["calendar"], [-1, look_back + 1, n_calendar])
        return parsed

    def split_label(parsed: dict[str, Any]) -> tuple[Any, Any]:
        target = parsed.pop("target")
        if metadata:
            return parsed, target
        if calendar:
            return {"days": parsed["inputs"], "calendar": parsed["calendar"]}, target
        return parsed["inputs"], target

    dataset = _examples(
        files,
        parse_windows,
        shuffle_seed=shuffle_seed,
        epoch=epoch,
        shuffle_buffer=shuffle_buffer,
        cache=cache,
        select=split_label,
    )
    if input_context is not None:
        dataset, batch_size = _worker_batches(dataset, record_shard, batch_size, input_context)
    return _finish(dataset.batch(batch_size, drop_remainder=drop_remainder))


# --- text -------------------------------------------------------------------------------------


def text_batches(
    data_dir: Path,
    split: str,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    epoch: int = 0,
    shuffle_buffer: int | None = None,
    bucket_boundaries: Sequence[int] | None = None,
    drop_remainder: bool = False,
    metadata: bool = False,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """IMDB batches: ``({"token_indexes" (b, T), "sequence_length" (b,)}, target (b,))``, all int64.

    Reviews are padded with id 0 (reserved for padding) to the longest in the
    batch. ``bucket_boundaries`` (e.g. ``[100, 200, 400]``) batches reviews of
    similar length together (``tf.data.experimental.bucket_by_sequence_length``):
    less padding, a different batch composition. With ``metadata`` the
    features also hold ``rating`` and ``review_id``.
    """
    files, record_shard = worker_part(dataset_files(data_dir, split), input_context)
    context = {
        name: tf.io.FixedLenFeature([], tf.int64) for name in ("sequence_length", "target", "rating", "review_id")
    }
    sequence = {"token_indexes": tf.io.FixedLenSequenceFeature([], tf.int64)}

    def parse(record: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        ctx, steps = tf.io.parse_single_sequence_example(record, context_features=context, sequence_features=sequence)
        features = {"token_indexes": steps["token_indexes"], "sequence_length": ctx["sequence_length"]}
        if metadata:
            features |= {"rating": ctx["rating"], "review_id": ctx["review_id"]}
        return features, ctx["target"]

    order = _order(files, shuffle_seed, epoch, shuffle_buffer)
    dataset = records(files, order, shuffle_buffer).map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
    if input_context is not None:
        dataset, batch_size = _worker_batches(dataset, record_shard, batch_size, input_context)
    if bucket_boundaries:
        boundaries = sorted({int(b) for b in bucket_boundaries})
        dataset = dataset.bucket_by_sequence_length(
            lambda features, _: tf.shape(features["token_indexes"])[0],
            bucket_boundaries=boundaries,
            bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
            padding_values=(
                {key: tf.constant(PAD_ID, tf.int64) for key in dataset.element_spec[0]},
                tf.constant(0, tf.int64),
            ),
            drop_remainder=drop_remainder,
        )
    else:
        # One scalar pads every component (all int64); the targets are never padded.
        dataset = dataset.padded_batch(
            batch_size, padding_values=tf.constant(PAD_ID, tf.int64), drop_remainder=drop_remainder
        )
    return _finish(dataset)
