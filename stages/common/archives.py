"""Safe extraction of tar(.gz/.bz2/.xz) and zip archives, optionally only some members.

An archive comes from the internet or from a user's disk, so a member must not
write outside the target folder: names that are absolute or climb with ``..``
are refused, and for tar the standard library's ``data`` filter also refuses
links leading outside, device files and other special members. A refused
member stops the whole extraction with a StageError naming the archive and the
member; the caller extracts into a temporary folder (an ``atomic_outputs``
directory or a temporary directory), so nothing of a refused archive survives.
"""

from __future__ import annotations

import gzip
import lzma
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from stages.common.cli import StageError

Keep = Callable[[str], bool]
"""Decides from a member's name (as stored in the archive) whether to extract it."""

# What a damaged or truncated compressed stream (tar, gzip, xz, zip) raises while being read.
CORRUPT = (
    tarfile.ReadError,
    tarfile.CompressionError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
    zipfile.BadZipFile,
)


def extract_archive(archive: Path, target: Path, keep: Keep | None = None) -> int:
    """Extract a zip or tar archive (told apart by content, not name); return the files written."""
    archive = Path(archive)
    if not archive.is_file():
        raise StageError(f"{archive}: file not found")
    try:
        archive.open("rb").close()
    except OSError as exc:
        raise StageError(f"{archive}: cannot read it: {exc.strerror or exc}") from None
    if archive.stat().st_size == 0:
        raise StageError(f"{archive}: an empty file (0 bytes), not an archive")
    if zipfile.is_zipfile(archive):
        return extract_zip(archive, target, keep)
    return extract_tar(archive, target, keep)


def check_member_name(archive: Path, name: str) -> None:
    """Refuse a member name that is absolute or climbs out with ``..``."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and path.parts[0].endswith(":")):
        raise StageError(f"{archive}: refusing member {name!r}: its path leads outside the target folder")


def extract_tar(archive: Path, target: Path, keep: Keep | None = None) -> int:
    """Extract the regular files (and safe links) of a tar archive that ``keep`` accepts.

    Directories are not extracted as members; the folders above each file are
    created as needed. Returns the number of members written.
    """
    count = 0
    try:
        with tarfile.open(archive, "r:*") as tar, _progress(archive, None) as bar:
            # Checked member by member as the archive streams: checking all names
            # first would decompress the whole archive twice.
            for member in tar:
                check_member_name(archive, member.name)
                try:
                    member = tarfile.data_filter(member, str(target))
                except tarfile.FilterError as exc:
                    raise StageError(f"{archive}: refusing member {member.name!r}: {exc}") from None
                if member.isdir() or (keep is not None and not keep(member.name)):
                    continue
                tar.extract(member, target, filter="data")
                count += 1
                bar.update()
            # Read to the end: a gzip stream checks its length and CRC only there,
            # and tar stops at its end-of-archive marker before that.
            while tar.fileobj.read(1 << 20):
                pass
    except CORRUPT as exc:
        # tarfile.open lists every compression it tried, one line each: the first says enough
        first = " ".join(str(exc).splitlines()[0].split()) if str(exc).strip() else type(exc).__name__
        raise StageError(f"{archive}: not a readable tar archive, or truncated or corrupt ({first})") from None
    return count


def extract_zip(archive: Path, target: Path, keep: Keep | None = None) -> int:
    """Extract the files of a zip archive that ``keep`` accepts; return how many."""
    count = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:  # the central directory is cheap: check every name first
                check_member_name(archive, info.filename)
            with _progress(archive, len(members)) as bar:
                for info in members:
                    bar.update()
                    if info.is_dir() or (keep is not None and not keep(info.filename)):
                        continue
                    zf.extract(info, target)  # zip has no links to follow; names checked above
                    count += 1
    except CORRUPT as exc:
        raise StageError(f"{archive}: not a readable zip archive, or truncated or corrupt ({exc})") from None
    return count


def _progress(archive: Path, total: int | None) -> tqdm:
    return tqdm(
        total=total, desc=f"extracting {archive.name}", unit=" files", file=sys.stderr, disable=None, leave=False
    )
