"""Stage ``download_fer2013``: the FER2013 faces as one validated, normalized CSV.

``fer2013.source`` picks where the data comes from:

- ``sample`` (default): procedurally drawn faces (stages/samples/fer2013.py),
  written as a real ``fer2013.csv`` and then read like any user's file;
- ``path``: a file the user has: ``fer2013.csv``, ``fer2013.tar.gz`` (holding
  ``fer2013/fer2013.csv``), the Kaggle competition zip, or ``icml_face_data.csv``
  (columns ``emotion, Usage, pixels``); or FER2013 as image folders
  (``train/<emotion>/*.jpg`` ...: stages/datasets/fer2013_images.py), a folder or a
  zip / tar(.gz) of one; the form is told from the content;
- ``kaggle``: the competition zip through the official ``kaggle`` package
  (optional extra ``pip install .[kaggle]``, with the user's API credentials),
  or with ``fer2013.kaggle_dataset`` (e.g. ``msambare/fer2013``) a dataset's zip;
- ``url``: a mirror of any of those forms, checked against ``fer2013.sha256``.

Every row is checked (emotion 0–6, Usage, 2,304 integer pixels 0–255), every
image too (48×48 grey, in an emotion folder); ``fer2013.on_bad_row: fail``
stops at the first bad row or file, naming it, ``skip`` drops and counts them.
Writes ``data/raw/fer2013/fer2013.csv`` (``emotion,pixels,Usage``, the
original row order; images in split, then file-name order) and the data report
``metrics/data_fer2013.json``. Downloads are kept in ``data/downloads/fer2013``
so a later run with other params does not fetch them again.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Literal, Protocol
from urllib.parse import urlparse

import numpy as np
from pydantic import Field, model_validator
from tqdm import tqdm

from stages.common.archives import CORRUPT, check_member_name, extract_archive
from stages.common.cli import StageError, run_stage
from stages.common.download import download, sha256_file
from stages.common.outputs import atomic_outputs, keep_folder, scratch_folder, write_json
from stages.common.params import Section, UserPath, load_params
from stages.datasets import fer2013_images
from stages.datasets.fer2013_csv import (
    BAD_ROW_REASONS,
    COLUMNS,
    EMOTIONS,
    FER2013_SPLIT_ROWS,
    HEADER,
    PIXELS,
    USAGES,
    BadRow,
    find_columns,
    format_rows,
    read_rows,
)

log = logging.getLogger(__name__)
OUT_DIR = Path("data/raw/fer2013")
CSV_NAME = "fer2013.csv"
REPORT = Path("metrics/data_fer2013.json")
DOWNLOAD_DIR = Path("data/downloads/fer2013")
COMPETITION = "challenges-in-representation-learning-facial-expression-recognition-challenge"
# The competition zip holds example_submission.csv, fer2013.tar.gz, icml_face_data.csv,
# train.csv and test.csv; only the last two lack the Usage column. Preferred first:
CSV_MEMBERS = ("fer2013.csv", "icml_face_data.csv")
TAR_MEMBER = "fer2013.tar.gz"
EXAMPLES_KEPT = 10  # bad rows quoted in the report


class SampleSize(Section):
    preset: Literal["small", "full"] = Field(description="full: the real 28,709 / 3,589 / 3,589 rows")
    training: int = Field(ge=1, description="rows per split with preset small")
    public_test: int = Field(ge=1)
    private_test: int = Field(ge=1)

    def rows(self) -> dict[str, int]:
        if self.preset == "full":
            return dict(FER2013_SPLIT_ROWS)
        return {"Training": self.training, "PublicTest": self.public_test, "PrivateTest": self.private_test}


class Fer2013Params(Section):
    source: Literal["sample", "path", "kaggle", "url"]
    path: UserPath | None
    kaggle_dataset: str | None = Field(
        pattern=r"^[\w.-]+/[\w.-]+$",
        description="source kaggle: owner/name of a dataset (e.g. msambare/fer2013) instead of the competition",
    )
    valid_fraction: float = Field(
        ge=0.0,
        lt=1.0,
        description="image folders without a validation split: share of each Training class made PublicTest (seeded)",
    )
    url: str | None
    sha256: str | None = Field(pattern=r"^[0-9a-fA-F]{64}$", description="required for url, checked for path")
    size: int | None = Field(gt=0, description="bytes expected from url")
    on_bad_row: Literal["fail", "skip"]
    sample: SampleSize

    @model_validator(mode="after")
    def _source_has_what_it_needs(self) -> Fer2013Params:
        if self.source == "path" and not self.path:
            raise ValueError(
                "path: required with source: path (a fer2013.csv, fer2013.tar.gz, zip, icml_face_data.csv "
                "or image folders)"
            )
        if self.source == "url" and not self.url:
            raise ValueError("url: required with source: url")
        if self.source == "url" and not self.sha256:
            raise ValueError("sha256: required with source: url (the checksum of the mirror's file)")
        return self


# --- getting the source file -------------------------------------------------


def fetch_url(url: str, sha256: str, size: int | None) -> Path:
    """Download a mirror into the download cache (reused when its sha256 matches)."""
    name = PurePosixPath(urlparse(url).path).name or "fer2013-download"
    return download(url, DOWNLOAD_DIR / name, sha256, size)


def kaggle_credentials() -> bool:
    """Whether the kaggle package will find API credentials, without importing it."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    if os.environ.get("KAGGLE_API_TOKEN"):
        return True
    dirs = [os.environ.get("KAGGLE_CONFIG_DIR"), "~/.kaggle", "~/.config/kaggle"]
    return any(Path(d).expanduser().joinpath("kaggle.json").is_file() for d in dirs if d)


def fetch_kaggle(dataset: str | None = None) -> Path:
    """The competition zip (or ``dataset``'s zip), downloaded with the official kaggle package."""
    # Checked before importing: `import kaggle` authenticates at import time and,
    # without credentials, prints a notice or raises from deep inside.
    if importlib.util.find_spec("kaggle") is None:
        raise StageError(
            "fer2013.source: kaggle needs the kaggle package: pip install '.[kaggle]' "
            "(or download the data yourself and use source: path)"
        )
    if not kaggle_credentials():
        raise StageError(
            "fer2013.source: kaggle: no Kaggle API credentials: put kaggle.json (kaggle.com > "
            "Settings > API > Create New Token) in ~/.kaggle/ or set KAGGLE_USERNAME and KAGGLE_KEY; "
            "or download the competition data yourself and use source: path"
        )
    DOWNLOAD_DIR.mkdir(parents=True, exist_ok=True)
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
        if dataset:  # kept zipped: it is checked and read like a user's zip
            api.dataset_download_files(dataset, path=str(DOWNLOAD_DIR), quiet=False, unzip=False)
        else:
            api.competition_download_files(COMPETITION, path=str(DOWNLOAD_DIR), quiet=False)
    except Exception as exc:  # the kaggle API raises many types (HTTP, auth, IO); all end the stage
        detail = " ".join(str(exc).split())[:200]
        if dataset:
            raise StageError(
                f"kaggle: downloading the dataset {dataset} failed ({detail}); check its name on "
                f"kaggle.com/datasets/{dataset}, or use source: path"
            ) from None
        raise StageError(
            f"kaggle: downloading {COMPETITION} failed ({detail}); accept the competition rules on "
            f"kaggle.com/c/{COMPETITION}/rules, or use source: path"
        ) from None
    archive = DOWNLOAD_DIR / f"{dataset.split('/')[1] if dataset else COMPETITION}.zip"
    if not archive.is_file():
        raise StageError(f"kaggle: expected {archive} after the download; use source: path with the file you got")
    return archive


# --- reading the CSV out of whichever form the file has ----------------------


# Leading bytes of the archive forms: a damaged archive must be reported as one, not read as a CSV.
_MAGIC = (
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)


def archive_kind(path: Path) -> str | None:
    """``zip``, ``gzip``, ``bzip2``, ``xz`` or ``tar`` from the first bytes of ``path``; None for anything else."""
    with path.open("rb") as f:
        head = f.read(512)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return "tar" if head[257:262] == b"ustar" else None


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


@contextmanager
def open_csv(path: Path, name: str) -> Iterator[tuple[IO[bytes], str, Callable[[], None]]]:
    """The FER2013 CSV inside ``path`` (plain CSV, tar(.gz) or zip) as a binary stream, its display name,
    and ``finish()``, which reads the rest of the member and of the archive to their end.

    ``finish`` is what checks an archive: a gzip stream checks its CRC and length
    only at its very end, a zip member its CRC at the end of the member; reading
    just the CSV would accept a flipped bit or a missing tail.
    """
    kind = archive_kind(path)
    drain: list[_Readable] = []  # innermost first: the member, then the streams around it
    with ExitStack() as stack:
        if kind == "zip" or zipfile.is_zipfile(path):
            stream, member = _csv_in_zip(stack, stack.enter_context(zipfile.ZipFile(path)), name, drain)
        elif kind is not None or tarfile.is_tarfile(path):
            stream, member = _csv_in_tar(stack, stack.enter_context(tarfile.open(path, "r:*")), name, drain)
        else:
            stream, member = stack.enter_context(path.open("rb")), name

        def finish() -> None:
            for f in drain:
                while f.read(1 << 20):
                    pass

        yield stream, member, finish


def _csv_in_zip(stack: ExitStack, zf: zipfile.ZipFile, name: str, drain: list[_Readable]) -> tuple[IO[bytes], str]:
    files = [info for info in zf.infolist() if not info.is_dir()]
    by_name = {PurePosixPath(info.filename).name: info for info in files}
    for wanted in CSV_MEMBERS:
        if wanted in by_name:
            return _member(stack, zf, by_name[wanted], name, drain)
    if TAR_MEMBER in by_name:  # the competition zip also carries the original tarball
        info = by_name[TAR_MEMBER]
        check_member_name(Path(name), info.filename)
        outer = stack.enter_context(zf.open(info))
        tar = stack.enter_context(tarfile.open(fileobj=outer, mode="r:*"))
        stream, member = _csv_in_tar(stack, tar, f"{name}:{info.filename}", drain)
        drain.append(outer)  # after the tarball's own end: then the zip member's CRC
        return stream, member
    for info in files:  # last resort: any CSV with the three columns, whatever its name
        if info.filename.lower().endswith(".csv"):
            with zf.open(info) as f:
                header = f.readline().decode("utf-8", "replace").split(",")
            if find_columns(header):
                return _member(stack, zf, info, name, drain)
    listing = ", ".join(info.filename for info in files[:10])
    raise StageError(
        f"{name}: no FER2013 CSV inside (looked for {', '.join(CSV_MEMBERS)}, {TAR_MEMBER} or a CSV "
        f"with columns {','.join(COLUMNS)}; found: {listing})"
    )


def _member(
    stack: ExitStack, zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, drain: list[_Readable]
) -> tuple[IO[bytes], str]:
    check_member_name(Path(name), info.filename)
    stream = stack.enter_context(zf.open(info))
    drain.append(stream)
    return stream, f"{name}:{info.filename}"


def _csv_in_tar(stack: ExitStack, tar: tarfile.TarFile, name: str, drain: list[_Readable]) -> tuple[IO[bytes], str]:
    # Members are read in order up to the CSV, whose data follows its header, so
    # nothing is decompressed twice. (Not the streaming "r|" mode: io.TextIOWrapper
    # needs a member file that answers seekable(), which streaming mode's does not.)
    for member in tar:
        if PurePosixPath(member.name).name in CSV_MEMBERS:
            check_member_name(Path(name), member.name)
            if not member.isfile():
                raise StageError(f"{name}: refusing member {member.name!r}: not a regular file")
            extracted = tar.extractfile(member)
            assert extracted is not None  # a regular file (checked above) always has its data
            stream = stack.enter_context(extracted)
            drain += [stream, tar.fileobj]  # the CSV, then the archive to its end (gzip CRC and length)
            return stream, f"{name}:{member.name}"
    raise StageError(f"{name}: no {' or '.join(CSV_MEMBERS)} inside the tar archive")


# --- validating and normalizing ----------------------------------------------


def normalize(path: Path, name: str, out_csv: Path, on_bad_row: str, total: int | None = None) -> dict:
    """Check every row of the FER2013 CSV in ``path`` and write the good ones to ``out_csv``.

    Returns the row statistics of the data report. With ``on_bad_row: fail``
    the first bad row raises StageError naming the file and line.
    """
    counts = np.zeros((len(USAGES), len(EMOTIONS)), dtype=np.int64)
    found = dict.fromkeys(BAD_ROW_REASONS, 0)
    examples: list[str] = []
    pixel_sum = pixel_squares = 0  # Python ints: exact, so the report is byte-stable
    try:
        with (
            open_csv(path, name) as (stream, member_name, finish),
            out_csv.open("wb") as out,
            tqdm(total=total, desc=CSV_NAME, unit=" rows", file=sys.stderr, disable=None, leave=False) as bar,
        ):
            text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
            out.write(HEADER.encode())
            try:
                for chunk, bad in read_rows(text, member_name):
                    if bad and on_bad_row == "fail":
                        raise StageError(f"{_describe(member_name, bad[0])} (fer2013.on_bad_row: skip drops such rows)")
                    for row in bad:
                        found[row.reason] += 1
                        if len(examples) < EXAMPLES_KEPT:
                            examples.append(_describe(member_name, row))
                    out.write(format_rows(chunk.emotions, chunk.pixels, chunk.usages))
                    np.add.at(counts, (chunk.usages, chunk.emotions), 1)
                    pixels = chunk.pixels.astype(np.int64)
                    pixel_sum += int(pixels.sum())
                    pixel_squares += int((pixels * pixels).sum())
                    bar.update(len(chunk.emotions) + len(bad))
            except StageError:
                finish()  # a damaged archive often shows first as a bad row: blame the archive if it is damaged
                raise
            finish()
    except CORRUPT as exc:
        raise StageError(f"{name}: truncated or corrupt archive ({' '.join(str(exc).split())})") from None
    except OSError as exc:  # e.g. an unreadable file
        raise StageError(f"{name}: cannot read it: {exc.strerror or exc}") from None
    return row_stats(name, counts, found, examples, pixel_sum, pixel_squares)


def row_stats(
    name: str, counts: np.ndarray, found: dict[str, int], examples: list[str], pixel_sum: int, pixel_squares: int
) -> dict:
    """The row statistics of the data report from the counts per (Usage, emotion) and the pixel sums."""
    rows = int(counts.sum())
    if rows == 0:
        raise StageError(f"{name}: no valid rows")
    skipped = sum(found.values())
    if skipped:
        log.warning(
            "skipped %d bad rows: %s (first: %s)",
            skipped,
            ", ".join(f"{k} {v}" for k, v in found.items() if v),
            examples[0],
        )
    missing = [usage for usage, n in zip(USAGES, counts.sum(axis=1), strict=True) if n == 0]
    if missing:  # tfrecords_fer2013 would stop on it: stop here, where the data is read
        raise StageError(f"{name}: no {' or '.join(missing)} rows; every later stage needs all three Usage splits")
    n_pixels = rows * PIXELS
    mean = pixel_sum / n_pixels
    return {
        "rows": rows,
        "rows_per_split": {usage: int(n) for usage, n in zip(USAGES, counts.sum(axis=1), strict=True)},
        "rows_per_class": {emotion: int(n) for emotion, n in zip(EMOTIONS, counts.sum(axis=0), strict=True)},
        "rows_per_split_and_class": {
            usage: {emotion: int(n) for emotion, n in zip(EMOTIONS, row, strict=True)}
            for usage, row in zip(USAGES, counts, strict=True)
        },
        "bad_rows": {"found": found, "skipped": skipped, "examples": examples},
        "pixels": {"mean": mean, "std": max(pixel_squares / n_pixels - mean * mean, 0.0) ** 0.5},
    }


def _describe(name: str, row: BadRow) -> str:
    return f"{name}: line {row.line}: {row.message}"


# --- image folders ---------------------------------------------------------------


def holds_images(path: Path) -> bool:
    """Whether the archive ``path`` holds image folders rather than a FER2013 CSV (told by its member names).

    Anything else, a damaged archive included, goes to the CSV reader, which reports it.
    """

    def verdict(name: str) -> bool | None:
        base = PurePosixPath(name).name.lower()
        if base.endswith(".csv") or base == TAR_MEMBER:
            return False
        return True if fer2013_images.looks_like_image(base) and not fer2013_images.ignored(base) else None

    kind = archive_kind(path)
    try:
        if kind == "zip" or (kind is None and zipfile.is_zipfile(path)):
            with zipfile.ZipFile(path) as zf:  # the central directory: every name, cheaply
                verdicts = {verdict(info.filename) for info in zf.infolist() if not info.is_dir()}
            return False not in verdicts and True in verdicts
        if kind is not None or tarfile.is_tarfile(path):
            with tarfile.open(path, "r:*") as tar:
                for member in tar:  # the first telling member decides: no second pass over a large archive
                    if member.isfile() and (found := verdict(member.name)) is not None:
                        return found
    except (*CORRUPT, OSError):
        pass
    return False


IMAGE_LAYOUT = (
    "train/ and test/ (or validation/) folders, each with angry/, disgust/, fear/, happy/, sad/, "
    "surprise/ and neutral/ image folders"
)


def normalize_images(source: Path, name: str, out_csv: Path, p: Fer2013Params, seed: int, scratch: Path) -> dict:
    """Read FER2013 image folders (a folder, or an archive extracted into ``scratch``) into ``out_csv``.

    Returns the data report's row statistics, and what the image folders add to it.
    """
    where: Callable[[Path], str]
    if source.is_dir():
        root, where = fer2013_images.find_root(source), str
        if root is None:
            raise StageError(
                f"{name}: is a folder, but holds no FER2013 image folders (expected {IMAGE_LAYOUT}); "
                f"or give a file: fer2013.csv, fer2013.tar.gz, the competition zip or icml_face_data.csv"
            )
    else:
        target = scratch / "images"
        log.info("extracting %s", name)
        extract_archive(source, target)  # safe names; reads to the end, so a damaged archive is caught here

        def where(path: Path) -> str:
            return f"{name}: member {path.relative_to(target).as_posix()}"

        root = fer2013_images.find_root(target)
        if root is None:
            raise StageError(f"{name}: no FER2013 image folders inside (expected {IMAGE_LAYOUT})")
    faces = fer2013_images.read_faces(root, where, p.on_bad_row, seed, p.valid_fraction)
    counts = np.zeros((len(USAGES), len(EMOTIONS)), dtype=np.int64)
    np.add.at(counts, (faces.usages, faces.emotions), 1)
    pixel_sum = pixel_squares = 0
    with out_csv.open("wb") as out:
        out.write(HEADER.encode())
        for start in range(0, len(faces.emotions), 1024):  # chunks: the formatted rows take 4 bytes a pixel
            part = slice(start, start + 1024)
            out.write(format_rows(faces.emotions[part], faces.pixels[part], faces.usages[part]))
            pixels = faces.pixels[part].astype(np.int64)
            pixel_sum += int(pixels.sum())
            pixel_squares += int((pixels * pixels).sum())
    carved = faces.valid_split.startswith("carved")
    return {
        "form": "image_folders",
        "valid_split": faces.valid_split,
        **({"valid_fraction": p.valid_fraction} if carved else {}),
        "images_sha256": faces.images_sha256,
        "colour_images_converted": faces.converted_from_colour,
        "ignored_beside_the_splits": faces.ignored,
        **row_stats(name, counts, faces.bad.found, faces.bad.examples, pixel_sum, pixel_squares),
    }


# --- the stage ---------------------------------------------------------------


def source_file(p: Fer2013Params, seed: int, scratch: Path) -> tuple[Path, str, str]:
    """What to read for ``p.source`` (a file, or a folder of images): its path, its name in messages, and its
    origin for the report."""
    if p.source == "sample":
        from stages.samples.fer2013 import write_sample

        rows = p.sample.rows()
        log.info("drawing %d sample faces (%s)", sum(rows.values()), ", ".join(f"{k} {v}" for k, v in rows.items()))
        write_sample(scratch / CSV_NAME, seed, rows=rows)
        return scratch / CSV_NAME, CSV_NAME, f"sample drawn by stages/samples/fer2013.py, seed {seed}"
    if p.source == "path":
        assert p.path is not None  # Fer2013Params requires it with source: path
        path = Path(p.path)
        if not path.exists():
            raise StageError(f"params.yaml: fer2013.path: {p.path}: file not found")
        return path, p.path, path.name  # the report names a local file, not the user's folders
    if p.source == "url":
        assert p.url is not None and p.sha256 is not None  # Fer2013Params requires both with source: url
        path = fetch_url(p.url, p.sha256, p.size)
        return path, path.name, p.url
    path = fetch_kaggle(p.kaggle_dataset)
    origin = f"kaggle dataset {p.kaggle_dataset}" if p.kaggle_dataset else f"kaggle competition {COMPETITION}"
    return path, path.name, origin


def main() -> None:
    seed, p = load_params("fer2013", Fer2013Params)
    # Scratch for the generated sample or an extracted archive of images: the normalized CSV is the output.
    with scratch_folder(OUT_DIR.parent, ".fer2013-input.") as scratch:
        source, name, origin = source_file(p, seed, Path(scratch))
        digest = None  # of a folder: known once its images are read
        if not source.is_dir():
            try:
                digest = sha256_file(source)
            except OSError as exc:
                raise StageError(f"{name}: cannot read it: {exc.strerror or exc}") from None
            check_sha256(p, digest)
        images = p.source != "sample" and (source.is_dir() or holds_images(source))
        total = sum(p.sample.rows().values()) if p.source == "sample" else None
        with atomic_outputs() as out:
            csv_path = out.directory(OUT_DIR) / CSV_NAME
            if images:
                stats = normalize_images(source, name, csv_path, p, seed, Path(scratch))
                if digest is None:
                    digest = stats["images_sha256"]  # a folder's sha256: its files' paths and contents
                    check_sha256(p, digest)
            else:
                stats = normalize(source, name, csv_path, p.on_bad_row, total)
            write_json(
                out.file(REPORT), {"source": p.source, "source_location": origin, "source_sha256": digest, **stats}
            )
    keep_folder(DOWNLOAD_DIR, "Downloaded FER2013 files (source: url or kaggle) are kept here, checked by sha256.\n")
    log.info(
        "%s: %d rows (%s); %d bad rows skipped",
        OUT_DIR / CSV_NAME,
        stats["rows"],
        ", ".join(f"{k} {v}" for k, v in stats["rows_per_split"].items()),
        stats["bad_rows"]["skipped"],
    )


def check_sha256(p: Fer2013Params, digest: str) -> None:
    if p.source == "path" and p.sha256 and digest != p.sha256.lower():
        raise StageError(f"{p.path}: sha256 mismatch: expected {p.sha256.lower()}, got {digest}")


if __name__ == "__main__":
    run_stage(main, "download_fer2013")
