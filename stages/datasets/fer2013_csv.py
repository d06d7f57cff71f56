"""The FER2013 CSV format: ``emotion,pixels,Usage``, one 48×48 grayscale face per row.

Written once here and used by the sample generator (to write it), the
acquisition stage (to validate and normalize what a user brings) and the stages
after it (to read the normalized file). Pixels are 2,304 space-separated
integers 0–255 in row-major order.

Both directions are vectorized with NumPy: the real file has 35,887 rows of
2,304 numbers (≈ 83 million tokens), which per-token Python would take many
seconds to parse or format.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from stages.common.cli import StageError

SIDE = 48
PIXELS = SIDE * SIDE
EMOTIONS = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
USAGES = ("Training", "PublicTest", "PrivateTest")
COLUMNS = ("emotion", "pixels", "Usage")
HEADER = ",".join(COLUMNS) + "\n"

# Rows per class in the real file (REFERENCE.md), for the sample's class balance.
FER2013_CLASS_COUNTS = (4953, 547, 5121, 8989, 6077, 4002, 6198)
FER2013_SPLIT_ROWS = {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}

# Why a row is bad; the data report counts each.
BAD_ROW_REASONS = (
    "empty_line",
    "missing_columns",
    "unknown_emotion",
    "unknown_usage",
    "wrong_pixel_count",
    "non_integer_pixel",
    "pixel_out_of_range",
)

_EMOTION_IDS = {str(i): i for i in range(len(EMOTIONS))}
_USAGE_IDS = {name: i for i, name in enumerate(USAGES)}
_INTEGER = re.compile(r"[+-]?[0-9]+")

# --- writing -----------------------------------------------------------------

# Each pixel as 4 bytes: its digits right-aligned, NUL-padded, then a space.
# Rows are laid out in a fixed-width byte matrix and the NULs dropped at the end.
_PIXEL_BYTES = np.zeros((256, 4), dtype=np.uint8)
for _value in range(256):
    _digits = str(_value).encode()
    _PIXEL_BYTES[_value, 3 - len(_digits) : 3] = np.frombuffer(_digits, dtype=np.uint8)
    _PIXEL_BYTES[_value, 3] = ord(" ")
_PIXEL_WORDS = _PIXEL_BYTES.view(np.uint32).ravel()  # one gather of 4-byte words is faster
_SUFFIX_WIDTH = 2 + max(len(u) for u in USAGES)  # ",PrivateTest\n"
_SUFFIX_BYTES = np.zeros((len(USAGES), _SUFFIX_WIDTH), dtype=np.uint8)
for _i, _usage in enumerate(USAGES):
    _suffix = f",{_usage}\n".encode()
    _SUFFIX_BYTES[_i, : len(_suffix)] = np.frombuffer(_suffix, dtype=np.uint8)


def format_rows(emotions: np.ndarray, pixels: np.ndarray, usages: np.ndarray) -> bytes:
    """CSV lines (no header) for faces ``pixels`` (n, 2304) uint8, labels 0–6, usage ids 0–2."""
    pixels = np.asarray(pixels, dtype=np.uint8).reshape(len(pixels), PIXELS)
    n = len(pixels)
    cells = _PIXEL_WORDS[pixels].view(np.uint8).reshape(n, PIXELS, 4)
    cells[:, -1, 3] = 0  # no space after the last pixel
    prefix = np.empty((n, 2), dtype=np.uint8)
    prefix[:, 0] = ord("0") + np.asarray(emotions, dtype=np.uint8)
    prefix[:, 1] = ord(",")
    matrix = np.concatenate([prefix, cells.reshape(n, -1), _SUFFIX_BYTES[np.asarray(usages, dtype=np.intp)]], axis=1)
    flat = matrix.ravel()
    return flat[flat != 0].tobytes()


# --- reading -----------------------------------------------------------------


@dataclass
class Chunk:
    """Good rows of one chunk, in file order: labels, usage ids, pixels (n, 2304) uint8."""

    emotions: np.ndarray
    usages: np.ndarray
    pixels: np.ndarray


@dataclass
class BadRow:
    line: int
    reason: str
    message: str


def check_rows(rows: Sequence[tuple[int, list[str]]], columns: dict[str, int]) -> tuple[Chunk, list[BadRow]]:
    """Check ``(line number, fields)`` pairs; return the good rows and the bad ones, in order.

    ``columns`` maps each of emotion/pixels/Usage to its position in the header.
    """
    bad: list[BadRow] = []
    lines, emotions, usages, fields = [], [], [], []
    e_col, p_col, u_col = (columns[c] for c in COLUMNS)
    width = max(columns.values()) + 1
    for line, row in rows:
        if not row or (len(row) == 1 and not row[0].strip()):
            bad.append(BadRow(line, "empty_line", "empty line"))
            continue
        if len(row) < width:
            bad.append(BadRow(line, "missing_columns", f"expected {len(COLUMNS)} columns, got {len(row)}"))
            continue
        emotion = _EMOTION_IDS.get(row[e_col].strip())
        if emotion is None:
            bad.append(BadRow(line, "unknown_emotion", f"unknown emotion {row[e_col].strip()!r} (expected 0-6)"))
            continue
        usage = _USAGE_IDS.get(row[u_col].strip())
        if usage is None:
            expected = "/".join(USAGES)
            bad.append(BadRow(line, "unknown_usage", f"unknown Usage {row[u_col].strip()!r} (expected {expected})"))
            continue
        lines.append(line)
        emotions.append(emotion)
        usages.append(usage)
        fields.append(row[p_col])
    values, ok = parse_pixels(fields)
    for i in np.flatnonzero(~ok):
        problem = _pixel_problem(fields[i])
        if problem is None:  # the fast path is strict; the exact check also accepts e.g. "007"
            values[i] = np.array(fields[i].split(), dtype=np.int64)
            ok[i] = True
        else:
            bad.append(BadRow(lines[i], *problem))
    bad.sort(key=lambda b: b.line)
    chunk = Chunk(np.array(emotions, dtype=np.uint8)[ok], np.array(usages, dtype=np.uint8)[ok], values[ok])
    return chunk, bad


def read_rows(stream: TextIO, name: str, chunk_rows: int = 1024) -> Iterator[tuple[Chunk, list[BadRow]]]:
    """Stream a FER2013-style CSV (any column order, spaces after commas) in checked chunks.

    ``name`` prefixes error messages. A missing header column or a damaged CSV
    raises StageError; bad rows are returned for the caller to fail on or skip.
    """
    reader = csv.reader(stream, skipinitialspace=True)
    try:
        header = next(reader, None)
        if header is None:
            raise StageError(f"{name}: empty file (expected a header {HEADER.strip()!r})")
        columns = find_columns(header)
        if columns is None:
            missing = [c for c in COLUMNS if c not in _names(header)]
            raise StageError(
                f"{name}: line 1: missing column(s) {', '.join(missing)} (header: {','.join(header)[:80]!r})"
            )
        batch: list[tuple[int, list[str]]] = []
        last_line = reader.line_num
        for row in reader:
            batch.append((last_line + 1, row))
            last_line = reader.line_num
            if len(batch) == chunk_rows:
                yield check_rows(batch, columns)
                batch = []
    except csv.Error as exc:
        raise StageError(f"{name}: line {reader.line_num}: not valid CSV: {exc}") from None
    except UnicodeDecodeError:
        raise StageError(f"{name}: line {reader.line_num + 1}: not UTF-8 text (is it really a CSV file?)") from None
    if batch:
        yield check_rows(batch, columns)


def parse_pixels(fields: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Fast path: ``(values (n, 2304) uint8, ok (n,) bool)`` for pixel strings.

    A row is ok when it is 2,304 runs of 1–3 digits, each ≤ 255, separated by
    spaces. Anything else is flagged for :func:`_pixel_problem`, which is exact.
    """
    n = len(fields)
    values = np.zeros((n, PIXELS), dtype=np.uint8)
    ok = np.ones(n, dtype=bool)
    if n == 0:
        return values, ok
    for i, text in enumerate(fields):
        if "\n" in text:  # would break the one-row-per-line layout below
            ok[i] = False
    data = np.frombuffer(
        "\n".join(t if ok[i] else "" for i, t in enumerate(fields)).encode("utf-8") + b"\n", dtype=np.uint8
    )
    # Work on token positions, not per byte: a row's tokens are found by
    # searching their start among the newline positions.
    newlines = np.flatnonzero(data == ord("\n"))
    digit = (data - np.uint8(ord("0"))) < 10  # uint8 wraps: only '0'-'9' fall below 10
    stray = np.flatnonzero(~digit & (data != ord(" ")) & (data != ord("\n")))
    ok[np.searchsorted(newlines, stray)] = False
    edges = np.diff(digit.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    token_row = np.searchsorted(newlines, starts)
    ok[np.bincount(token_row, minlength=n) != PIXELS] = False
    length = ends - starts + 1
    ones = data[ends].astype(np.int16) - ord("0")
    tens = np.where(length >= 2, data[ends - 1].astype(np.int16) - ord("0"), 0)
    hundreds = np.where(length >= 3, data[np.maximum(ends - 2, 0)].astype(np.int16) - ord("0"), 0)
    value = ones + 10 * tens + 100 * hundreds
    ok[token_row[(length > 3) | (value > 255)]] = False
    values[ok] = value[ok[token_row]].reshape(-1, PIXELS)
    return values, ok


def _pixel_problem(text: str) -> tuple[str, str] | None:
    """The exact check of one pixel string: ``(reason, message)``, or None if it is fine."""
    tokens = text.split()
    if len(tokens) != PIXELS:
        return "wrong_pixel_count", f"expected {PIXELS} pixels, got {len(tokens)}"
    for position, token in enumerate(tokens, start=1):
        if not _INTEGER.fullmatch(token):
            return "non_integer_pixel", f"pixel {position} is not an integer: {token[:20]!r}"
        if not 0 <= int(token) <= 255:
            return "pixel_out_of_range", f"pixel {position} is out of range 0-255: {token}"
    return None


def find_columns(header: Sequence[str]) -> dict[str, int] | None:
    """Positions of emotion/pixels/Usage in a header row (spaces around names ignored), or None."""
    names = _names(header)
    if not all(column in names for column in COLUMNS):
        return None
    return {column: names.index(column) for column in COLUMNS}


def _names(header: Sequence[str]) -> list[str]:
    return [name.strip().lstrip("\ufeff") for name in header]  # BOM: files saved by Excel
