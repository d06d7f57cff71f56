"""Stage ``download_imdb``: the IMDB reviews (aclImdb v1) in a normalized raw form, and a data report.

``imdb.source`` picks where the reviews come from:

- ``sample`` (default): the embedded generator (stages/samples/imdb.py) writes an
  aclImdb tree, which then goes through the same checks as the real data;
- ``url``: the official Stanford tarball (or a mirror), streamed into
  ``data/downloads/imdb/`` with resume and retries, checked against ``imdb.sha256``
  (and ``imdb.size``) before anything is extracted; a verified download is
  kept there as a cache, so a re-run does not fetch 84 MB again;
- ``path``: a local ``aclImdb_v1.tar.gz`` or an extracted ``aclImdb/`` folder
  (or the folder holding it).

Every source ends in ``data/raw/imdb/aclImdb/{train,test}/{pos,neg}/{id}_{rating}.txt``
(plus ``train/unsup/`` with ``imdb.include_unsup``), re-written as UTF-8, and
``metrics/data_imdb.json``: reviews per split and class, token counts
(whitespace tokens once tags such as ``<br />`` are removed), the problems
found, ``source_sha256`` (the tarball's; null for ``sample`` and for a folder)
and ``tree_sha256``, a digest of the normalized tree that is equal whenever the
reviews are, whatever the source.

The official tarball also lists each review's movie: line ``i`` of
``{train,test}/urls_{pos,neg}.txt`` is the IMDb page of review ``i``. Where the
source has them they are kept (``tfrecords_imdb`` carves its validation split by
movie from them), checked to cover every review id; the report counts the movies.

Checks: a file name must be ``{id}_{rating}.txt`` and its rating must fit its
folder (1-4 neg, 7-10 pos, 0 unsup); ``imdb.on_bad_file`` says whether such a
file stops the stage (``fail``, naming it) or is skipped and counted
(``skip``). Invalid UTF-8 bytes are replaced and counted; empty reviews are
kept and counted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, model_validator

from stages.common.cli import StageError, run_stage
from stages.common.params import Section, UserPath, load_params
from stages.datasets.imdb_text import length_stats, strip_tags

log = logging.getLogger(__name__)

RAW_DIR = Path("data/raw/imdb")
DOWNLOADS = Path("data/downloads/imdb")  # per stage: two stages cannot both declare one out
REPORT = Path("metrics/data_imdb.json")

LABELLED = [("train", "neg"), ("train", "pos"), ("test", "neg"), ("test", "pos")]
UNSUP = ("train", "unsup")
RATINGS = {"neg": range(1, 5), "pos": range(7, 11), "unsup": range(0, 1)}
MOVIE_LISTS = re.compile(r"urls_(pos|neg)\.txt")  # train/urls_pos.txt: line i = the movie of review i
FILE_NAME = re.compile(r"(\d+)_(\d+)\.txt")
EXAMPLES = 5  # file names listed per kind of problem in the report


class SampleParams(Section):
    preset: Literal["small", "full"] = Field(description="per class and split: small 1,250; full 12,500")
    per_class: int | None = Field(ge=1, description="overrides `preset`: reviews per class and split")
    label_noise: float = Field(ge=0.0, le=0.5, description="share of reviews written for the other class")


class ImdbParams(Section):
    source: Literal["sample", "url", "path"]
    url: str
    sha256: str | None = Field(pattern=r"^[0-9a-fA-F]{64}$")
    size: int | None = Field(ge=1, description="bytes; null if unknown")
    path: UserPath | None = Field(description="aclImdb_v1.tar.gz or an extracted aclImdb/ folder")
    include_unsup: bool
    on_bad_file: Literal["fail", "skip"]
    sample: SampleParams
    connect_timeout: float = Field(gt=0.0)
    read_timeout: float = Field(gt=0.0)
    retries: int = Field(ge=0)
    backoff: float = Field(ge=0.0, description="seconds before the first retry; doubles each time")

    @model_validator(mode="after")
    def _source_is_complete(self) -> ImdbParams:
        if self.source == "path" and not self.path:
            raise ValueError("path: required when source is path (a .tar.gz or an aclImdb/ folder)")
        if self.source == "url":
            if urlparse(self.url).scheme not in ("http", "https") or not urlparse(self.url).netloc:
                raise ValueError(f"url: must be an http(s) URL (got {self.url!r})")
            if self.sha256 is None:
                raise ValueError("sha256: required when source is url (the download is verified before use)")
        return self


@dataclass
class Report:
    """What normalization found; becomes metrics/data_imdb.json."""

    reviews: dict[str, dict[str, int]] = field(default_factory=dict)
    tokens: dict[str, list[int]] = field(default_factory=dict)
    problems: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "bad_file_names",
                "rating_mismatches",
                "skipped_files",
                "empty_files",
                "invalid_utf8_files",
                "invalid_utf8_bytes",
            ),
            0,
        )
    )
    examples: dict[str, list[str]] = field(default_factory=dict)
    digest: Any = field(default_factory=hashlib.sha256)  # of the normalized tree
    movies: dict[str, int] | None = None  # distinct movies per split, if the source lists them

    def note(self, problem: str, name: str) -> None:
        self.problems[problem] += 1
        listed = self.examples.setdefault(problem, [])
        if len(listed) < EXAMPLES:
            listed.append(name)


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Text with invalid UTF-8 replaced by U+FFFD, and the number of bytes replaced."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    parts, bad, start = [], 0, 0
    while True:
        try:
            parts.append(data[start:].decode("utf-8"))
            return "".join(parts), bad
        except UnicodeDecodeError as exc:
            parts.append(data[start : start + exc.start].decode("utf-8"))
            parts.append("\ufffd")
            bad += exc.end - exc.start
            start += exc.end


def count_tokens(text: str) -> int:
    """Whitespace tokens once HTML tags are removed."""
    return len(strip_tags(text).split())


def name_problem(name: str, label: str) -> tuple[str, str] | None:
    """``(problem key, message)`` if a review's file name is wrong for its folder."""
    match = FILE_NAME.fullmatch(name)
    if not match:
        return "bad_file_names", "bad file name (expected {id}_{rating}.txt)"
    rating, allowed = int(match.group(2)), RATINGS[label]
    if rating not in allowed:
        return "rating_mismatches", f"rating {rating} does not fit folder {label} ({allowed[0]}-{allowed[-1]})"
    return None


def find_root(path: Path, name: Path | None = None) -> Path:
    """The aclImdb folder: ``path`` itself or its ``aclImdb/`` child. ``name``: what errors call
    ``path`` (the tarball it was extracted from, not the scratch folder that is about to go)."""
    for candidate in (path, path / "aclImdb"):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    base = path / "aclImdb" if (path / "aclImdb").is_dir() else path
    missing = " and ".join(f"{d}/" for d in ("train", "test") if not (base / d).is_dir())
    inside = "aclImdb/" if base != path else ""
    raise StageError(f"{name or path}: no {inside}{missing} in it (expected train/ and test/ in it or in aclImdb/)")


def normalize(
    src: Path, dst: Path, folders: list[tuple[str, str]], on_bad_file: str, archive: Path | None = None
) -> Report:
    """Copy the reviews of ``src`` (an aclImdb folder) to ``dst`` as UTF-8, checking each file.

    ``archive``: the tarball ``src`` was extracted from (into a scratch folder),
    so that messages name the tarball and its member, not the scratch copy.
    """
    from tqdm import tqdm

    def where(path: Path) -> str:
        if archive is None:
            return str(path)
        return f"{archive}: member aclImdb/{path.relative_to(src).as_posix()}"

    inside = src.resolve()

    def check_link(path: Path) -> None:
        # A link leading out of the folder would copy a file the user never meant to give.
        if path.is_symlink() and not path.resolve().is_relative_to(inside):
            raise StageError(f"{path}: refusing symbolic link to {os.readlink(path)}: it leads outside {src}")

    files = []
    for split, label in folders:
        folder = src / split / label
        for part in (src / split, folder):
            check_link(part)
        if not folder.is_dir():
            raise StageError(f"{where(folder)}: missing folder (aclImdb/{split}/{label}/)")
        try:
            files += [(split, label, p) for p in sorted(folder.iterdir())]  # sorted: the same bytes every run
        except OSError as exc:
            raise StageError(f"{where(folder)}: cannot read it: {exc.strerror or exc}") from None

    report = Report()
    for split, label in folders:
        report.reviews.setdefault(split, {})[label] = 0
        report.tokens.setdefault(split, [])  # train's include unsup reviews, if any
        (dst / split / label).mkdir(parents=True, exist_ok=True)
    for split, label, path in tqdm(
        files, desc="checking reviews", unit=" files", file=sys.stderr, disable=None, leave=False
    ):
        relative = f"{split}/{label}/{path.name}"
        check_link(path)
        problem = ("bad_file_names", "not a regular file") if not path.is_file() else name_problem(path.name, label)
        if problem is not None:
            key, message = problem
            if on_bad_file == "fail":
                raise StageError(f"{where(path)}: {message} (imdb.on_bad_file: skip to skip such files)")
            report.note(key, relative)
            report.note("skipped_files", relative)
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StageError(f"{where(path)}: cannot read it: {exc.strerror or exc}") from None
        text, replaced = decode_utf8(data)
        if replaced:
            report.note("invalid_utf8_files", relative)
            report.problems["invalid_utf8_bytes"] += replaced
        tokens = count_tokens(text)
        if tokens == 0:
            report.note("empty_files", relative)
        data = text.encode("utf-8")
        (dst / split / label / path.name).write_bytes(data)
        report.reviews[split][label] += 1
        report.tokens[split].append(tokens)
        report.digest.update(f"{relative}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    for split, label in folders:
        if report.reviews[split][label] == 0:
            raise StageError(f"{where(src / split / label)}: no reviews")
    report.movies = copy_movie_lists(src, dst, [f for f in folders if f[1] in ("pos", "neg")], where)
    return report


def copy_movie_lists(src: Path, dst: Path, folders: list[tuple[str, str]], where) -> dict[str, int] | None:
    """Copy ``{split}/urls_{label}.txt`` when the source has all of them; distinct movies per split.

    Each list must name a movie for every review id of its folder (line ``id``);
    a partial set of lists is ignored, as if there were none.
    """
    lists = {(split, label): src / split / f"urls_{label}.txt" for split, label in folders}
    missing = [path for path in lists.values() if not path.is_file()]
    if missing:
        if len(missing) < len(lists):  # said, since tfrecords_imdb then carves a random validation split
            log.warning("%s: missing, so no movie list is used (validation split: random)", where(missing[0]))
        return None
    movies: dict[str, set[str]] = {}
    for (split, label), path in lists.items():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise StageError(f"{where(path)}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
        # Only reviews copied above, under names FILE_NAME matched, are in these folders.
        ids = [int(FILE_NAME.fullmatch(f.name)[1]) for f in (dst / split / label).iterdir()]  # type: ignore[index]
        if max(ids) >= len(lines) or any(not lines[i].strip() for i in ids):
            raise StageError(
                f"{where(path)}: lists {len(lines)} movies, but review ids go up to {max(ids)} "
                f"(line i names the movie of review i)"
            )
        (dst / split / path.name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        movies.setdefault(split, set()).update(lines[i].strip() for i in ids)
    return {split: len(found) for split, found in movies.items()}


def report_json(report: Report, p: ImdbParams, source_sha256: str | None) -> dict:
    # A local path is named by its file (or folder) name only: the report is committed, and
    # the user's home folder is neither reproducible nor anyone else's business (the sha256 says which).
    local = os.path.basename(os.path.normpath(p.path)) if p.path else None
    origin = {"sample": None, "url": p.url, "path": local}[p.source]
    all_tokens = [t for counts in report.tokens.values() for t in counts]
    return {
        "source": p.source,
        "source_location": origin,
        "source_sha256": source_sha256,
        "tree_sha256": report.digest.hexdigest(),
        "reviews": {**report.reviews, "total": sum(sum(c.values()) for c in report.reviews.values())},
        "tokens": {**{split: length_stats(c) for split, c in report.tokens.items()}, "all": length_stats(all_tokens)},
        "movies": report.movies,  # distinct movies per split, where the source lists them
        "problems": report.problems,
        "examples": report.examples,
    }


def archive_filter(folders: list[tuple[str, str]]):
    """Which tarball members to extract: files directly in the wanted aclImdb folders, and the movie lists."""
    wanted = set(folders)

    def keep(name: str) -> bool:
        parts = [part for part in PurePosixPath(name).parts if part != "."]
        if len(parts) == 3 and parts[0] == "aclImdb" and MOVIE_LISTS.fullmatch(parts[2]):
            return True
        return len(parts) == 4 and parts[0] == "aclImdb" and (parts[1], parts[2]) in wanted

    return keep


def download_name(url: str) -> str:
    """File name under data/downloads/imdb/ for ``url``: its last path segment."""
    name = PurePosixPath(urlparse(url).path).name
    return name if re.fullmatch(r"[\w.+-]+", name or "") else "imdb.tar.gz"


def acquire(
    p: ImdbParams, seed: int, folders: list[tuple[str, str]], scratch: Path
) -> tuple[Path, str | None, Path | None]:
    """The aclImdb folder to normalize (generated or extracted into ``scratch``, or the
    user's), the sha256 of the archive it came from and that archive (None for sample and folder)."""
    from stages.common.archives import extract_archive
    from stages.common.download import download, sha256_file

    if p.source == "sample":
        from stages.samples.imdb import PRESETS, write_sample

        per_class = p.sample.per_class or PRESETS[p.sample.preset]
        unsup = 4 * per_class if p.include_unsup else 0  # the real ratio: 50,000 to 4 x 12,500
        log.info("generating the sample: %d reviews per class and split (seed %d)", per_class, seed)
        write_sample(scratch / "aclImdb", seed, per_class=per_class, unsup=unsup, label_noise=p.sample.label_noise)
        return scratch / "aclImdb", None, None
    if p.source == "url":
        archive = download(
            p.url,
            DOWNLOADS / download_name(p.url),
            p.sha256,
            p.size,
            connect_timeout=p.connect_timeout,
            read_timeout=p.read_timeout,
            retries=p.retries,
            backoff=p.backoff,
        )
    else:
        assert p.path is not None  # ImdbParams requires it with source: path
        archive = Path(p.path)
        if not archive.exists():
            raise StageError(f"{archive}: not found (imdb.path)")
        if archive.is_dir():
            return find_root(archive), None, None
    log.info("extracting %s", archive)
    if extract_archive(archive, scratch, archive_filter(folders)) == 0:
        raise StageError(f"{archive}: no reviews in aclImdb/{{train,test}}/{{pos,neg}}/")
    return find_root(scratch, archive), sha256_file(archive), archive


def main() -> None:
    seed, p = load_params("imdb", ImdbParams)

    from stages.common.outputs import atomic_outputs, keep_folder, scratch_folder, write_json

    folders = LABELLED + ([UNSUP] if p.include_unsup else [])
    # Scratch space for the generated or extracted tree.
    with scratch_folder(RAW_DIR.parent, ".imdb-input.") as scratch:
        src, source_sha256, archive = acquire(p, seed, folders, Path(scratch))
        with atomic_outputs() as out:
            report = normalize(src, out.directory(RAW_DIR) / "aclImdb", folders, p.on_bad_file, archive)
            write_json(out.file(REPORT), report_json(report, p, source_sha256))
    keep_folder(DOWNLOADS, "Downloaded IMDB archives (source: url) are kept here, checked by sha256.\n")
    for split, counts in report.reviews.items():
        log.info("%s: %s", split, ", ".join(f"{n} {label}" for label, n in counts.items()))
    if any(report.problems.values()):
        log.info("problems: %s", ", ".join(f"{n} {k}" for k, n in report.problems.items() if n))


if __name__ == "__main__":
    run_stage(main, "download_imdb")
