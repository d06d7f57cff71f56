"""A synthetic Spanish national load series, written as an ENTSO-E CSV export.

``write_sample`` writes the file and the stage ``make_series`` parses it with
the same code as a real export, so the sample reproduces the export's quirks:
24 rows per local (CET/CEST) day, the spring-forward hour present with blank
values, the autumn repeated hour as two rows with the same interval (first
CEST, then CET), quoted fields, a few blank actual values.

The load is built in local time, because people live on local time:

    load = day level x hourly shape(day type) + season-shaped weather terms + noise

- day level: a base with a slow trend;
- day type: workday, Saturday, Sunday; fixed-date national holidays use the
  Sunday shape (night trough, morning ramp, evening peak differ by type);
- weather: a daily temperature = climatology + an AR(1) anomaly that lasts
  several days; heating (cold) raises mornings and evenings, cooling (heat)
  raises afternoons, which gives winter and summer peaks and spring troughs;
- noise: an hourly AR(1) term.

Persistent weather and the weekday structure are what let a model that sees
the previous days beat "tomorrow = today" and "tomorrow = same day last week".
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

LOCAL_TZ = "Europe/Madrid"  # mainland Spain, CET/CEST: the export's clock
TIME_COLUMN = "Time (CET)"
FORECAST_COLUMN = "Day-ahead Total Load Forecast [MW] - BZN|ES"
ACTUAL_COLUMN = "Actual Total Load [MW] - BZN|ES"
DST_BLANK = "-"  # the export's spring-forward row
MISSING = ""  # a missing measurement: an empty quoted field

# Fixed-date national holidays (month, day): New Year, Epiphany, Labour Day,
# Assumption, National Day, All Saints, Constitution, Immaculate Conception, Christmas.
HOLIDAYS = ((1, 1), (1, 6), (5, 1), (8, 15), (10, 12), (11, 1), (12, 6), (12, 8), (12, 25))

# Hourly shapes by local hour, relative to a workday's mean. Weekends sleep
# longer (later, flatter morning ramp) and stay lower all day.
_WORKDAY = np.array(
    [
        0.86,
        0.81,
        0.78,
        0.77,
        0.77,
        0.79,
        0.86,
        0.96,
        1.04,
        1.08,
        1.10,
        1.11,
        1.11,
        1.09,
        1.05,
        1.03,
        1.03,
        1.04,
        1.06,
        1.09,
        1.13,
        1.14,
        1.07,
        0.96,
    ]
)
_SATURDAY = np.array(
    [
        0.89,
        0.84,
        0.80,
        0.78,
        0.77,
        0.77,
        0.78,
        0.81,
        0.87,
        0.94,
        0.99,
        1.01,
        1.02,
        1.01,
        0.98,
        0.94,
        0.92,
        0.92,
        0.94,
        0.99,
        1.05,
        1.08,
        1.03,
        0.94,
    ]
)
_SUNDAY = np.array(
    [
        0.88,
        0.83,
        0.79,
        0.76,
        0.75,
        0.74,
        0.73,
        0.74,
        0.78,
        0.84,
        0.89,
        0.92,
        0.94,
        0.94,
        0.91,
        0.87,
        0.85,
        0.86,
        0.89,
        0.95,
        1.03,
        1.06,
        1.01,
        0.92,
    ]
)
# Where weather-driven load goes in the day: heating mornings and evenings,
# air conditioning in the afternoon heat. Each averages 1 over the day.
_HEATING = np.array(
    [
        0.6,
        0.5,
        0.5,
        0.5,
        0.5,
        0.6,
        0.9,
        1.3,
        1.5,
        1.3,
        1.1,
        1.0,
        0.9,
        0.9,
        0.9,
        0.9,
        1.0,
        1.2,
        1.5,
        1.7,
        1.8,
        1.7,
        1.3,
        0.9,
    ]
)
_HEATING = _HEATING / _HEATING.mean()
_COOLING = np.array(
    [
        0.5,
        0.4,
        0.35,
        0.3,
        0.3,
        0.3,
        0.35,
        0.45,
        0.6,
        0.8,
        1.0,
        1.3,
        1.6,
        1.8,
        1.9,
        1.9,
        1.8,
        1.6,
        1.4,
        1.2,
        1.1,
        1.0,
        0.9,
        0.7,
    ]
)
_COOLING = _COOLING / _COOLING.mean()

BASE_MW = 27_000.0  # workday mean load without heating or cooling
TREND_MW_PER_YEAR = 250.0
HEATING_MW_PER_DEGREE = 380.0  # below HEATING_BELOW_C
COOLING_MW_PER_DEGREE = 520.0  # above COOLING_ABOVE_C
HEATING_BELOW_C = 16.0
COOLING_ABOVE_C = 20.0
WEATHER_PERSISTENCE = 0.8  # day-to-day AR(1) coefficient of the temperature anomaly
WEATHER_SD_C = 2.5
FORECAST_ERROR = 0.015  # day-ahead forecast: relative error, like a TSO's 1-2 %


def _climate_c(day_of_year: np.ndarray) -> np.ndarray:
    """Mean daily temperature in °C: coldest mid-January, warmest mid-July."""
    return 15.5 - 9.5 * np.cos(2 * np.pi * (day_of_year - 18) / 365.25)


def _ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> np.ndarray:
    """A stationary AR(1) sequence with marginal standard deviation ``sd``."""
    shocks = rng.normal(0.0, sd * np.sqrt(1 - phi**2), n)
    out = np.empty(n)
    out[0] = rng.normal(0.0, sd)
    for i in range(1, n):
        out[i] = phi * out[i - 1] + shocks[i]
    return out


def local_hours(start: dt.date, end: dt.date) -> pd.DatetimeIndex:
    """Every real hour from local midnight of ``start`` to the end of ``end`` (tz-aware, local)."""
    first = pd.Timestamp(start).tz_localize(LOCAL_TZ)
    stop = pd.Timestamp(end + dt.timedelta(days=1)).tz_localize(LOCAL_TZ)
    utc = pd.date_range(first.tz_convert("UTC"), stop.tz_convert("UTC"), freq="h", inclusive="left")
    return utc.tz_convert(LOCAL_TZ)


def simulate_load(hours: pd.DatetimeIndex, seed: int, noise_mw: float) -> tuple[np.ndarray, np.ndarray]:
    """Actual and day-ahead forecast load in MW (float) for tz-aware local ``hours``."""
    rng = np.random.default_rng([seed, 9])  # 9: tutorial 09, so other stages' streams differ
    local_day = hours.tz_localize(None).normalize()
    days, day_index = np.unique(local_day, return_inverse=True)
    days = pd.DatetimeIndex(days)

    anomaly_c = _ar1(rng, len(days), WEATHER_PERSISTENCE, WEATHER_SD_C)
    temperature = _climate_c(days.day_of_year.to_numpy()) + anomaly_c
    heating = np.maximum(HEATING_BELOW_C - temperature, 0.0) * HEATING_MW_PER_DEGREE
    cooling = np.maximum(temperature - COOLING_ABOVE_C, 0.0) * COOLING_MW_PER_DEGREE
    years = (days - days[0]).days.to_numpy() / 365.25
    level = BASE_MW + TREND_MW_PER_YEAR * years
    # A small day-to-day level wobble (economy, events) the calendar cannot explain.
    level = level * (1 + _ar1(rng, len(days), 0.5, 0.01))

    weekday = days.day_of_week.to_numpy()
    holiday = np.array([(d.month, d.day) in HOLIDAYS for d in days])
    day_type = np.where(holiday | (weekday == 6), 2, np.where(weekday == 5, 1, 0))
    shapes = np.stack([_WORKDAY, _SATURDAY, _SUNDAY])

    hour = hours.hour.to_numpy()
    kind = day_type[day_index]
    actual = (
        level[day_index] * shapes[kind, hour]
        # weekends and holidays heat and cool less (offices and shops closed)
        + heating[day_index] * _HEATING[hour] * np.where(kind == 0, 1.0, 0.8)
        + cooling[day_index] * _COOLING[hour] * np.where(kind == 0, 1.0, 0.85)
        + _ar1(rng, len(hours), 0.7, noise_mw)
    )
    forecast = actual * (1 + _ar1(rng, len(hours), 0.6, FORECAST_ERROR))
    return actual, forecast


def _blank_some(rng: np.random.Generator, values: list[str], fraction: float) -> None:
    """Blank about ``fraction`` of the values, in short runs of 1-3 hours like real outages."""
    n_runs = int(round(fraction * len(values) / 2))
    for start in rng.choice(len(values), size=n_runs, replace=False):
        for i in range(start, min(start + int(rng.integers(1, 4)), len(values))):
            values[i] = MISSING


def _interval(start: pd.Timestamp) -> str:
    end = start + pd.Timedelta(hours=1)  # wall clock: "23:00 - 00:00" rolls to the next day
    return f"{start:%d.%m.%Y %H:%M} - {end:%d.%m.%Y %H:%M}"


def entsoe_csv(start: dt.date, end: dt.date, seed: int, noise_mw: float, missing_fraction: float) -> str:
    """The synthetic series as the text of an ENTSO-E "Total Load - Day Ahead / Actual" export."""
    hours = local_hours(start, end)
    actual, forecast = simulate_load(hours, seed, noise_mw)
    rng = np.random.default_rng([seed, 9, 1])
    actual_cells = [str(int(round(v))) for v in actual]
    forecast_cells = [str(int(round(v))) for v in forecast]
    _blank_some(rng, actual_cells, missing_fraction)
    _blank_some(rng, forecast_cells, missing_fraction / 4)  # forecasts are rarely missing

    wall = hours.tz_localize(None)
    lines = [f'"{TIME_COLUMN}","{FORECAST_COLUMN}","{ACTUAL_COLUMN}"']
    for i, start_wall in enumerate(wall):
        if i and start_wall - wall[i - 1] == pd.Timedelta(hours=2):
            # Spring forward: the export keeps the 02:00-03:00 row that never happened, blank.
            lines.append(f'"{_interval(start_wall - pd.Timedelta(hours=1))}","{DST_BLANK}","{DST_BLANK}"')
        # Fall back: the repeated hour is two rows with the same interval, CEST first.
        lines.append(f'"{_interval(start_wall)}","{forecast_cells[i]}","{actual_cells[i]}"')
    return "\n".join(lines) + "\n"


def write_sample(
    destination: Path, seed: int, *, start: dt.date, end: dt.date, noise_mw: float, missing_fraction: float
) -> None:
    """Write the synthetic series at ``destination`` as an ENTSO-E CSV export (UTF-8, ``entsoe_csv``'s text)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(entsoe_csv(start, end, seed, noise_mw, missing_fraction).encode("utf-8"))
