"""TFRecord files: protobuf encoding, sharded parallel writing, integrity checks, specs.

Layout of a dataset directory (``data/tfrecords/<dataset>/``)::

    <split>-00000-of-00004.tfrecord      # or .tfrecord.gz with compression: gzip
    ...
    spec.json                            # feature names, dtypes, counts (write_spec)

Each shard holds a contiguous chunk of the split's items in their original
order, so the files depend only on the items and ``num_shards``.

Why no TensorFlow here: ``import tensorflow`` costs ~4 s per process, which
would eat most of the gain of encoding in a process pool. ``tf.train.Example``
and ``SequenceExample`` are small protobuf messages, encoded below directly in
the wire format (keys sorted, lists packed: byte-identical to TF's
``SerializeToString(deterministic=True)``, which the tests check), and the
TFRecord framing is four fields with a masked CRC32C (the ``crc32c`` package,
C speed). TensorFlow's reader and the independent PyPI ``tfrecord`` reader both
read the result (tests).

Record framing (TensorFlow's ``tensorflow/core/lib/io/record_writer.cc``)::

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import multiprocessing
import re
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal

import crc32c
import numpy as np

from stages.common.cli import StageError
from stages.common.outputs import write_json

Compression = Literal["none", "gzip"]
COMPRESSIONS: tuple[str, ...] = ("none", "gzip")
SUFFIX = {"none": ".tfrecord", "gzip": ".tfrecord.gz"}
SPEC_FILE = "spec.json"

_SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SHARD_NAME = re.compile(
    r"(?P<split>[a-z][a-z0-9_]*)-(?P<index>\d{5})-of-(?P<count>\d{5})(?P<suffix>\.tfrecord(?:\.gz)?)"
)
_MAX_SHARDS = 99999  # five digits in the file names
_CHUNK_ITEMS = 512  # items per pool task: fine-grained progress, little pickling overhead
_CRC_MASK_DELTA = 0xA282EAD8


# --- protobuf wire format ------------------------------------------------------
# Field tags (field_number << 3 | wire_type 2 = length-delimited), from
# tensorflow/core/example/{feature,example}.proto.
_TAG_1 = b"\x0a"  # field 1: BytesList.value, *List.value (packed), Feature.bytes_list, map key, ...
_TAG_2 = b"\x12"  # field 2: Feature.float_list, map value, SequenceExample.feature_lists
_TAG_3 = b"\x1a"  # field 3: Feature.int64_list


def _varint(value: int) -> bytes:
    """One unsigned varint (lengths; negative int64 go through :func:`_varints`)."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_matrix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varint bytes of int64 ``values`` as a (n, 10) uint8 matrix and each one's length."""
    unsigned = np.asarray(values, dtype=np.int64).view(np.uint64)  # negatives: 10 bytes, as protobuf
    shifts = np.arange(10, dtype=np.uint64) * np.uint64(7)
    groups = ((unsigned[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    lengths = np.ones(len(unsigned), dtype=np.int64)
    for k in range(1, 10):
        lengths += unsigned >= np.uint64(1 << (7 * k))
    more = np.arange(10)[None, :] < (lengths[:, None] - 1)
    groups[more] |= 0x80
    return groups, lengths


def _varints(values: np.ndarray) -> bytes:
    """Concatenated varints of int64 ``values`` (vectorized: token lists are long)."""
    values = np.asarray(values, dtype=np.int64).ravel()
    if values.size and values.min() >= 0 and values.max() < 0x80:
        return values.astype(np.uint8).tobytes()  # the common case: one byte each
    groups, lengths = _varint_matrix(values)
    return groups[np.arange(10)[None, :] < lengths[:, None]].tobytes()


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


_BytesLike = bytes | bytearray | memoryview | str  # str is UTF-8 encoded


def _as_bytes(value: _BytesLike) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def int64_feature(values: int | Iterable[int] | np.ndarray) -> bytes:
    """A serialized ``tf.train.Feature`` holding an ``int64_list``."""
    if type(values) is int:  # scalars (labels, ids, lengths): plain Python is ~50x faster than numpy here
        if not -(2**63) <= values < 2**63:
            raise OverflowError(f"int64_feature: {values} does not fit in int64")
        return _field(_TAG_3, _field(_TAG_1, _varint(values & 0xFFFF_FFFF_FFFF_FFFF)))  # two's complement, as protobuf
    array = np.atleast_1d(np.asarray(values if not isinstance(values, Iterator) else list(values)))
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"int64_feature needs integers, got dtype {array.dtype}")
    packed = _field(_TAG_1, _varints(array)) if array.size else b""
    return _field(_TAG_3, packed)


def float_feature(values: float | Iterable[float] | np.ndarray) -> bytes:
    """A serialized ``tf.train.Feature`` holding a ``float_list`` (float32, as TF stores them)."""
    array = np.atleast_1d(np.asarray(values if not isinstance(values, Iterator) else list(values), dtype="<f4"))
    packed = _field(_TAG_1, array.tobytes()) if array.size else b""
    return _field(_TAG_2, packed)


def bytes_feature(values: _BytesLike | Iterable[_BytesLike]) -> bytes:
    """A serialized ``tf.train.Feature`` holding a ``bytes_list`` (str is UTF-8 encoded)."""
    if isinstance(values, (bytes, bytearray, memoryview, str)):
        values = [values]
    return _field(_TAG_1, b"".join(_field(_TAG_1, _as_bytes(v)) for v in values))


def _feature_map(features: Mapping[str, bytes]) -> bytes:
    """A ``map<string, Feature|FeatureList>`` body, keys sorted as deterministic serialization does."""
    entries = sorted((name.encode("utf-8"), value) for name, value in features.items())
    return b"".join(_field(_TAG_1, _field(_TAG_1, key) + _field(_TAG_2, value)) for key, value in entries)


def example(features: Mapping[str, bytes]) -> bytes:
    """A serialized ``tf.train.Example`` from ``{name: int64_feature(...)/float_feature/bytes_feature}``."""
    return _field(_TAG_1, _feature_map(features))


def feature_list(features: Iterable[bytes]) -> bytes:
    """A serialized ``tf.train.FeatureList`` of serialized Features (one per time step)."""
    return b"".join(_field(_TAG_1, f) for f in features)


def _int64_steps_matrix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value's serialized FeatureList step as a row of a (n, 16) uint8 matrix, and its size.

    Each step is ``FeatureList.feature { int64_list { value: [v] } }``: the
    bytes ``0a (n+4) 1a (n+2) 0a n <varint v>`` with n = len(varint v) <= 10.
    """
    groups, lengths = _varint_matrix(values)
    matrix = np.empty((len(values), 16), dtype=np.uint8)
    matrix[:, 0] = 0x0A
    matrix[:, 1] = lengths + 4
    matrix[:, 2] = 0x1A
    matrix[:, 3] = lengths + 2
    matrix[:, 4] = 0x0A
    matrix[:, 5] = lengths
    matrix[:, 6:] = groups
    return matrix, lengths + 6


def int64_feature_list(values: Sequence[int] | np.ndarray) -> bytes:
    """``feature_list([int64_feature(v) for v in values])``, vectorized for long token lists."""
    values = np.asarray(values, dtype=np.int64).ravel()
    if values.size == 0:
        return b""
    matrix, sizes = _int64_steps_matrix(values)
    return matrix[np.arange(16)[None, :] < sizes[:, None]].tobytes()


def int64_steps(start: int, stop: int) -> list[bytes]:
    """``[feature_list([int64_feature(v)]) for v in range(start, stop)]``, vectorized.

    The serialized FeatureList step of each value (0 <= start): a writer of token ids
    builds this table once and joins copies of its entries, instead of encoding every step.
    """
    values = np.arange(start, stop, dtype=np.int64)
    if values.size == 0:
        return []
    matrix, sizes = _int64_steps_matrix(values)
    return [row[:size].tobytes() for row, size in zip(matrix, sizes.tolist(), strict=True)]


def sequence_example(context: Mapping[str, bytes], feature_lists: Mapping[str, bytes]) -> bytes:
    """A serialized ``tf.train.SequenceExample``: context Features and named FeatureLists."""
    out = b""
    if context:
        out += _field(_TAG_1, _feature_map(context))
    if feature_lists:
        out += _field(_TAG_2, _feature_map(feature_lists))
    return out


# --- TFRecord framing ------------------------------------------------------------


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C: rotate right by 15 bits and add a constant."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One record in TFRecord framing."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", masked_crc32c(length)) + record + struct.pack("<I", masked_crc32c(record))


def _encode_chunk(encode: Callable[[Any], bytes], items: Sequence[Any]) -> bytes:
    """Pool task: encode and frame a run of items (module level so it pickles by name)."""
    parts = []
    for item in items:
        record = encode(item)
        if not isinstance(record, bytes):
            raise TypeError(f"encode must return bytes, got {type(record).__name__}")
        parts.append(frame(record))
    return b"".join(parts)


# --- writing ------------------------------------------------------------------------


def shard_name(split: str, index: int, num_shards: int, compression: Compression = "none") -> str:
    """``train-00000-of-00004.tfrecord`` (``.tfrecord.gz`` with gzip)."""
    return f"{split}-{index:05d}-of-{num_shards:05d}{SUFFIX[compression]}"


def shard_bounds(num_items: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` item ranges per shard, sizes differing by at most one."""
    edges = [num_items * i // num_shards for i in range(num_shards + 1)]
    return list(zip(edges[:-1], edges[1:], strict=False))


def _check_write_args(split: str, num_shards: int, compression: str, workers: int) -> None:
    if not _SPLIT_NAME.fullmatch(split):
        raise StageError(f"split name {split!r}: use lower-case letters, digits and _ (e.g. train)")
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or not 1 <= num_shards <= _MAX_SHARDS:
        raise StageError(f"num_shards must be an integer in 1..{_MAX_SHARDS} (got {num_shards!r})")
    if compression not in COMPRESSIONS:
        raise StageError(f"compression must be one of {'|'.join(COMPRESSIONS)} (got {compression!r})")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise StageError(f"workers must be an integer >= 1 (got {workers!r})")


class _ShardFile:
    """A shard being written: raw bytes, or one gzip stream (mtime 0, so the bytes are stable)."""

    def __init__(self, path: Path, compression: Compression) -> None:
        self._file = path.open("wb")
        # wbits 31 = gzip container; zlib writes mtime 0 and no file name.
        self._zip = zlib.compressobj(6, zlib.DEFLATED, 31) if compression == "gzip" else None

    def write(self, data: bytes) -> None:
        self._file.write(self._zip.compress(data) if self._zip else data)

    def close(self) -> None:
        if self._zip:
            self._file.write(self._zip.flush())
        self._file.close()


@contextmanager
def encoder_pool(workers: int) -> Iterator[concurrent.futures.Executor | None]:
    """A process pool for several :func:`write_split` calls (``None`` when ``workers`` is 1).

    Starting "spawn" workers costs ~0.5 s each time; a stage writing three
    splits starts them once. "spawn", not "fork": forking a process that
    already runs TensorFlow's threads can deadlock.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise StageError(f"workers must be an integer >= 1 (got {workers!r})")
    if workers == 1:
        yield None
        return
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)  # on an error, don't finish queued work first


def write_split(
    out_dir: Path,
    split: str,
    items: Sequence[Any],
    encode: Callable[[Any], bytes],
    *,
    num_shards: int,
    compression: Compression = "none",
    workers: int = 2,
    desc: str = "",
    pool: concurrent.futures.Executor | None = None,
) -> list[Path]:
    """Write ``items`` as ``num_shards`` TFRecord files ``<out_dir>/<split>-0000i-of-0000N...``.

    ``encode(item)`` returns a serialized Example/SequenceExample. With
    ``workers > 1`` (or a ``pool`` from :func:`encoder_pool`) items are encoded
    in worker processes, in chunks, so ``encode`` must be a module-level
    function and the items picklable. The parent writes the framed records in
    item order, so the files are byte-identical whatever the number of
    workers. A shard may be empty (more shards than items): a valid TFRecord
    file with no records. Returns the shard paths in order.
    """
    from tqdm import tqdm

    _check_write_args(split, num_shards, compression, workers)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bounds = shard_bounds(len(items), num_shards)
    # Tasks never straddle a shard, so each result goes to exactly one file.
    tasks = [
        (shard, start, min(start + _CHUNK_ITEMS, stop))
        for shard, (lo, stop) in enumerate(bounds)
        for start in range(lo, stop, _CHUNK_ITEMS)
    ]
    paths = [out_dir / shard_name(split, i, num_shards, compression) for i in range(num_shards)]
    files = [_ShardFile(p, compression) for p in paths]
    progress = tqdm(
        total=len(items), desc=desc or split, unit="rec", leave=False, mininterval=0.5, file=sys.stderr, disable=None
    )  # no bar in logs without a terminal, like every other bar
    try:
        with ExitStack() as stack:
            if pool is None and workers > 1 and len(tasks) > 1:
                pool = stack.enter_context(encoder_pool(workers))
            if pool is None:
                results: Iterable[bytes] = (_encode_chunk(encode, items[a:b]) for _, a, b in tasks)
                _write_results(tasks, results, files, progress)
            else:
                futures = [pool.submit(_encode_chunk, encode, items[a:b]) for _, a, b in tasks]
                try:
                    _write_results(tasks, (f.result() for f in futures), files, progress)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        progress.close()
        for file in files:
            file.close()
    return paths


def _write_results(
    tasks: list[tuple[int, int, int]], results: Iterable[bytes], files: list[_ShardFile], progress: Any
) -> None:
    for (shard, start, stop), data in zip(tasks, results, strict=True):
        files[shard].write(data)
        progress.update(stop - start)


# --- reading and checking ---------------------------------------------------------------


def shard_paths(out_dir: Path, split: str) -> list[Path]:
    """The shards of ``split`` in ``out_dir``, in order; StageError unless the set is complete."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise StageError(f"{out_dir}: no such directory (run the stage that writes it first)")
    found: dict[int, Path] = {}
    counts: set[int] = set()
    suffixes: set[str] = set()
    for path in out_dir.iterdir():
        match = _SHARD_NAME.fullmatch(path.name)
        if match is None or match["split"] != split:
            continue
        found[int(match["index"])] = path
        counts.add(int(match["count"]))
        suffixes.add(match["suffix"])
    if not found:
        raise StageError(f"{out_dir}: no TFRecord shards for split {split!r}")
    if len(counts) > 1 or len(suffixes) > 1:
        raise StageError(
            f"{out_dir}: split {split!r} mixes shard sets ({sorted(p.name for p in found.values())[:4]} ...)"
        )
    count = counts.pop()
    missing = sorted(set(range(count)) - set(found))
    if missing or max(found) >= count:
        names = ", ".join(shard_name(split, i, count) for i in missing[:3])
        raise StageError(f"{out_dir}: split {split!r} is incomplete: missing {names or 'shards'} of {count}")
    return [found[i] for i in range(count)]


def compression_of(path: Path) -> Compression:
    """The compression a shard was written with, from its file name."""
    return "gzip" if Path(path).name.endswith(".gz") else "none"


def _open_shard(path: Path) -> Any:
    return gzip.open(path, "rb") if compression_of(path) == "gzip" else Path(path).open("rb")


def read_records(path: Path) -> Iterator[bytes]:
    """The records of one shard, checking framing and both CRCs; StageError names the file.

    A pure-Python reader (no TensorFlow): stages call :func:`verify_shards` on
    their inputs, and the input pipeline uses it to say which file is damaged.
    """
    record = 0
    offset = 0
    try:
        with _open_shard(path) as stream:
            while True:
                header = stream.read(12)
                if not header:
                    return
                if len(header) < 12:
                    raise StageError(f"{path}: truncated file: record {record} header cut short at byte {offset}")
                (length,) = struct.unpack("<Q", header[:8])
                if struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
                    raise StageError(f"{path}: corrupted file: bad length checksum of record {record} at byte {offset}")
                body = stream.read(length + 4)
                if len(body) < length + 4:
                    raise StageError(f"{path}: truncated file: record {record} cut short at byte {offset}")
                data = body[:length]
                if struct.unpack("<I", body[length:])[0] != masked_crc32c(data):
                    raise StageError(f"{path}: corrupted file: bad data checksum of record {record} at byte {offset}")
                yield data
                record += 1
                offset += 16 + length
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise StageError(f"{path}: unreadable TFRecord file near record {record}: {exc}") from None


def verify_shards(paths: Iterable[Path]) -> list[int]:
    """Check every record of every shard (fast: CRC32C in C); the record count of each."""
    counts = []
    for path in paths:
        count = 0
        for _ in read_records(path):
            count += 1
        counts.append(count)
    return counts


# --- specs ---------------------------------------------------------------------------------


def split_entry(
    examples: int, files: Sequence[Path], class_counts: Mapping[str, int] | None = None, **details: Any
) -> dict[str, Any]:
    """One split of a ``spec.json``, in the schema every dataset shares: ``examples`` (records),
    ``class_counts`` (labelled datasets only), the dataset's own ``details``, then ``files``
    (the shard names, which the input pipelines check)."""
    entry: dict[str, Any] = {"examples": int(examples)}
    if class_counts is not None:
        entry["class_counts"] = {str(name): int(n) for name, n in class_counts.items()}
    entry.update(details)
    entry["files"] = [Path(path).name for path in files]
    return entry


def write_spec(path: Path, spec: Mapping[str, Any]) -> None:
    """The small JSON spec of a dataset (feature names and dtypes, counts, ...)."""
    write_json(Path(path), spec)


def read_spec(path: Path) -> dict[str, Any]:
    """A dataset's spec; ``path`` is the spec file or its dataset directory."""
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path}: not found (run the stage that writes this dataset first)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StageError(f"{path}: not a valid JSON spec: {exc}") from None
    if not isinstance(spec, dict):
        raise StageError(f"{path}: expected a JSON object")
    return spec
