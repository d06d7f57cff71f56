"""Stage make_series: the ENTSO-E parser, the synthetic export, and the stage end to end."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import run, stage_params
from stages.common.cli import StageError
from stages.make_series import hourly_grid, parse_entsoe
from stages.samples.series import entsoe_csv

HEADER = '"Time (CET)","Day-ahead Total Load Forecast [MW] - BZN|ES","Actual Total Load [MW] - BZN|ES"'
MODULE = ["python", "-m", "stages.make_series"]


def export(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def row(start: str, end: str, forecast: str, actual: str) -> str:
    return f'"{start} - {end}","{forecast}","{actual}"'


# Spring forward, 29.03.2015: 02:00-03:00 never happened (blank row kept by the
# export). Also: a missing value, a repeated row, and a missing hour (04:00).
SPRING = export(
    row("28.03.2015 22:00", "28.03.2015 23:00", "25000", "25100"),
    row("28.03.2015 23:00", "29.03.2015 00:00", "24000", "24100"),
    row("29.03.2015 00:00", "29.03.2015 01:00", "23000", ""),
    row("29.03.2015 01:00", "29.03.2015 02:00", "22000", "22100"),
    row("29.03.2015 02:00", "29.03.2015 03:00", "-", "-"),
    row("29.03.2015 03:00", "29.03.2015 04:00", "21000", "21100"),
    row("29.03.2015 03:00", "29.03.2015 04:00", "21000", "21100"),
    row("29.03.2015 05:00", "29.03.2015 06:00", "20000", "20100"),
)

# Fall back, 25.10.2015: 02:00-03:00 twice, CEST then CET.
AUTUMN = export(
    row("24.10.2015 23:00", "25.10.2015 00:00", "24000", "24100"),
    row("25.10.2015 00:00", "25.10.2015 01:00", "23000", "23100"),
    row("25.10.2015 01:00", "25.10.2015 02:00", "22000", "22100"),
    row("25.10.2015 02:00", "25.10.2015 03:00", "21000", "21100"),
    row("25.10.2015 02:00", "25.10.2015 03:00", "20000", "20100"),
    row("25.10.2015 03:00", "25.10.2015 04:00", "19000", "19100"),
)


def utc_hours(first: str, n: int) -> list[str]:
    return [f"{t:%Y-%m-%dT%H:%M:%S}Z" for t in pd.date_range(first, periods=n, freq="h")]


def test_spring_day_missing_value_duplicate_and_gap() -> None:
    parsed = parse_entsoe(SPRING, "spring.csv")
    grid, found = hourly_grid(parsed)
    # CET until 02:00 local (01:00Z), CEST after: one continuous UTC hour sequence.
    assert [f"{t:%Y-%m-%dT%H:%M:%S}Z" for t in grid.index] == utc_hours("2015-03-28 21:00", 7)
    assert grid["load_mw"].tolist()[:2] == [25100, 24100]
    assert np.isnan(grid["load_mw"].iloc[2]) and grid["forecast_mw"].iloc[2] == 23000
    assert grid.loc["2015-03-29 01:00", "load_mw"] == 21100  # 03:00 CEST
    assert grid.loc["2015-03-29 02:00"].isna().all()  # 04:00 CEST absent: a gap, left blank
    assert grid.loc["2015-03-29 03:00", "load_mw"] == 20100
    assert parsed.dst_gap_rows == 1 and parsed.dst_gap_values_dropped == 0 and parsed.bad_rows == 0
    assert found["duplicates"] == 1 and found["duplicate_hours"] == ["2015-03-29T01:00:00Z"]
    assert found["missing_hours"] == 1 and found["gap_examples"] == [{"from": "2015-03-29T02:00:00Z", "hours": 1}]


def test_autumn_day_repeated_hour_is_cest_then_cet() -> None:
    parsed = parse_entsoe(AUTUMN, "autumn.csv")
    grid, found = hourly_grid(parsed)
    assert [f"{t:%Y-%m-%dT%H:%M:%S}Z" for t in grid.index] == utc_hours("2015-10-24 21:00", 6)
    assert grid["load_mw"].tolist() == [24100, 23100, 22100, 21100, 20100, 19100]
    assert found["duplicates"] == 0 and found["missing_hours"] == 0
    assert parsed.dst_repeated_hours == 1 and parsed.dst_gap_rows == 0


def test_markers_newer_header_and_missing_spellings() -> None:
    # Newer exports: "Time (CET/CEST)", "n/e" for values not expected; markers
    # settle the repeated hour whatever the row order.
    text = export(
        row("25.10.2015 02:00 (CET)", "25.10.2015 03:00 (CET)", "20000", "20100"),
        row("25.10.2015 02:00 (CEST)", "25.10.2015 02:00 (CET)", "n/e", "21100"),
        row("25.10.2015 03:00", "25.10.2015 04:00", "19000", "N/A"),
        header=HEADER.replace("Time (CET)", "Time (CET/CEST)"),
    )
    grid, found = hourly_grid(parse_entsoe(text, "new.csv"))
    assert [f"{t:%Y-%m-%dT%H:%M:%S}Z" for t in grid.index] == utc_hours("2015-10-25 00:00", 3)
    assert grid["load_mw"].tolist()[:2] == [21100, 20100] and np.isnan(grid["load_mw"].iloc[2])
    assert np.isnan(grid["forecast_mw"].iloc[0]) and found["duplicates"] == 0


def test_forecast_column_blanks_and_dst() -> None:
    # The operator's forecast follows the same UTC hours as the load: blanks stay blank,
    # the spring row that never happened is dropped, the autumn hour is CEST then CET.
    spring = SPRING.replace('"21000","21100"', '"","21100"', 1)  # 03:00 CEST: forecast blank
    grid, _ = hourly_grid(parse_entsoe(spring, "spring.csv"))
    assert grid["forecast_mw"].tolist()[:4] == [25000, 24000, 23000, 22000]
    assert np.isnan(grid.loc["2015-03-29 01:00", "forecast_mw"]) and grid.loc["2015-03-29 01:00", "load_mw"] == 21100
    assert grid.loc["2015-03-29 03:00", "forecast_mw"] == 20000
    grid, _ = hourly_grid(parse_entsoe(AUTUMN, "autumn.csv"))
    assert grid["forecast_mw"].tolist() == [24000, 23000, 22000, 21000, 20000, 19000]


def test_export_without_a_forecast_column_gives_blank_forecasts(caplog: pytest.LogCaptureFixture) -> None:
    header = '"Time (CET)","Actual Total Load [MW] - BZN|DE-LU"'
    text = (
        "\n".join([header, *(f'"{r.split(",")[0][1:-1]}","{r.split(",")[2][1:-1]}"' for r in AUTUMN.splitlines()[1:])])
        + "\n"
    )
    with caplog.at_level("INFO"):
        grid, _ = hourly_grid(parse_entsoe(text, "de.csv"))
    assert grid["load_mw"].tolist() == [24100, 23100, 22100, 21100, 20100, 19100]
    assert grid["forecast_mw"].isna().all()
    assert "no 'Day-ahead Total Load Forecast [MW]' column" in caplog.text


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (row("32.01.2015 00:00", "32.01.2015 01:00", "1", "2"), "impossible date or time"),
        (row("yesterday", "today", "1", "2"), "unreadable time interval 'yesterday - today'"),
        (row("01.01.2015 00:00", "01.01.2015 00:15", "1", "2"), "not a one-hour interval"),
        (row("29.03.2015 06:00", "29.03.2015 07:00", "20000", "lots"), "is not a load in MW: 'lots'"),
        ('"29.03.2015 06:00 - 29.03.2015 07:00","20000"', "2 fields, the header has 3"),
    ],
)
def test_bad_row_names_file_and_line(bad: str, message: str) -> None:
    text = SPRING.replace(row("29.03.2015 05:00", "29.03.2015 06:00", "20000", "20100"), bad)
    with pytest.raises(StageError) as info:
        parse_entsoe(text, "load.csv", "fail")
    assert str(info.value).startswith("load.csv line 9: ") and message in str(info.value)
    parsed = parse_entsoe(text, "load.csv", "skip")
    assert parsed.bad_rows == 1 and parsed.bad_examples[0].startswith("line 9: ")


def test_not_an_entsoe_export() -> None:
    with pytest.raises(StageError, match="line 1: first column is 'date'"):
        parse_entsoe("date,load\n2015-01-01,1\n", "x.csv")
    with pytest.raises(StageError, match="one column starting with 'Actual Total Load"):
        parse_entsoe(export(header='"Time (CET)","Day-ahead Total Load Forecast [MW] - BZN|ES"'), "x.csv")


# ---- the synthetic export -------------------------------------------------

START, END = dt.date(2015, 1, 1), dt.date(2018, 12, 31)


@pytest.fixture(scope="module")
def sample() -> str:
    return entsoe_csv(START, END, seed=42, noise_mw=300.0, missing_fraction=0.001)


def test_synthetic_export_has_the_real_quirks(sample: str) -> None:
    lines = sample.splitlines()
    assert lines[0] == HEADER
    assert lines[1].startswith('"01.01.2015 00:00 - 01.01.2015 01:00","')
    days = (END - START).days + 1
    assert len(lines) - 1 == days * 24 + 4  # 4 springs: a blank row each; 4 autumns: 25 rows
    assert sample.count('"29.03.2015 02:00 - 29.03.2015 03:00","-","-"') == 1
    assert sample.count('"25.10.2015 02:00 - 25.10.2015 03:00"') == 2
    assert ',""' in sample  # a few missing values


def test_synthetic_series_structure(sample: str) -> None:
    parsed = parse_entsoe(sample, "sample.csv")
    grid, found = hourly_grid(parsed)
    assert len(grid) == ((END - START).days + 1) * 24 and len(grid) >= 3 * 365 * 24
    assert found["missing_hours"] == 0 and found["duplicates"] == 0 and parsed.dst_gap_rows == 4
    load = grid["load_mw"]
    assert 0 < load.isna().sum() < 0.005 * len(load)
    assert 15_000 < load.min() and load.max() < 45_000 and 25_000 < load.mean() < 32_000
    local = grid.index.tz_localize("UTC").tz_convert("Europe/Madrid")
    weekday = pd.Series(load.to_numpy(), index=local)
    workday = weekday[local.day_of_week < 5].mean()
    assert weekday[local.day_of_week == 6].mean() < weekday[local.day_of_week == 5].mean() < 0.95 * workday
    month = weekday.groupby(local.month).mean()
    spring = month[[4, 5]].mean()
    assert month[[1, 2]].mean() > 1.05 * spring and month[[7, 8]].mean() > 1.03 * spring
    hour = weekday[local.day_of_week < 5].groupby(local[local.day_of_week < 5].hour).mean()
    assert hour[4] < 0.85 * hour.mean() and hour[[19, 20, 21]].max() > 1.08 * hour.mean()
    both = load.notna() & grid["forecast_mw"].notna()
    assert (load[both] - grid["forecast_mw"][both]).abs().mean() < 0.03 * load.mean()


def test_synthetic_export_is_deterministic(sample: str) -> None:
    short = dict(noise_mw=300.0, missing_fraction=0.01)
    first = entsoe_csv(dt.date(2016, 1, 1), dt.date(2016, 3, 1), seed=7, **short)
    assert first == entsoe_csv(dt.date(2016, 1, 1), dt.date(2016, 3, 1), seed=7, **short)
    assert first != entsoe_csv(dt.date(2016, 1, 1), dt.date(2016, 3, 1), seed=8, **short)


# ---- the stage ------------------------------------------------------------


def set_series(workdir: Path, section: dict) -> None:
    params_file = workdir / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    base = params["series"]  # params.yaml holds every default: the keys not given keep its values
    params["series"] = {**base, **{k: {**base[k], **v} if isinstance(v, dict) else v for k, v in section.items()}}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def test_stage_defaults_round_trip_and_determinism(workdir: Path) -> None:
    set_series(workdir, {"source": "synthetic"})
    run(MODULE, workdir)
    out = workdir / "data/raw/series"
    first = {p.name: p.read_bytes() for p in (out / "load.csv", workdir / "metrics/data_series.json")}
    series = pd.read_csv(out / "load.csv")
    assert list(series.columns) == ["timestamp_utc", "load_mw", "forecast_mw"]
    assert len(series) == 1461 * 24 and series["timestamp_utc"].iloc[0] == "2014-12-31T23:00:00Z"
    hours = pd.to_datetime(series["timestamp_utc"])
    assert (hours.diff().dropna() == pd.Timedelta(hours=1)).all()
    report = json.loads((workdir / "metrics/data_series.json").read_text())
    assert report["hours"] == 1461 * 24 and report["days"] == 1461 and report["dst_gaps"] == 4
    assert report["missing_load_values"] == series["load_mw"].isna().sum() > 0
    assert report["source_location"] == "data/raw/series/entsoe_total_load.csv"
    run(MODULE, workdir)
    assert first == {p.name: p.read_bytes() for p in (out / "load.csv", workdir / "metrics/data_series.json")}


def test_stage_path_source_fail_and_skip(workdir: Path) -> None:
    bad = SPRING.replace('"20000","20100"', '"20000","lots"')
    (workdir / "export.csv").write_text(bad, encoding="utf-8")
    set_series(workdir, {"source": "path", "path": "export.csv", "min_days": 0, "on_bad_row": "fail"})
    result = run(MODULE, workdir, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: export.csv line 9: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (workdir / "data").exists() and not (workdir / "metrics").exists()

    set_series(workdir, {"source": "path", "path": "export.csv", "min_days": 0, "on_bad_row": "skip"})
    run(MODULE, workdir)
    report = json.loads((workdir / "metrics/data_series.json").read_text())
    assert report["source"] == "path" and report["bad_rows"] == 1 and report["bad_row_examples"][0].startswith("line 9")
    assert report["hours"] == 5 and report["duplicates"] == 1 and report["missing_hours"] == 0
    assert sorted(p.name for p in (workdir / "data/raw/series").iterdir()) == ["load.csv"]
    assert (workdir / "data/raw/series/load.csv").read_text().splitlines()[4] == "2015-03-29T00:00:00Z,22100,22000"


def test_stage_params_errors(workdir: Path) -> None:
    set_series(workdir, {"source": "path"})
    result = run(MODULE, workdir, check=False)
    assert result.returncode == 2 and "series: path: must name an ENTSO-E CSV export" in result.stderr
    set_series(workdir, {"source": "path", "path": "nowhere.csv"})
    result = run(MODULE, workdir, check=False)
    assert result.returncode == 2 and "series.path: cannot read nowhere.csv" in result.stderr


# ---- source: url, through the shared downloader, against a real HTTP server on 127.0.0.1 ----


def served_export(http_server) -> tuple[bytes, str]:
    """Two months of the synthetic export, served as the tutorial's file name; its bytes and URL."""
    data = entsoe_csv(dt.date(2016, 3, 1), dt.date(2016, 4, 30), 3, 300.0, 0.001).encode("utf-8")
    http_server.files["datasets/spain_hourly_entsoe.csv"] = data
    return data, http_server.url("datasets/spain_hourly_entsoe.csv")


def test_stage_url_source_downloads_caches_and_parses_like_path(workdir: Path, http_server) -> None:
    data, url = served_export(http_server)
    sha = hashlib.sha256(data).hexdigest()
    set_series(workdir, {"source": "url", "url": url, "sha256": sha, "size": len(data)})
    run(MODULE, workdir)
    kept = workdir / "data/downloads/series/spain_hourly_entsoe.csv"
    assert kept.read_bytes() == data
    from_url = (workdir / "data/raw/series/load.csv").read_bytes()
    report = json.loads((workdir / "metrics/data_series.json").read_text())
    assert (report["source"], report["source_location"], report["source_sha256"]) == ("url", url, sha)

    run(MODULE, workdir)  # the kept file matches: no second request
    assert [r for r in http_server.requests if r[0] == "datasets/spain_hourly_entsoe.csv"] == [
        ("datasets/spain_hourly_entsoe.csv", None)
    ]

    set_series(workdir, {"source": "path", "path": str(kept)})
    run(MODULE, workdir)
    assert (workdir / "data/raw/series/load.csv").read_bytes() == from_url
    from_path = json.loads((workdir / "metrics/data_series.json").read_text())
    same = {k: v for k, v in report.items() if k not in ("source", "source_location")}
    assert same == {k: v for k, v in from_path.items() if k not in ("source", "source_location")}


def test_stage_url_checksum_mismatch_is_one_line_and_keeps_outputs(workdir: Path, http_server) -> None:
    data, url = served_export(http_server)
    set_series(workdir, {"source": "synthetic", "synthetic": {"start": "2015-01-01", "end": "2015-02-28"}})
    run(MODULE, workdir)
    before = {p: p.read_bytes() for p in sorted((workdir / "data/raw").rglob("*")) if p.is_file()}
    wrong = hashlib.sha256(b"another file").hexdigest()
    set_series(workdir, {"source": "url", "url": url, "sha256": wrong})
    result = run(MODULE, workdir, check=False)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {url}: sha256 mismatch: expected {wrong}, got {hashlib.sha256(data).hexdigest()}; "
        "the downloaded file was deleted"
    ], result.stderr
    assert before == {p: p.read_bytes() for p in sorted((workdir / "data/raw").rglob("*")) if p.is_file()}
    assert sorted(p.name for p in (workdir / "data/downloads/series").iterdir()) == ["README.txt"]


def test_stage_url_params_default_to_the_tutorial_file(workdir: Path) -> None:
    from stages.make_series import SeriesParams

    params = stage_params("series", SeriesParams, source="url")
    assert params.url.endswith("/datasets/load_forecasting/spain_hourly_entsoe.csv")
    assert params.sha256 == "fcee881be1385b57346a0e20b182140c384cb97d70a2b7649c7725f946fedb3d"
    set_series(workdir, {"source": "url", "sha256": None})
    result = run(MODULE, workdir, check=False)
    assert result.returncode == 2 and "series: sha256: required when source is 'url'" in result.stderr
