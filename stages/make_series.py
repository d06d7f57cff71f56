"""Stage ``make_series``: the hourly load series of tutorial 09, from an ENTSO-E CSV export.

``series.source: synthetic`` (default) writes a synthetic Spanish series as an
ENTSO-E export (stages/samples/series.py) and parses it; ``series.source: path``
parses a real "Total Load - Day Ahead / Actual" export; ``series.source: url``
downloads one (by default tutorial 09's Spanish export, 2015-01 to 2018-05),
checked against ``series.sha256``, into ``.dvc/tmp/downloads/series/``; it joins
``data/downloads/series/`` (a DVC out) only with the stage's other outputs, and
is reused from either place while it matches. A series shorter than
``series.min_days`` stops the stage here rather than tfrecords_series later. Either way the same parser runs.

Input: columns ``Time (CET)`` or ``Time (CET/CEST)`` (or ``Time (UTC)``),
``Day-ahead Total Load Forecast [MW] - ...`` (the grid operator's forecast,
optional: without it ``forecast_mw`` is blank, logged, and the load model's
operator baseline is null) and ``Actual Total Load [MW] - ...``;
one row per hour, ``DD.MM.YYYY HH:MM - DD.MM.YYYY HH:MM`` in local time.
Around daylight saving:

- spring: the export keeps the 02:00-03:00 row that never happened, blank;
  it is dropped (and counted as a DST gap);
- autumn: 02:00-03:00 happens twice. Rows may carry ``(CEST)``/``(CET)`` after
  a time; without markers the first such row is CEST and the second CET.

Values may be blank, ``-``, ``n/e`` or ``N/A`` (missing). A row whose interval
or value cannot be read is a bad row: ``series.on_bad_row: fail`` stops with
the file and line, ``skip`` drops and counts it.

Output ``data/raw/series/load.csv``: ``timestamp_utc`` (start of the hour,
``2015-01-01T00:00:00Z``), ``load_mw`` (actual), ``forecast_mw`` (day-ahead),
one row per UTC hour on a complete grid from the first to the last hour read:
missing values and hours absent from the file (gaps) are blank cells, so
downstream windowing can index by position. Nothing is interpolated here;
that happens later, per split. With ``source: synthetic`` the generated export
is kept beside it (``entsoe_total_load.csv``). Report: ``metrics/data_series.json``.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from stages.common.cli import LOCK_DIR, StageError, run_stage
from stages.common.download import download, sha256_file
from stages.common.outputs import atomic_outputs, keep_folder, write_csv, write_json
from stages.common.params import Section, UserPath, load_params
from stages.samples import series

log = logging.getLogger(__name__)
OUT_DIR = Path("data/raw/series")
SERIES_FILE = "load.csv"
SAMPLE_FILE = "entsoe_total_load.csv"
REPORT = Path("metrics/data_series.json")
DOWNLOAD_DIR = Path("data/downloads/series")  # source: url; an out of this stage only
DOWNLOAD_CACHE = Path(LOCK_DIR) / "downloads/series"  # a download in progress or not yet published

LOCAL_TZ = series.LOCAL_TZ  # all ENTSO-E "CET" exports use the CET/CEST clock
TIME_COLUMNS = {"Time (CET)": LOCAL_TZ, "Time (CET/CEST)": LOCAL_TZ, "Time (UTC)": "UTC"}
FORECAST_PREFIX = "Day-ahead Total Load Forecast [MW]"
ACTUAL_PREFIX = "Actual Total Load [MW]"
MISSING = {"", "-", "n/e", "N/A", "n/a"}
UTC_OFFSET = {"CET": dt.timedelta(hours=1), "CEST": dt.timedelta(hours=2)}
EXAMPLES = 10  # how many bad rows, duplicates and gaps the report lists

_STAMP = r"(\d{2})\.(\d{2})\.(\d{4}) (\d{2}):(\d{2})(?: ?\((CET|CEST)\))?"
_INTERVAL = re.compile(rf"^{_STAMP} - {_STAMP}$")


class Synthetic(Section):
    start: dt.date = Field(strict=False, description="first local day")
    end: dt.date = Field(strict=False, description="last local day, included")
    noise_mw: float = Field(ge=0.0, description="sd of the hourly noise")
    missing_fraction: float = Field(ge=0.0, le=0.5, description="share of blank actual values")

    @model_validator(mode="after")
    def _long_enough(self) -> Synthetic:
        if (self.end - self.start).days < 14:
            raise ValueError(f"end ({self.end}) must be at least 14 days after start ({self.start})")
        return self


class SeriesParams(Section):
    source: Literal["synthetic", "path", "url"]
    path: UserPath | None = Field(description="a real ENTSO-E export (source: path)")
    url: str = Field(description="an ENTSO-E export to download (source: url)")
    sha256: str | None = Field(pattern=r"^[0-9a-fA-F]{64}$", description="required with url")
    size: int | None = Field(gt=0, description="bytes expected from url (optional)")
    on_bad_row: Literal["fail", "skip"]
    max_gap_hours: int = Field(
        ge=1,
        description="longest run of hours without a load value that may be "
        "interpolated later; a longer one stops the stage",
    )
    # Checked where the data is read: tfrecords_series needs look_back + 1 whole days in each split.
    min_days: int = Field(ge=0, description="a series shorter than this many days stops the stage")
    synthetic: Synthetic

    @model_validator(mode="after")
    def _path_given(self) -> SeriesParams:
        if self.source == "path" and not self.path:
            raise ValueError("path: must name an ENTSO-E CSV export when source is 'path'")
        if self.source == "url" and not self.sha256:
            raise ValueError("sha256: required when source is 'url' (the download is checked before use)")
        return self


@dataclass
class Parsed:
    """What the parser read: one entry per kept row, plus the counts for the report."""

    time_column: str
    zone: str
    utc: list[dt.datetime] = field(default_factory=list)  # naive UTC, hour starts
    load: list[float] = field(default_factory=list)  # NaN where missing
    forecast: list[float] = field(default_factory=list)
    local_days: set[dt.date] = field(default_factory=set)
    rows: int = 0
    bad_rows: int = 0
    bad_examples: list[str] = field(default_factory=list)
    dst_gap_rows: int = 0
    dst_gap_values_dropped: int = 0
    dst_repeated_hours: int = 0


def _number(cell: str) -> float:
    """A load value in MW; NaN when the export marks it missing."""
    text = cell.strip()
    if text in MISSING:
        return math.nan
    value = float(text)  # ValueError: not a number
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def _stamp(groups: tuple[str | Any, ...]) -> tuple[dt.datetime, str | None]:  # Match.groups(): the marker may be None
    day, month, year, hour, minute, marker = groups
    return dt.datetime(int(year), int(month), int(day), int(hour), int(minute)), marker


def _span(start: dt.datetime, mark_start: str | None, end: dt.datetime, mark_end: str | None) -> dt.timedelta:
    """An interval's length: wall clock, unless (CET)/(CEST) markers give the offsets."""
    if mark_start and mark_end:
        return (end - UTC_OFFSET[mark_end]) - (start - UTC_OFFSET[mark_start])
    return end - start


def _columns(header: list[str], name: str) -> tuple[str, int | None, int]:
    """The time column's name and the positions of the forecast (None: absent) and actual columns."""
    header = [h.strip().lstrip("\ufeff") for h in header]
    if not header or header[0] not in TIME_COLUMNS:
        raise StageError(
            f"{name} line 1: first column is {header[0] if header else ''!r}, expected one of "
            f"{', '.join(map(repr, TIME_COLUMNS))} (an ENTSO-E 'Total Load - Day Ahead / Actual' export)"
        )
    positions: list[int | None] = []
    for prefix in (FORECAST_PREFIX, ACTUAL_PREFIX):
        found = [i for i, h in enumerate(header) if h.startswith(prefix)]
        if prefix == FORECAST_PREFIX and not found:
            log.info("%s: no %r column: forecast_mw stays blank (no operator baseline)", name, prefix)
            positions.append(None)
            continue
        if len(found) != 1:
            raise StageError(f"{name} line 1: expected one column starting with {prefix!r}, found {len(found)}")
        positions.append(found[0])
    forecast, actual = positions
    assert actual is not None  # only the forecast column may be absent
    return header[0], forecast, actual


def _parse_row(
    row: list[str], header: list[str], i_actual: int, i_forecast: int | None
) -> tuple[dt.datetime, str | None, float, float]:
    """(local start, CET/CEST marker or None, actual, forecast); ValueError says what is wrong."""
    if len(row) != len(header):
        raise ValueError(f"{len(row)} fields, the header has {len(header)}")
    match = _INTERVAL.match(row[0].strip())
    if not match:
        raise ValueError(f"unreadable time interval {row[0]!r} (expected 'DD.MM.YYYY HH:MM - DD.MM.YYYY HH:MM')")
    try:
        (start, mark_start), (end, mark_end) = _stamp(match.groups()[:6]), _stamp(match.groups()[6:])
    except ValueError:
        raise ValueError(f"impossible date or time in {row[0]!r}") from None
    if start.minute != 0 or _span(start, mark_start, end, mark_end) != dt.timedelta(hours=1):
        raise ValueError(f"not a one-hour interval: {row[0]!r} (this stage reads hourly exports)")
    values = []
    for i in (i_actual, i_forecast):
        if i is None:  # no forecast column
            values.append(math.nan)
            continue
        try:
            values.append(_number(row[i]))
        except ValueError:
            raise ValueError(f"{header[i].strip()!r} is not a load in MW: {row[i]!r}") from None
    return start, mark_start, values[0], values[1]


def parse_entsoe(text: str, name: str, on_bad_row: str = "fail") -> Parsed:
    """Read an ENTSO-E total-load export; bad rows raise StageError (fail) or are counted (skip)."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise StageError(f"{name}: empty file, expected an ENTSO-E CSV export") from None
    except csv.Error as exc:
        raise StageError(f"{name} line 1: not a readable CSV header: {exc}") from None
    time_column, i_forecast, i_actual = _columns(header, name)
    out = Parsed(time_column=time_column, zone=TIME_COLUMNS[time_column])

    kept = []  # (local start, marker, actual, forecast) of the readable rows, in file order
    try:
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue  # a trailing empty line is not a row
            out.rows += 1
            try:
                kept.append(_parse_row(row, header, i_actual, i_forecast))
            except ValueError as exc:
                if on_bad_row == "fail":
                    raise StageError(
                        f"{name} line {reader.line_num}: {exc} (series.on_bad_row: skip drops such rows)"
                    ) from None
                out.bad_rows += 1
                if len(out.bad_examples) < EXAMPLES:
                    out.bad_examples.append(f"line {reader.line_num}: {exc}")
    except csv.Error as exc:  # broken quoting: the rest of the file cannot be trusted
        raise StageError(f"{name} line {reader.line_num}: unreadable CSV: {exc}") from None
    starts = [k[0] for k in kept]
    markers = [k[1] for k in kept]
    loads = [k[2] for k in kept]
    forecasts = [k[3] for k in kept]

    utc = _to_utc(starts, markers, out.zone, out)
    for when, load, forecast, start in zip(utc, loads, forecasts, starts, strict=True):
        if when is None:  # the spring-forward hour: no such time, whatever the row says
            out.dst_gap_rows += 1
            out.dst_gap_values_dropped += int(not math.isnan(load)) + int(not math.isnan(forecast))
            continue
        out.utc.append(when)
        out.load.append(load)
        out.forecast.append(forecast)
        out.local_days.add(start.date())
    if not out.utc:
        raise StageError(f"{name}: no readable hourly rows ({out.rows} rows, {out.bad_rows} bad)")
    return out


def _to_utc(starts: list[dt.datetime], markers: list[str | None], zone: str, out: Parsed) -> list[dt.datetime | None]:
    """UTC hour starts (naive); None for local times that do not exist (spring forward)."""
    if zone == "UTC":
        return list(starts)
    # An autumn hour without a marker: first occurrence CEST, second CET (the export's order).
    seen: dict[dt.datetime, int] = {}
    is_dst = np.zeros(len(starts), dtype=bool)
    for i, start in enumerate(starts):
        seen[start] = seen.get(start, 0) + 1
        is_dst[i] = seen[start] == 1
    local = pd.DatetimeIndex(starts, dtype="datetime64[us]")
    localized = local.tz_localize(zone, ambiguous=is_dst, nonexistent="NaT").tz_convert("UTC").tz_localize(None)
    ambiguous = local.tz_localize(zone, ambiguous="NaT", nonexistent="NaT").isna() & localized.notna()
    out.dst_repeated_hours = len({s for s, a in zip(starts, ambiguous, strict=True) if a and seen[s] >= 2})
    result: list[dt.datetime | None] = []
    for start, marker, when in zip(starts, markers, localized, strict=True):
        if marker is not None:
            result.append(start - UTC_OFFSET[marker])
        else:
            result.append(None if pd.isna(when) else when.to_pydatetime())
    return result


def hourly_grid(parsed: Parsed) -> tuple[pd.DataFrame, dict]:
    """The parsed rows on a complete UTC hourly grid, and what was found doing it."""
    frame = pd.DataFrame(
        {
            "utc": pd.DatetimeIndex(parsed.utc, dtype="datetime64[us]"),
            "load_mw": parsed.load,
            "forecast_mw": parsed.forecast,
        }
    )
    duplicated = frame["utc"].duplicated(keep="first")  # keep the row the export listed first
    duplicates = sorted(set(frame.loc[duplicated, "utc"]))
    frame = frame[~duplicated].sort_values("utc").set_index("utc")
    grid = pd.date_range(frame.index[0], frame.index[-1], freq="h")
    present = grid.isin(frame.index)
    absent = np.flatnonzero(~present)
    runs = np.split(absent, np.flatnonzero(np.diff(absent) != 1) + 1) if len(absent) else []
    gaps = [(grid[run[0]], len(run)) for run in runs]  # (first absent hour, hours)
    found = {
        "duplicates": int(duplicated.sum()),
        "duplicate_hours": [_iso(t) for t in duplicates[:EXAMPLES]],
        "missing_hours": int((~present).sum()),
        "gaps": len(gaps),
        "gap_examples": [{"from": _iso(t), "hours": n} for t, n in gaps[:EXAMPLES]],
    }
    return frame.reindex(grid), found


def longest_gap(grid: pd.DataFrame) -> tuple[int, pd.Timestamp | None, pd.Timestamp | None]:
    """The longest run of hours without a load value (absent from the file or blank): ``(hours, first, last)``."""
    missing = grid["load_mw"].isna().to_numpy()
    if not missing.any():
        return 0, None, None
    edges = np.diff(np.concatenate([[0], missing.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    i = int(np.argmax(stops - starts))
    return int(stops[i] - starts[i]), grid.index[starts[i]], grid.index[stops[i] - 1]


def check_gaps(grid: pd.DataFrame, name: str, max_gap_hours: int) -> int:
    """The longest gap in hours; StageError when it is longer than ``max_gap_hours``.

    tfrecords_series fills gaps by linear interpolation: fine for a few hours,
    a fabricated series for a long outage (a missing year would become a straight line).
    """
    hours, first, last = longest_gap(grid)
    if hours > max_gap_hours:
        raise StageError(
            f"{name}: no load values for {hours} hours, from {_iso(first)} to {_iso(last)} "
            f"(longer than series.max_gap_hours: {max_gap_hours}; they would be interpolated). "
            f"Use a file without the gap, or raise series.max_gap_hours"
        )
    return hours


def _iso(t: pd.Timestamp | dt.datetime) -> str:
    return f"{t:%Y-%m-%dT%H:%M:%S}Z"


def _stats(values: pd.Series) -> dict:
    present = values.dropna()
    if present.empty:
        return {"min": None, "mean": None, "max": None}
    return {"min": float(present.min()), "mean": float(present.mean()), "max": float(present.max())}


def write_series(path: Path, grid: pd.DataFrame) -> None:
    """``timestamp_utc,load_mw,forecast_mw``; whole MW as integers, blank where missing."""

    def cell(v: float) -> int | float | None:
        if math.isnan(v):
            return None  # a blank cell
        return int(v) if v.is_integer() else round(v, 3)

    rows = (
        (_iso(when), cell(load), cell(forecast))
        for when, load, forecast in zip(grid.index, grid["load_mw"], grid["forecast_mw"], strict=True)
    )
    write_csv(path, ["timestamp_utc", "load_mw", "forecast_mw"], rows)


def report(source: str, source_file: str, data: bytes, parsed: Parsed, grid: pd.DataFrame, found: dict) -> dict:
    """The data report: where the series came from and what was found in it."""
    load, forecast = grid["load_mw"], grid["forecast_mw"]
    both = load.notna() & forecast.notna()
    return {
        "source": source,
        "source_location": source_file,
        "source_sha256": hashlib.sha256(data).hexdigest(),
        "time_column": parsed.time_column,
        "rows_read": parsed.rows,
        "bad_rows": parsed.bad_rows,
        "bad_row_examples": parsed.bad_examples,
        "first_timestamp_utc": _iso(grid.index[0]),
        "last_timestamp_utc": _iso(grid.index[-1]),
        "hours": len(grid),
        "days": len(parsed.local_days),
        "missing_load_values": int(load.isna().sum()) - found["missing_hours"],
        "missing_forecast_values": int(forecast.isna().sum()) - found["missing_hours"],
        "blank_load_cells": int(load.isna().sum()),
        "dst_gaps": parsed.dst_gap_rows,
        "dst_gap_values_dropped": parsed.dst_gap_values_dropped,
        "dst_repeated_hours": parsed.dst_repeated_hours,
        **found,
        "longest_gap_hours": longest_gap(grid)[0],  # without a load value: absent or blank
        "load_mw": _stats(load),
        "forecast_mw": _stats(forecast),
        "day_ahead_forecast_mae_mw": float((load[both] - forecast[both]).abs().mean()) if both.any() else None,
    }


def main() -> None:
    seed, p = load_params("series", SeriesParams)
    new_download: Path | None = None  # source: url, a file to add to DOWNLOAD_DIR with the outputs
    if p.source == "path":
        assert p.path is not None  # SeriesParams requires it with source: path
        source = Path(p.path)
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise StageError(f"series.path: cannot read {source}: {exc.strerror or exc}") from None
        name = str(source)
    elif p.source == "url":
        file_name = PurePosixPath(urlparse(p.url).path).name
        kept = DOWNLOAD_DIR / (file_name if re.fullmatch(r"[\w.+-]+", file_name) else "entsoe_export.csv")
        assert p.sha256 is not None  # SeriesParams requires it with source: url
        if kept.is_file() and sha256_file(kept) == p.sha256.lower():
            data = kept.read_bytes()
        else:
            # Downloaded (and resumed) outside the DVC out, which changes only with the other outputs.
            data = download(p.url, DOWNLOAD_CACHE / kept.name, p.sha256, p.size).read_bytes()
            new_download = kept
        name = p.url
    else:
        # The generator's text in memory (series.write_sample would only write these bytes to a file).
        s = p.synthetic
        data = series.entsoe_csv(s.start, s.end, seed, s.noise_mw, s.missing_fraction).encode("utf-8")
        name = str(OUT_DIR / SAMPLE_FILE)
    try:
        text = data.decode("utf-8-sig")  # exports opened and saved in Excel gain a BOM
    except UnicodeDecodeError as exc:
        raise StageError(f"{name}: not UTF-8 text (byte {exc.start}); expected an ENTSO-E CSV export") from None

    parsed = parse_entsoe(text, name, p.on_bad_row)
    grid, found = hourly_grid(parsed)
    if len(grid) < p.min_days * 24:  # tfrecords_series would stop on it: stop here, where the data is read
        raise StageError(
            f"{name}: {len(grid)} hours of load, fewer than {p.min_days} days (series.min_days); "
            "tutorial 09's windows need look_back + 1 whole days in each of train, valid and test"
        )
    check_gaps(grid, name, p.max_gap_hours)
    # A local file is named by its name only in the committed report (the sha256 says which).
    data_report = report(p.source, Path(name).name if p.source == "path" else name, data, parsed, grid, found)
    with atomic_outputs() as out:
        folder = out.directory(OUT_DIR)
        if p.source == "synthetic":
            (folder / SAMPLE_FILE).write_bytes(data)
        write_series(folder / SERIES_FILE, grid)
        write_json(out.file(REPORT), data_report)
        if new_download is not None:
            out.file(new_download).write_bytes(data)
    if new_download is not None:
        (DOWNLOAD_CACHE / new_download.name).unlink(missing_ok=True)  # now in the out (and DVC's cache)
    keep_folder(DOWNLOAD_DIR, "Downloaded load series (series.source: url) are kept here, checked by sha256.\n")
    log.info(
        "%s: %d hours %s .. %s, %d missing load values, %d missing hours in %d gaps, %d duplicates, "
        "%d DST gaps, %d bad rows",
        name,
        len(grid),
        data_report["first_timestamp_utc"],
        data_report["last_timestamp_utc"],
        data_report["missing_load_values"],
        found["missing_hours"],
        found["gaps"],
        found["duplicates"],
        parsed.dst_gap_rows,
        parsed.bad_rows,
    )


if __name__ == "__main__":
    run_stage(main, "make_series")
