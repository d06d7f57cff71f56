"""Streaming HTTP downloads that resume, retry, verify and appear atomically.

``requests`` does the HTTP; this module adds what a data stage needs around it:
a progress bar, connect/read timeouts, retries with exponential backoff, resume
after a dropped connection (HTTP ``Range``), and a size + sha256 check before
the file gets its final name. Until then the bytes live in ``<dest>.part``, a
name no reader mistakes for a finished download. A finished file doubles as a
cache: a later call with the same sha256 returns it without downloading.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from stages.common.cli import StageError

log = logging.getLogger(__name__)

# Worth another try: timeouts, rate limits, server trouble. Other 4xx are final.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _Transient(Exception):
    """A failure worth retrying (resuming from what is already on disk)."""


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def part_path(dest: Path) -> Path:
    """Where ``download`` keeps the bytes of ``dest`` until they are verified."""
    return dest.with_suffix(dest.suffix + ".part")


def download(
    url: str,
    dest: Path,
    sha256: str | None,
    size: int | None = None,
    *,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 1.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``, verified against ``size`` and ``sha256``.

    An existing ``dest`` with the right sha256 is reused; otherwise (or without a
    sha256, which leaves no way to trust it) it is fetched again and replaced once
    verified. ``retries`` counts further attempts after failures that made no
    progress; each waits ``backoff * 2**(n-1)`` seconds. A ``.part`` file left by
    an interrupted earlier run is resumed. Raises StageError on an HTTP error, on
    giving up, or on a size/sha256 mismatch (the downloaded bytes are deleted then).
    """
    dest = Path(dest)
    expected = sha256.lower() if sha256 else None
    if dest.is_file():
        if expected is not None and sha256_file(dest) == expected:
            log.info("%s: already downloaded (sha256 matches)", dest)
            return dest
        # Kept until a verified download replaces it: if the new sha256 is a typo,
        # the next run with the right one still finds the file.
        log.info("%s: exists but does not match the expected sha256; downloading again", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    # A .part from an earlier run may belong to another URL: if it fails the check,
    # start once from scratch before blaming the server.
    stale_possible = part.exists()
    if stale_possible:
        log.info("%s: resuming the %d bytes of an earlier run", part, part.stat().st_size)
    with requests.Session() as session:
        while True:
            _fetch(session, url, part, size, (connect_timeout, read_timeout), retries, backoff, chunk_size)
            problem = _verify(part, size, expected)
            if problem is None:
                break
            part.unlink()
            if not stale_possible:
                raise StageError(f"{url}: {problem}; the downloaded file was deleted")
            log.warning("%s: %s; the partial file of an earlier run was stale, starting over", url, problem)
            stale_possible = False
    os.replace(part, dest)
    log.info("%s: downloaded from %s", dest, url)
    return dest


def _verify(part: Path, size: int | None, sha256: str | None) -> str | None:
    """What is wrong with the downloaded bytes, or None."""
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        return f"size mismatch: expected {size} bytes, got {actual_size}"
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256:
            return f"sha256 mismatch: expected {sha256}, got {actual}"
    return None


def _fetch(
    session: requests.Session,
    url: str,
    part: Path,
    size: int | None,
    timeout: tuple[float, float],
    retries: int,
    backoff: float,
    chunk_size: int,
) -> None:
    """Fill ``part`` with the body of ``url``, resuming and retrying as needed."""
    failures = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset >= size:
            return  # complete, or too long: _verify says which
        try:
            if _request(session, url, part, offset, size, timeout, chunk_size):
                return
            reason = "the server closed the connection before the end"
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ) as exc:
            raise StageError(f"{url}: invalid URL ({exc})") from None
        except (requests.RequestException, _Transient) as exc:
            reason = _describe(exc, timeout)
        now = part.stat().st_size if part.exists() else 0
        # Progress resets the budget: a long download over a flaky link still
        # finishes, while a server that never gets anywhere is given up on.
        failures = 0 if now > offset else failures + 1
        if failures > retries:
            message = f"{url}: download failed after {retries + 1} attempts: {reason}"
            if now:  # a verified-later .part is safe to keep, and saves the next run the bytes
                raise StageError(f"{message} ({now} bytes kept in {part} for the next run to resume)")
            part.unlink(missing_ok=True)
            raise StageError(message)
        delay = backoff * 2 ** max(failures - 1, 0)
        log.warning("%s: %s; retrying in %.1f s from byte %d", url, reason, delay, now)
        time.sleep(delay)


def _request(
    session: requests.Session,
    url: str,
    part: Path,
    offset: int,
    size: int | None,
    timeout: tuple[float, float],
    chunk_size: int,
) -> bool:
    """One GET appending to ``part`` from ``offset``; True when the body arrived whole."""
    # identity: a server that gzips a .tar.gz on the fly would change the bytes we hash
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        status = response.status_code
        if status == 416:  # our .part is not a prefix of this file
            part.unlink()
            raise _Transient("the server refused to resume (HTTP 416); starting over")
        if status in RETRY_STATUS:
            raise _Transient(f"HTTP {status} {response.reason}")
        if status >= 400:
            part.unlink(missing_ok=True)
            raise StageError(f"{url}: HTTP {status} {response.reason}")
        total = _total_length(response)
        if status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Transient("the server answered the resume request with a different range; starting over")
            mode = "ab"
        else:
            if offset:
                log.info("%s: the server ignores Range requests; downloading from the start", url)
            offset, mode = 0, "wb"
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise StageError(f"{url}: the server has {total} bytes, expected {size}")
        expected = size if size is not None else total
        with (
            part.open(mode) as f,
            tqdm(
                total=expected,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                file=sys.stderr,
                disable=None,
                leave=False,
            ) as bar,
        ):
            for chunk in response.iter_content(chunk_size):
                f.write(chunk)
                bar.update(len(chunk))
    return expected is None or part.stat().st_size >= expected


def _total_length(response: requests.Response) -> int | None:
    """Length of the whole file as the server announces it, if it does."""
    if response.status_code == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        return int(match.group(3)) if match and match.group(3) != "*" else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _describe(exc: Exception, timeout: tuple[float, float]) -> str:
    """A short reason for a failed attempt."""
    # requests raises a read timeout inside the body as a ConnectionError wrapping urllib3's
    if isinstance(exc, requests.Timeout) or (exc.args and isinstance(exc.args[0], urllib3.exceptions.TimeoutError)):
        return f"timed out (connect timeout {timeout[0]:g} s, read timeout {timeout[1]:g} s)"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the connection dropped before the end of the file"
    return " ".join(str(exc).split()) or type(exc).__name__
