"""FER2013 as folders of images, read into the rows of the canonical CSV.

Most copies of FER2013 today are image folders ``<split>/<emotion>/<file>``:

- ``{train,validation,test}/<emotion>/{Training,PublicTest,PrivateTest}_<n>.jpg``:
  the file names keep the original split (28,709 / 3,589 / 3,589 grey JPEGs);
- the Kaggle dataset ``msambare/fer2013``: ``{train,test}/<emotion>/*`` (28,709 / 7,178),
  no split names and no validation split.

Split folders ``train``, ``validation`` (or ``val``, ``valid``) and ``test``
give Training, PublicTest and PrivateTest; a ``Training_``/``PublicTest_``/
``PrivateTest_`` file name overrides the folder (a test folder may hold both
test splits), but a Training name outside ``train/`` (or the reverse) is a bad
file. Emotion folders ``angry, disgust, fear, happy, sad, surprise, neutral``
(any case) give labels 0–6. Without any PublicTest image, a seeded stratified
share of each Training class (``fer2013.valid_fraction``) becomes PublicTest.

Each image is decoded with OpenCV as it is stored (no EXIF rotation) and must
be 48×48 and grey. A colour image whose channels differ by at most
``GREY_TOLERANCE`` levels (grey content saved as RGB, JPEG chroma rounding) is
converted to grey and counted; a real colour picture, a 16-bit one, the wrong
size, a file OpenCV cannot decode, a file outside an emotion folder and an
unknown folder are bad files: ``fer2013.on_bad_row: fail`` stops at the first
with one line naming it, ``skip`` drops and counts them. Hidden files
(``.DS_Store``), ``__MACOSX/`` and anything beside the split folders at the top
(a README, a notebook) are ignored.

Rows are ordered by split (Training, PublicTest, PrivateTest), then by the
``<n>`` of named files, then by path (numbers in names compared as numbers),
so the CSV bytes depend only on the images.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from stages.common.cli import StageError
from stages.datasets.fer2013_csv import EMOTIONS, SIDE, USAGES

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": 0, "validation": 1, "valid": 1, "val": 1, "test": 2}  # -> index in USAGES
EMOTION_FOLDERS = {emotion.lower(): label for label, emotion in enumerate(EMOTIONS)}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".pnm", ".tif", ".tiff", ".webp"})
_NAMED = re.compile(r"(Training|PublicTest|PrivateTest)_(\d+)")  # a file's stem
_IGNORED = {"__MACOSX", "Thumbs.db", "desktop.ini"}  # left by archivers and file browsers
GREY_TOLERANCE = 8  # grey levels between the channels of a colour file that still counts as grey
BAD_FILE_REASONS = (
    "unknown_folder",
    "outside_emotion_folder",
    "split_mismatch",
    "unreadable_image",
    "wrong_size",
    "not_grey",
)
EXAMPLES_KEPT = 10


def ignored(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED


def looks_like_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def find_root(path: Path) -> Path | None:
    """The folder holding the split folders: ``path`` itself or its only subfolder (an archive's top folder)."""

    def has_splits(folder: Path) -> bool:
        return any(c.is_dir() and c.name.lower() in SPLIT_FOLDERS for c in folder.iterdir() if not ignored(c.name))

    if has_splits(path):
        return path
    children = [c for c in path.iterdir() if c.is_dir() and not ignored(c.name)]
    if len(children) == 1 and has_splits(children[0]):
        return children[0]
    return None


def _natural(text: str) -> tuple:
    """Sort key comparing the digit runs of ``text`` as numbers (im2 before im10)."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text)))


class BadFiles:
    """Bad files found so far: the first ends the stage (``fail``) or each is counted (``skip``)."""

    def __init__(self, on_bad_row: str) -> None:
        self.fail = on_bad_row == "fail"
        self.found = dict.fromkeys(BAD_FILE_REASONS, 0)
        self.examples: list[str] = []

    def add(self, where: str, reason: str, message: str) -> None:
        line = f"{where}: {message}"
        if self.fail:
            raise StageError(f"{line} (fer2013.on_bad_row: skip drops such files)")
        self.found[reason] += 1
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(line)


@dataclass
class Face:
    path: Path
    relative: str
    label: int
    usage: int
    key: tuple


@dataclass
class Faces:
    """The good images in output order, and what was found reading them."""

    emotions: np.ndarray  # (n,) uint8
    usages: np.ndarray  # (n,) uint8
    pixels: np.ndarray  # (n, 48, 48) uint8
    bad: BadFiles
    valid_split: str
    images_sha256: str
    converted_from_colour: int = 0
    ignored: list[str] = field(default_factory=list)


def list_faces(root: Path, where, bad: BadFiles) -> list[Face]:
    """The image files under the split folders of ``root``, checked by location, in output order."""
    faces = []
    splits = sorted((c for c in root.iterdir() if c.is_dir() and c.name.lower() in SPLIT_FOLDERS), key=lambda c: c.name)
    # Training and PrivateTest come only from these folders (PublicTest may be carved from train/):
    # without one, every later stage would fail, so say which folder is missing here.
    for usage, folder in ((0, "train"), (2, "test")):
        if not any(SPLIT_FOLDERS[c.name.lower()] == usage for c in splits):
            raise StageError(
                f"{where(root / folder)}: no such folder (the {USAGES[usage]} images); every later stage needs them"
            )
    for split in splits:
        folder_usage = SPLIT_FOLDERS[split.name.lower()]
        files = 0
        for top, dirs, names in os.walk(split):
            dirs[:] = sorted(d for d in dirs if not ignored(d))
            for name in sorted(n for n in names if not ignored(n)):
                path = Path(top, name)
                parts = path.relative_to(split).parts
                relative = path.relative_to(root).as_posix()
                files += 1
                if len(parts) == 1:
                    bad.add(
                        where(path),
                        "outside_emotion_folder",
                        f"not in an emotion folder (expected {split.name}/<emotion>/{name})",
                    )
                    continue
                label = EMOTION_FOLDERS.get(parts[0].lower())
                if label is None:
                    bad.add(
                        where(path),
                        "unknown_folder",
                        f"unknown emotion folder {parts[0]!r} (expected one of {', '.join(EMOTION_FOLDERS)})",
                    )
                    continue
                if len(parts) > 2:
                    bad.add(
                        where(path),
                        "outside_emotion_folder",
                        f"in a subfolder of {split.name}/{parts[0]}/ (images belong directly in it)",
                    )
                    continue
                named = _NAMED.fullmatch(Path(name).stem)
                if named is None:
                    faces.append(Face(path, relative, label, folder_usage, (folder_usage, 1, 0, _natural(relative))))
                    continue
                usage = USAGES.index(named.group(1))
                if (usage == 0) != (folder_usage == 0):  # a test folder may hold both test splits
                    bad.add(where(path), "split_mismatch", f"its name says {named.group(1)} but it is in {split.name}/")
                    continue
                faces.append(Face(path, relative, label, usage, (usage, 0, int(named.group(2)), _natural(relative))))
        if files == 0:
            raise StageError(f"{where(split)}: no image files in this split folder")
    faces.sort(key=lambda f: f.key)
    return faces


def decode(data: bytes) -> tuple[np.ndarray | None, str | None, str | None, bool]:
    """``(48×48 uint8 face, None, None, converted)`` or ``(None, reason, message, False)``."""
    if not data:  # cv2.imdecode raises on an empty buffer instead of returning None
        return None, "unreadable_image", "an empty file (0 bytes)", False
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        return None, "unreadable_image", "not an image OpenCV can read (corrupt, truncated or another format)", False
    if image.shape[:2] != (SIDE, SIDE):
        return None, "wrong_size", f"{image.shape[1]}x{image.shape[0]} pixels, expected {SIDE}x{SIDE}", False
    if image.dtype != np.uint8:
        return None, "not_grey", f"{image.dtype} pixels, expected 8-bit grey", False
    if image.ndim == 2:
        return image, None, None, False
    channels = image.shape[2]
    if channels == 2:  # grey + alpha
        return np.ascontiguousarray(image[:, :, 0]), None, None, True
    colour = image[:, :, :3].astype(np.int16)
    spread = int((colour.max(axis=2) - colour.min(axis=2)).max())
    if spread > GREY_TOLERANCE:
        return (
            None,
            "not_grey",
            (f"a colour image (channels differ by up to {spread} levels; at most {GREY_TOLERANCE} is taken for grey)"),
            False,
        )
    return cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2GRAY), None, None, True


def carve_valid(labels: np.ndarray, usages: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Usages with ``round(fraction × n)`` Training rows of each class made PublicTest, chosen by ``seed``."""
    rng = np.random.default_rng([seed, 2013])  # a stream of its own: other draws from the seed do not move it
    usages = usages.copy()
    for label in range(len(EMOTIONS)):
        rows = np.flatnonzero((usages == 0) & (labels == label))
        take = int(np.floor(fraction * len(rows) + 0.5))
        usages[rng.permutation(rows)[:take]] = 1
    return usages


def read_faces(root: Path, where, on_bad_row: str, seed: int, valid_fraction: float) -> Faces:
    """Every image under ``root`` (which holds the split folders), checked, decoded and split."""
    # A damaged file is reported as a bad file: OpenCV's own log lines about it would only repeat that.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    bad = BadFiles(on_bad_row)
    faces = list_faces(root, where, bad)
    ignored_top = sorted(
        c.name for c in root.iterdir() if not ignored(c.name) and not (c.is_dir() and c.name.lower() in SPLIT_FOLDERS)
    )
    pixels = np.empty((len(faces), SIDE, SIDE), dtype=np.uint8)
    kept: list[Face] = []
    converted = 0
    tree = hashlib.sha256()
    for face in tqdm(faces, desc="reading images", unit=" images", file=sys.stderr, disable=None, leave=False):
        try:
            data = face.path.read_bytes()
        except OSError as exc:
            bad.add(where(face.path), "unreadable_image", f"cannot read it: {exc.strerror or exc}")
            continue
        tree.update(f"{face.relative}\0{hashlib.sha256(data).hexdigest()}\n".encode())
        image, reason, message, was_colour = decode(data)
        if image is None:
            assert reason is not None and message is not None  # decode gives both with no image
            bad.add(where(face.path), reason, message)
            continue
        pixels[len(kept)] = image
        kept.append(face)
        converted += was_colour
    pixels = pixels[: len(kept)]
    labels = np.array([f.label for f in kept], dtype=np.uint8)
    usages = np.array([f.usage for f in kept], dtype=np.uint8)
    if (usages == 1).any():
        named = any(f.key[1] == 0 for f in kept if f.usage == 1)
        valid_split = "from the file names (PublicTest_<n>)" if named else "from the validation folder"
    elif valid_fraction > 0:
        usages = carve_valid(labels, usages, valid_fraction, seed)
        valid_split = "carved from train, seeded, stratified"
    else:
        valid_split = "none (fer2013.valid_fraction: 0)"
    order = np.argsort(usages, kind="stable")  # Training, PublicTest, PrivateTest; path order within each
    if converted:
        log.info("%d colour images of grey content converted to grey", converted)
    return Faces(
        labels[order],
        usages[order],
        pixels[order],
        bad,
        valid_split,
        tree.hexdigest(),
        converted,
        ignored_top[:EXAMPLES_KEPT],
    )
