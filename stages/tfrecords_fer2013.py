"""Stage ``tfrecords_fer2013`` (tutorial 05): the FER2013 faces as ``tf.train.Example`` TFRecords.

Reads the normalized ``data/raw/fer2013/fer2013.csv`` and writes one set of
shards per split (Training -> train, PublicTest -> valid, PrivateTest -> test)
under ``data/tfrecords/fer2013/``, plus ``spec.json``. Each Example holds:

- ``image``: the 48×48 grayscale face as PNG bytes (lossless, ~2.5× smaller than
  raw pixels; OpenCV's encoder gives the same bytes on every run),
- ``label`` (int64, 0-6, names in the spec), ``usage`` (bytes, the CSV's Usage),
- ``height``, ``width`` (int64, 48), ``row_index`` (int64: 0-based data row of
  the CSV, header not counted, so a record can be traced back to its line).

Rows keep the CSV's order within a split (the input pipeline shuffles).
PNG encoding runs in a process pool over chunks of rows (``workers``); the
output bytes do not depend on the number of workers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from stages.common.cli import StageError, run_stage
from stages.common.params import Section, load_params
from stages.common.tfrecords import (
    SPEC_FILE,
    bytes_feature,
    encoder_pool,
    example,
    int64_feature,
    split_entry,
    write_spec,
    write_split,
)
from stages.datasets.fer2013_csv import EMOTIONS, SIDE, USAGES, read_rows

log = logging.getLogger(__name__)

RAW_CSV = Path("data/raw/fer2013/fer2013.csv")
OUT_DIR = Path("data/tfrecords/fer2013")
SPLITS = {"Training": "train", "PublicTest": "valid", "PrivateTest": "test"}
# Level 1 (OpenCV's default, stated so a changed default cannot change the bytes):
# higher levels save ~5 % on 48×48 faces for twice the encoding time.
PNG_COMPRESSION = 1

FEATURES = {
    "image": {"dtype": "string", "shape": [], "encoding": "png"},
    "label": {"dtype": "int64", "shape": []},
    "usage": {"dtype": "string", "shape": []},
    "height": {"dtype": "int64", "shape": []},
    "width": {"dtype": "int64", "shape": []},
    "row_index": {"dtype": "int64", "shape": []},
}


class TfrecordsFer2013Params(Section):
    num_shards: int = Field(ge=1, le=999, description="files per split")
    compression: Literal["none", "gzip"]
    workers: int = Field(ge=1, le=64, description="processes encoding PNGs; output does not depend on it")


def encode_face(item: tuple[int, int, int, np.ndarray]) -> bytes:
    """One serialized Example from ``(row_index, label, usage id, pixels (2304,) uint8)``."""
    import cv2  # here: only the pool's workers and the writer need it

    row_index, label, usage, pixels = item
    ok, png = cv2.imencode(".png", pixels.reshape(SIDE, SIDE), [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise StageError(f"row {row_index}: OpenCV could not encode the face as PNG")
    return example(
        {
            "image": bytes_feature(png.tobytes()),
            "label": int64_feature(label),
            "usage": bytes_feature(USAGES[usage]),
            "height": int64_feature(SIDE),
            "width": int64_feature(SIDE),
            "row_index": int64_feature(row_index),
        }
    )


def read_faces(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, usage ids, pixels (n, 2304) uint8)`` of the normalized CSV; any bad row is an error."""
    labels, usages, pixels = [], [], []
    try:
        stream = path.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        raise StageError(f"{path}: not found (run the download_fer2013 stage first)") from None
    with stream:
        for chunk, bad in read_rows(stream, str(path)):
            if bad:  # the acquisition stage wrote this file: a bad row means it was damaged since
                raise StageError(f"{path}: line {bad[0].line}: {bad[0].message} (re-run download_fer2013)")
            labels.append(chunk.emotions)
            usages.append(chunk.usages)
            pixels.append(chunk.pixels)
    if not labels:
        raise StageError(f"{path}: no rows")
    return np.concatenate(labels), np.concatenate(usages), np.concatenate(pixels)


def split_items(labels: np.ndarray, usages: np.ndarray, pixels: np.ndarray) -> dict[str, list]:
    """Encoder items per output split, in CSV order."""
    items: dict[str, list] = {}
    for usage_id, usage in enumerate(USAGES):
        rows = np.flatnonzero(usages == usage_id)
        items[SPLITS[usage]] = [(int(r), int(labels[r]), usage_id, pixels[r]) for r in rows]
    return items


def build_spec(items: dict[str, list], shards: dict[str, list[Path]], p: TfrecordsFer2013Params) -> dict:
    """``spec.json``: what the files hold, for the input pipeline and for people."""
    splits = {}
    for usage, split in SPLITS.items():
        labels = np.array([item[1] for item in items[split]], dtype=np.int64)
        counts = np.bincount(labels, minlength=len(EMOTIONS))
        class_counts = dict(zip(EMOTIONS, counts.tolist(), strict=True))
        splits[split] = {"usage": usage, **split_entry(len(items[split]), shards[split], class_counts)}
    return {
        "dataset": "fer2013",
        "record": "tf.train.Example",
        "compression": p.compression,
        "features": FEATURES,
        "label_feature": "label",
        "class_names": list(EMOTIONS),
        "image_shape": [SIDE, SIDE, 1],
        "splits": splits,
    }


def main() -> None:
    _, p = load_params("tfrecords_fer2013", TfrecordsFer2013Params)

    from stages.common.outputs import atomic_outputs

    labels, usages, pixels = read_faces(RAW_CSV)
    items = split_items(labels, usages, pixels)
    empty = [split for split, rows in items.items() if not rows]
    if empty:
        raise StageError(f"{RAW_CSV}: no rows for split(s) {', '.join(empty)} (Usage {'/'.join(USAGES)})")
    with atomic_outputs() as out, encoder_pool(p.workers) as pool:
        out_dir = out.directory(OUT_DIR)
        shards = {}
        for split, rows in items.items():
            shards[split] = write_split(
                out_dir,
                split,
                rows,
                encode_face,
                num_shards=p.num_shards,
                compression=p.compression,
                pool=pool,
                desc=f"fer2013 {split}",
            )
            log.info("%s: %d faces in %d shard(s)", split, len(rows), p.num_shards)
        write_spec(out_dir / SPEC_FILE, build_spec(items, shards, p))


if __name__ == "__main__":
    run_stage(main, "tfrecords_fer2013")
