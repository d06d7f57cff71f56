"""Stage ``tfrecords_series`` (tutorial 09's data): daily load windows as ``tf.train.Example`` TFRecords.

From the hourly UTC grid ``data/raw/series/load.csv`` (stages/make_series.py):

1. **Days.** The series is cut into UTC days of 24 hours; incomplete days at
   either end are dropped. UTC, not local time: a local (CET/CEST) day has 23
   or 25 hours twice a year, a UTC day always 24, so every window has the same
   shape and nothing needs DST handling. (A UTC day runs 01:00-01:00 Madrid
   time in winter, 02:00-02:00 in summer.)
2. **Splits by time.** The days are split in order into train | valid | test
   (the last ``valid_fraction`` + ``test_fraction`` of the days); never shuffled
   across a boundary.
3. **Missing values** are filled within each split only (linear in time; hours
   before the first or after the last known value of the split take that
   value), so no value of one split leaks into another.
4. **Scaler.** Mean and standard deviation per hour of day (UTC), fitted on the
   training days only - sklearn's ``StandardScaler`` on the (days, 24) matrix,
   as the tutorial - saved as ``scaler.json``.
5. **Windows.** Within a split, each day with ``look_back`` days before it in
   the same split becomes one Example: ``inputs`` the ``look_back`` × 24 scaled
   loads before it (day-major), ``target`` its 24 scaled loads. No window
   crosses a split boundary. Also, for baselines and reporting in MW:
   ``inputs_mw``, ``target_mw``, ``forecast_mw`` (the grid operator's day-ahead
   forecast for the target day, **not** filled: NaN for the hours the export
   had no forecast, all NaN if it has no forecast column), ``target_day`` (ISO
   date) and ``weekday`` (0 = Monday).
6. **Calendar.** ``calendar``: what a forecaster knows about each day of the
   window - the ``look_back`` input days, then the target day - as
   ``CALENDAR_FEATURES`` per day (day-major, (look_back + 1) x 10 floats):
   the day of the week one-hot (Monday first), a national-holiday flag of
   ``country`` (the PyPI ``holidays`` package, national holidays only, no
   regional ones), and "bridge" flags: the day before / after a holiday
   (Spain's *puentes*, Christmas Eve). A UTC day is dated by its UTC date
   (it covers 23 of the 24 hours of the local day in CET/CEST; the same rule
   for every country's ENTSO-E export, whose clock is CET/CEST).
   Two optional additions per day: ``day_of_year`` its cosine and sine
   (``year_cos``, ``year_sin``: the yearly cycle of heating, cooling and the
   August holidays), ``regional_holidays`` the share of the country's
   subdivisions in the ``holidays`` package that keep a holiday of their own that
   day (``regional_holiday_share``, unweighted; for Spain the 17 communities,
   Ceuta, Melilla and the city of Barcelona, each with a few holidays a year).

Outputs: ``data/tfrecords/series/<split>-0000i-of-0000N.tfrecord``,
``spec.json`` and ``scaler.json``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from stages.common.cli import StageError, run_stage
from stages.common.params import Section, load_params
from stages.common.tfrecords import (
    SPEC_FILE,
    bytes_feature,
    example,
    float_feature,
    int64_feature,
    split_entry,
    write_spec,
    write_split,
)

log = logging.getLogger(__name__)

RAW_CSV = Path("data/raw/series/load.csv")
OUT_DIR = Path("data/tfrecords/series")
SCALER_FILE = "scaler.json"
HOURS = 24
SPLITS = ("train", "valid", "test")
COLUMNS = ("timestamp_utc", "load_mw", "forecast_mw")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CALENDAR_FEATURES = (*(f"weekday_{d}" for d in WEEKDAYS), "holiday", "day_before_holiday", "day_after_holiday")
DAY_OF_YEAR_FEATURES = ("year_cos", "year_sin")
REGIONAL_FEATURES = ("regional_holiday_share",)


class TfrecordsSeriesParams(Section):
    look_back: int = Field(ge=1, le=366, description="days of history per window")
    valid_fraction: float = Field(gt=0.0, lt=1.0, description="share of the days, after train")
    test_fraction: float = Field(gt=0.0, lt=1.0, description="share of the days, last")
    num_shards: int = Field(ge=1, le=999)
    compression: Literal["none", "gzip"]
    country: str = Field(
        description="ISO 3166 code of the country whose national holidays flag the days (the PyPI holidays package)",
    )
    day_of_year: bool = Field(description="add the day of the year (cosine, sine) to each day's calendar")
    regional_holidays: bool = Field(
        description="add the share of the country's regions keeping a regional holiday that day"
    )

    @field_validator("country")
    @classmethod
    def _known_country(cls, code: str) -> str:
        import holidays

        if code not in holidays.list_supported_countries():
            raise ValueError(
                f"{code!r} is not a country the holidays package knows "
                "(an ISO 3166 alpha-2 code such as 'ES', 'DE', 'FR')"
            )
        return code

    @model_validator(mode="after")
    def _train_left(self) -> TfrecordsSeriesParams:
        if self.valid_fraction + self.test_fraction >= 0.9:
            raise ValueError("valid_fraction + test_fraction must be below 0.9, leaving days to train on")
        return self

    @model_validator(mode="after")
    def _has_regions(self) -> TfrecordsSeriesParams:
        if self.regional_holidays and not regions(self.country):
            raise ValueError(
                f"regional_holidays: the holidays package knows no regions of {self.country!r} "
                "(set regional_holidays: false)"
            )
        return self


def calendar_names(day_of_year: bool = False, regional_holidays: bool = False) -> tuple[str, ...]:
    """The calendar's features per day, in the TFRecords' order."""
    return (
        CALENDAR_FEATURES
        + (DAY_OF_YEAR_FEATURES if day_of_year else ())
        + (REGIONAL_FEATURES if regional_holidays else ())
    )


def regions(country: str) -> tuple[str, ...]:
    """The subdivisions the holidays package knows for ``country`` (regions, a few cities); () if none."""
    import holidays

    return tuple(holidays.country_holidays(country).subdivisions)


@dataclass
class Days:
    """Whole UTC days: dates and (n, 24) matrices of load and day-ahead forecast (NaN = missing)."""

    dates: list[dt.date]
    load: np.ndarray
    forecast: np.ndarray


@dataclass
class Split:
    """One split's days after filling: values, and what the filling did."""

    name: str
    dates: list[dt.date]
    load: np.ndarray  # (n, 24) MW, no NaN
    forecast: np.ndarray  # (n, 24) MW, as read: NaN where the export had no day-ahead forecast
    filled_hours: int
    longest_gap_hours: int


def read_load(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(timestamps datetime64[s] UTC, load, forecast)`` from ``load.csv``; checks the hourly grid."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype={"timestamp_utc": str}, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise StageError(f"{path}: not found (run the make_series stage first)") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise StageError(f"{path}: not a readable CSV: {exc}") from None
    if tuple(frame.columns) != COLUMNS:
        raise StageError(f"{path}: expected columns {','.join(COLUMNS)}, got {','.join(map(str, frame.columns))}")
    try:
        stamps = pd.to_datetime(frame["timestamp_utc"], format="%Y-%m-%dT%H:%M:%SZ").to_numpy("datetime64[s]")
        load = pd.to_numeric(frame["load_mw"]).to_numpy(np.float64)
        forecast = pd.to_numeric(frame["forecast_mw"]).to_numpy(np.float64)
    except ValueError as exc:
        raise StageError(f"{path}: bad value: {exc}") from None
    steps = np.diff(stamps).astype(np.int64)
    if len(stamps) and np.any(steps != 3600):
        line = int(np.flatnonzero(steps != 3600)[0]) + 3  # header + 1-based + the row after the step
        raise StageError(f"{path}: line {line}: not on a complete hourly grid (re-run make_series)")
    return stamps, load, forecast


def whole_days(stamps: np.ndarray, load: np.ndarray, forecast: np.ndarray) -> Days:
    """Cut the hourly grid into UTC days of 24 hours, dropping incomplete days at the ends."""
    hour = (stamps.astype(np.int64) // 3600) % HOURS
    first = int(np.argmax(hour == 0)) if np.any(hour == 0) else len(stamps)
    n = (len(stamps) - first) // HOURS
    keep = slice(first, first + n * HOURS)
    dates = [d.item() for d in stamps[keep][::HOURS].astype("datetime64[D]")]
    return Days(dates, load[keep].reshape(n, HOURS), forecast[keep].reshape(n, HOURS))


def split_sizes(n_days: int, valid_fraction: float, test_fraction: float) -> dict[str, int]:
    """Days per split (train gets the rest), in time order train, valid, test."""
    n_test = round(n_days * test_fraction)
    n_valid = round(n_days * valid_fraction)
    return {"train": n_days - n_valid - n_test, "valid": n_valid, "test": n_test}


def fill_gaps(values: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Linear interpolation of NaNs in a series, edges from the nearest known value.

    Returns ``(filled, number filled, longest run of NaNs)``; all NaN stays all NaN.
    """
    flat = values.ravel()
    missing = np.isnan(flat)
    if not missing.any() or missing.all():
        return values.copy(), int(missing.sum()), int(missing.sum())
    positions = np.arange(flat.size)
    filled = flat.copy()
    # np.interp holds the first/last known value beyond the ends: the edge rule.
    filled[missing] = np.interp(positions[missing], positions[~missing], flat[~missing])
    edges = np.diff(np.concatenate([[0], missing.astype(np.int8), [0]]))
    longest = int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())
    return filled.reshape(values.shape), int(missing.sum()), longest


def make_splits(days: Days, p: TfrecordsSeriesParams, where: Path) -> list[Split]:
    """Split the days in time order and fill each split's gaps from its own values only."""
    sizes = split_sizes(len(days.dates), p.valid_fraction, p.test_fraction)
    short = {name: n for name, n in sizes.items() if n < p.look_back + 1}
    if short:
        raise StageError(
            f"{where}: {len(days.dates)} whole days give too few for a {p.look_back}-day look_back in "
            + ", ".join(f"{name} ({n} days)" for name, n in short.items())
            + " (each split needs look_back + 1 days; lower look_back or change the fractions)"
        )
    splits = []
    start = 0
    for name in SPLITS:
        stop = start + sizes[name]
        load, filled, longest = fill_gaps(days.load[start:stop])
        if np.isnan(load).all():
            raise StageError(
                f"{where}: the {name} split ({days.dates[start]}..{days.dates[stop - 1]}) has no load values"
            )
        forecast = days.forecast[start:stop].copy()  # a reference, not an input: never filled
        if np.isnan(forecast).all():
            log.warning("%s split has no day-ahead forecast values: forecast_mw is NaN", name)
        splits.append(Split(name, days.dates[start:stop], load, forecast, filled, longest))
        start = stop
    return splits


def fit_scaler(train: Split) -> dict[str, Any]:
    """Per-hour-of-day mean and standard deviation of the training loads (population sd, as sklearn).

    ``global``: one mean and standard deviation over every training hour, the
    tutorial's single StandardScaler (it was fitted on the first 80 % of the
    series); used only to report a scaled MSE comparable with the tutorial's.
    """
    mean = train.load.mean(axis=0)
    scale = train.load.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant hour: leave it unscaled, as sklearn does
    return {
        "method": "standard",
        "per": "hour of day (UTC), columns 0-23",
        "fitted_on": "train",
        "first_day": train.dates[0].isoformat(),
        "last_day": train.dates[-1].isoformat(),
        "days": len(train.dates),
        "unit": "MW",
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "global": {"mean": float(train.load.mean()), "scale": float(train.load.std())},
    }


def calendar_features(
    dates: list[dt.date], country: str, day_of_year: bool = False, regional_holidays: bool = False
) -> np.ndarray:
    """``(len(dates), n)`` float32: weekday one-hot, holiday, day before / after a holiday, then
    with ``day_of_year`` its cosine and sine (the yearly cycle: heating, cooling, August), then with
    ``regional_holidays`` the share of the regions keeping a holiday of their own that day
    (unweighted: each region counts once)."""
    import holidays

    if not dates:
        return np.zeros((0, len(calendar_names(day_of_year, regional_holidays))), np.float32)
    years = range(dates[0].year - 1, dates[-1].year + 2)
    national = holidays.country_holidays(country, years=years)  # no subdivision: national holidays only
    regional = (
        [holidays.country_holidays(country, subdiv=r, years=years) for r in regions(country)]
        if regional_holidays
        else []
    )
    one_day = dt.timedelta(days=1)
    rows = []
    for day in dates:
        weekday = np.eye(7)[day.weekday()]
        flags = [float(day in national), float(day + one_day in national), float(day - one_day in national)]
        if day_of_year:
            # One turn per mean year: after 28 February a leap year's dates sit a 1/365 turn later.
            angle = 2 * np.pi * (day.timetuple().tm_yday - 1) / 365.25
            flags += [float(np.cos(angle)), float(np.sin(angle))]
        if regional_holidays:
            flags.append(float(np.mean([day in r and day not in national for r in regional])))
        rows.append(np.concatenate([weekday, np.asarray(flags, float)]))
    return np.asarray(rows, np.float32)


def windows(
    split: Split,
    look_back: int,
    scaler: dict[str, Any],
    country: str = "ES",
    day_of_year: bool = False,
    regional_holidays: bool = False,
) -> list[dict[str, Any]]:
    """The encoder items of one split: every day with ``look_back`` days before it in the split."""
    mean = np.asarray(scaler["mean"])
    scale = np.asarray(scaler["scale"])
    scaled = (split.load - mean) / scale
    calendar = calendar_features(split.dates, country, day_of_year, regional_holidays)
    items = []
    for i in range(look_back, len(split.dates)):
        items.append(
            {
                "calendar": calendar[i - look_back : i + 1].ravel(),
                "inputs": scaled[i - look_back : i].ravel(),
                "target": scaled[i],
                "inputs_mw": split.load[i - look_back : i].ravel(),
                "target_mw": split.load[i],
                "forecast_mw": split.forecast[i],
                "target_day": split.dates[i].isoformat(),
                "weekday": split.dates[i].weekday(),
            }
        )
    return items


def encode_window(item: dict[str, Any]) -> bytes:
    """One serialized Example from a :func:`windows` item."""
    return example(
        {
            "inputs": float_feature(item["inputs"]),
            "calendar": float_feature(item["calendar"]),
            "target": float_feature(item["target"]),
            "inputs_mw": float_feature(item["inputs_mw"]),
            "target_mw": float_feature(item["target_mw"]),
            "forecast_mw": float_feature(item["forecast_mw"]),
            "target_day": bytes_feature(item["target_day"]),
            "weekday": int64_feature(item["weekday"]),
        }
    )


def build_spec(
    splits: list[Split], items: dict[str, list], shards: dict[str, list[Path]], p: TfrecordsSeriesParams
) -> dict:
    """``spec.json``: features, shapes and per-split counts and dates."""
    n_in = p.look_back * HOURS
    return {
        "dataset": "series",
        "record": "tf.train.Example",
        "compression": p.compression,
        "look_back": p.look_back,
        "hours_per_day": HOURS,
        "day": "UTC",
        "features": {
            "inputs": {"dtype": "float32", "shape": [n_in], "scaled": True},
            "target": {"dtype": "float32", "shape": [HOURS], "scaled": True},
            "inputs_mw": {"dtype": "float32", "shape": [n_in]},
            "target_mw": {"dtype": "float32", "shape": [HOURS]},
            "forecast_mw": {"dtype": "float32", "shape": [HOURS]},
            "target_day": {"dtype": "string", "shape": []},
            "weekday": {"dtype": "int64", "shape": []},
            "calendar": {
                "dtype": "float32",
                "shape": [(p.look_back + 1) * len(calendar_names(p.day_of_year, p.regional_holidays))],
            },
        },
        "calendar": {
            "features": list(calendar_names(p.day_of_year, p.regional_holidays)),
            "days": "the look_back input days, then the target day (day-major)",
            "country": p.country,
            "holidays": "national holidays of the PyPI holidays package (no regional ones), by UTC date"
            + (
                "; regional_holiday_share: regional ones, as the share of the regions keeping one"
                if p.regional_holidays
                else ""
            ),
        },
        "label_feature": "target",
        "scaler": SCALER_FILE,
        "splits": {
            s.name: split_entry(
                len(items[s.name]),
                shards[s.name],
                days=len(s.dates),
                first_day=s.dates[0].isoformat(),
                last_day=s.dates[-1].isoformat(),
                first_target_day=items[s.name][0]["target_day"],
                filled_hours=s.filled_hours,
                forecast_complete_target_days=sum(bool(np.isfinite(i["forecast_mw"]).all()) for i in items[s.name]),
                longest_gap_hours=s.longest_gap_hours,
            )
            for s in splits
        },
    }


def main() -> None:
    _, p = load_params("tfrecords_series", TfrecordsSeriesParams)

    from stages.common.outputs import atomic_outputs, write_json

    days = whole_days(*read_load(RAW_CSV))
    splits = make_splits(days, p, RAW_CSV)
    scaler = fit_scaler(splits[0])
    items = {s.name: windows(s, p.look_back, scaler, p.country, p.day_of_year, p.regional_holidays) for s in splits}
    with atomic_outputs() as out:
        out_dir = out.directory(OUT_DIR)
        # One process: a few thousand small windows encode faster than a pool starts.
        shards = {
            name: write_split(
                out_dir,
                name,
                rows,
                encode_window,
                num_shards=p.num_shards,
                compression=p.compression,
                workers=1,
                desc=f"series {name}",
            )
            for name, rows in items.items()
        }
        write_json(out_dir / SCALER_FILE, scaler)
        write_spec(out_dir / SPEC_FILE, build_spec(splits, items, shards, p))
    for s in splits:
        log.info(
            "%s: days %s..%s, %d windows, %d missing hours filled",
            s.name,
            s.dates[0],
            s.dates[-1],
            len(items[s.name]),
            s.filled_hours,
        )


if __name__ == "__main__":
    run_stage(main, "tfrecords_series")
