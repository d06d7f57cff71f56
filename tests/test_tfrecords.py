"""TFRecord writing: proto encoding, shards, integrity, and the tfrecords_fer2013 / tfrecords_series stages.

Our files are read back by TensorFlow and by the independent PyPI ``tfrecord``
reader (tests/tfrecord_reader.py, in a subprocess without TensorFlow), which
also checks every CRC with its own CRC32C.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import yaml

from conftest import copy_project, project_files, run, stage_params
from stages.common import tfrecords as T
from stages.common.cli import StageError
from stages.datasets.fer2013_csv import USAGES, read_rows
from stages.tfrecords_series import CALENDAR_FEATURES, calendar_features
from tfrecord_reader import read_independently

FACES = {"training": 60, "public_test": 20, "private_test": 20}
SERIES_DAYS = ("2015-01-01", "2015-03-31")  # 90 days: 62 / 14 / 14 with the fractions below


def encode_number(i: int) -> bytes:
    """A module-level encoder (pool workers import it by name)."""
    return T.example(
        {"number": T.int64_feature(i), "square": T.float_feature([i * 0.5, -i]), "name": T.bytes_feature(f"n{i}")}
    )


def set_params(project: Path, **sections: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        node = params.setdefault(name, {})
        for key, value in values.items():
            if isinstance(value, dict):
                node.setdefault(key, {}).update(value)
            else:
                node[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy with small FER2013 and series raw data and both stages run once."""
    files = [f for f in project_files() if f == "params.yaml" or f.startswith("stages/")]
    root = copy_project(tmp_path_factory.mktemp("tfrecords") / "project", files)
    set_params(
        root,
        fer2013={"sample": {"preset": "small", **FACES}},
        series={"synthetic": {"start": SERIES_DAYS[0], "end": SERIES_DAYS[1]}},
        tfrecords_fer2013={"num_shards": 3, "compression": "none", "workers": 2},
        tfrecords_series={
            "look_back": 5,
            "valid_fraction": 0.15,
            "test_fraction": 0.15,
            "num_shards": 2,
            "compression": "none",
        },
    )
    for stage in ("download_fer2013", "make_series", "tfrecords_fer2013", "tfrecords_series"):
        run(["python", "-m", f"stages.{stage}"], root)
    return root


# --- encoding -------------------------------------------------------------------------------


def test_protos_are_byte_identical_to_tensorflow_deterministic_serialization() -> None:
    import tensorflow as tf

    values = [0, 1, 127, 128, 300, 2**40, -1, -(2**63)]
    ours = T.example(
        {
            "z": T.int64_feature(values),
            "a": T.bytes_feature([b"\x00x", "é"]),
            "f": T.float_feature([1.5, -2.25, 1e-30]),
            "empty": T.int64_feature([]),
        }
    )
    theirs = tf.train.Example(
        features=tf.train.Features(
            feature={
                "z": tf.train.Feature(int64_list=tf.train.Int64List(value=values)),
                "a": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x00x", "é".encode()])),
                "f": tf.train.Feature(float_list=tf.train.FloatList(value=[1.5, -2.25, 1e-30])),
                "empty": tf.train.Feature(int64_list=tf.train.Int64List(value=[])),
            }
        )
    )
    assert ours == theirs.SerializeToString(deterministic=True)

    tokens = np.array([5, 0, 2, 127, 128, 40000, 2**33])
    ours = T.sequence_example(
        {"sequence_length": T.int64_feature(len(tokens)), "target": T.int64_feature(1)},
        {"token_indexes": T.int64_feature_list(tokens)},
    )
    theirs = tf.train.SequenceExample()
    theirs.context.feature["sequence_length"].int64_list.value.append(len(tokens))
    theirs.context.feature["target"].int64_list.value.append(1)
    steps = theirs.feature_lists.feature_list["token_indexes"]
    for token in tokens:  # the tutorial's way, token by token
        steps.feature.add().int64_list.value.append(int(token))
    assert ours == theirs.SerializeToString(deterministic=True)
    assert T.int64_feature_list(tokens) == T.feature_list(T.int64_feature(int(t)) for t in tokens)


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_write_split_shards_read_back_by_tensorflow_and_the_independent_reader(
    tmp_path: Path, compression: Literal["none", "gzip"]
) -> None:
    import tensorflow as tf

    paths = T.write_split(
        tmp_path, "train", list(range(1100)), encode_number, num_shards=3, compression=compression, workers=1
    )
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    assert [p.name for p in paths] == [f"train-0000{i}-of-00003{suffix}" for i in range(3)]
    assert T.shard_paths(tmp_path, "train") == paths
    assert T.verify_shards(paths) == [366, 367, 367]  # contiguous, sizes differ by at most one

    dataset = tf.data.TFRecordDataset([str(p) for p in paths], compression_type="GZIP" if compression == "gzip" else "")
    numbers = [
        tf.train.Example.FromString(r).features.feature["number"].int64_list.value[0]
        for r in dataset.as_numpy_iterator()
    ]
    assert numbers == list(range(1100))

    independent = read_independently(paths[1])
    assert all(independent["crc_ok"]) and len(independent["crc_ok"]) == 367
    first = independent["records"][0]
    assert first == {"name": ["n366"], "number": [366], "square": [183.0, -366.0]}


@pytest.mark.slow
def test_output_is_byte_identical_whatever_the_number_of_workers(tmp_path: Path) -> None:
    items = list(range(1500))  # three pool tasks of 512 items
    one = T.write_split(tmp_path / "one", "train", items, encode_number, num_shards=2, workers=1)
    two = T.write_split(tmp_path / "two", "train", items, encode_number, num_shards=2, workers=2)
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]


def test_bad_arguments_and_incomplete_shard_sets_are_stage_errors(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="compression"):
        T.write_split(tmp_path, "train", [1], encode_number, num_shards=1, compression="zip")  # type: ignore[arg-type]
    with pytest.raises(StageError, match="num_shards"):
        T.write_split(tmp_path, "train", [1], encode_number, num_shards=0)
    with pytest.raises(StageError, match="split name"):
        T.write_split(tmp_path, "Train/..", [1], encode_number, num_shards=1)
    paths = T.write_split(tmp_path, "valid", [1, 2, 3], encode_number, num_shards=3, workers=1)
    paths[1].unlink()
    with pytest.raises(StageError, match=r"incomplete: missing valid-00001-of-00003"):
        T.shard_paths(tmp_path, "valid")
    with pytest.raises(StageError, match="no TFRecord shards for split 'test'"):
        T.shard_paths(tmp_path, "test")


def test_damaged_and_truncated_files_name_the_file(tmp_path: Path) -> None:
    paths = T.write_split(tmp_path, "train", list(range(50)), encode_number, num_shards=2, workers=1)
    data = bytearray(paths[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    paths[0].write_bytes(bytes(data))
    with pytest.raises(StageError, match=rf"^{paths[0]}: corrupted file: bad (data|length) checksum"):
        T.verify_shards(paths)
    paths[1].write_bytes(paths[1].read_bytes()[:-3])
    with pytest.raises(StageError, match=rf"^{paths[1]}: truncated file"):
        T.verify_shards(paths[1:])


# --- tfrecords_fer2013 ------------------------------------------------------------------------


def csv_faces(project: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with (project / "data/raw/fer2013/fer2013.csv").open() as stream:
        chunks = [chunk for chunk, _ in read_rows(stream, "fer2013.csv")]
    return (
        np.concatenate([c.emotions for c in chunks]),
        np.concatenate([c.usages for c in chunks]),
        np.concatenate([c.pixels for c in chunks]),
    )


def test_fer2013_records_match_the_csv_read_independently(project: Path) -> None:
    labels, usages, pixels = csv_faces(project)
    out = project / "data/tfrecords/fer2013"
    spec = json.loads((out / "spec.json").read_text())
    for usage, split in (("Training", "train"), ("PublicTest", "valid"), ("PrivateTest", "test")):
        records = []
        for path in T.shard_paths(out, split):
            read = read_independently(path, png="image")
            assert all(read["crc_ok"])
            records += read["records"]
        rows = [r["row_index"][0] for r in records]
        expected_rows = np.flatnonzero(usages == USAGES.index(usage)).tolist()
        assert rows == expected_rows  # every row of the split, in CSV order
        for record in records:
            row = record["row_index"][0]
            assert record["label"] == [int(labels[row])]
            assert record["usage"] == [usage]
            assert record["height"] == record["width"] == [48]
            assert record["image"] == pixels[row].tolist()  # lossless PNG
        assert spec["splits"][split]["examples"] == len(expected_rows)
        assert sum(spec["splits"][split]["class_counts"].values()) == len(expected_rows)
        assert spec["splits"][split]["files"] == [p.name for p in T.shard_paths(out, split)]
    assert spec["image_shape"] == [48, 48, 1] and spec["class_names"][3] == "Happy"


def test_fer2013_stage_is_byte_identical_across_runs_and_workers(project: Path) -> None:
    out = project / "data/tfrecords/fer2013"
    before = file_bytes(out)
    set_params(project, tfrecords_fer2013={"workers": 1})
    try:
        run(["python", "-m", "stages.tfrecords_fer2013"], project)
    finally:
        set_params(project, tfrecords_fer2013={"workers": 2})
    assert file_bytes(out) == before


def test_fer2013_bad_params_fail_in_one_line_and_keep_outputs(project: Path) -> None:
    out = project / "data/tfrecords/fer2013"
    before = file_bytes(out)
    set_params(project, tfrecords_fer2013={"compression": "zip"})
    try:
        result = run(["python", "-m", "stages.tfrecords_fer2013"], project, check=False)
    finally:
        set_params(project, tfrecords_fer2013={"compression": "none"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "tfrecords_fer2013.compression" in result.stderr
    assert file_bytes(out) == before


# --- tfrecords_series -------------------------------------------------------------------------


def series_records(out: Path, split: str) -> list[dict]:
    return [r for path in T.shard_paths(out, split) for r in read_independently(path)["records"]]


def test_series_windows_stay_inside_their_split_and_are_scaled_with_train_statistics(project: Path) -> None:
    out = project / "data/tfrecords/series"
    spec = json.loads((out / "spec.json").read_text())
    scaler = json.loads((out / "scaler.json").read_text())
    mean, scale = np.array(scaler["mean"]), np.array(scaler["scale"])
    assert scaler["fitted_on"] == "train" and scaler["last_day"] == spec["splits"]["train"]["last_day"]
    previous_last = None
    for split in ("train", "valid", "test"):
        info = spec["splits"][split]
        first, last = dt.date.fromisoformat(info["first_day"]), dt.date.fromisoformat(info["last_day"])
        if previous_last is not None:
            assert first == previous_last + dt.timedelta(days=1)  # in time order, no overlap
        previous_last = last
        records = series_records(out, split)
        assert len(records) == info["examples"] == info["days"] - 5
        for record in records:
            day = dt.date.fromisoformat(record["target_day"][0])
            assert first + dt.timedelta(days=5) <= day <= last  # its 5 input days are in the split too
            assert record["weekday"] == [day.weekday()]
            target_mw = np.array(record["target_mw"])
            np.testing.assert_allclose(record["target"], (target_mw - mean) / scale, rtol=1e-4, atol=1e-4)
            inputs_mw = np.array(record["inputs_mw"]).reshape(5, 24)
            np.testing.assert_allclose(np.array(record["inputs"]).reshape(5, 24), (inputs_mw - mean) / scale, atol=1e-4)
        days = [r["target_day"][0] for r in records]
        assert days == sorted(days)
        for record in records[:3]:  # calendar: the 5 input days, then the target day
            day = dt.date.fromisoformat(record["target_day"][0])
            window = [day - dt.timedelta(days=5 - k) for k in range(6)]
            np.testing.assert_array_equal(np.array(record["calendar"]).reshape(6, -1), calendar_features(window, "ES"))
    assert spec["calendar"]["country"] == "ES" and spec["calendar"]["features"] == list(CALENDAR_FEATURES)
    assert spec["features"]["calendar"]["shape"] == [6 * len(CALENDAR_FEATURES)]
    train_load = np.concatenate([np.array(r["target_mw"]) for r in series_records(out, "train")])
    assert scaler["global"]["scale"] == pytest.approx(train_load.std(), rel=0.02)  # train windows miss its first 5 days


def test_series_scaler_ignores_test_values(project: Path) -> None:
    out = project / "data/tfrecords/series"
    scaler = (out / "scaler.json").read_bytes()
    test_before = [p.read_bytes() for p in T.shard_paths(out, "test")]
    load_csv = project / "data/raw/series/load.csv"
    original = load_csv.read_text()
    lines = original.splitlines()
    # Double the loads of the last 10 days (all in the test split).
    changed = lines[:-240] + [
        f"{t},{float(v) * 2 if v else ''},{f}" for t, v, f in (line.split(",") for line in lines[-240:])
    ]
    load_csv.write_text("\n".join(changed) + "\n")
    try:
        run(["python", "-m", "stages.tfrecords_series"], project)
        assert (out / "scaler.json").read_bytes() == scaler
        assert [p.read_bytes() for p in T.shard_paths(out, "test")] != test_before
    finally:
        load_csv.write_text(original)
        run(["python", "-m", "stages.tfrecords_series"], project)


def test_series_gaps_are_filled_from_their_own_split_only() -> None:
    from stages.tfrecords_series import Days, TfrecordsSeriesParams, make_splits

    n_days = 40
    load = np.repeat(np.arange(n_days, dtype=float)[:, None] * 100 + 1000, 24, axis=1)
    load[27] = np.nan  # the last train day (train 28 days, valid 6, test 6) ...
    load[28, :5] = np.nan  # ... and the first hours of valid
    days = Days([dt.date(2015, 1, 1) + dt.timedelta(days=i) for i in range(n_days)], load, load.copy())
    train, valid, test = make_splits(
        days, stage_params("tfrecords_series", TfrecordsSeriesParams, look_back=3), Path("load.csv")
    )
    assert [len(s.dates) for s in (train, valid, test)] == [28, 6, 6]
    assert np.all(train.load[27] == 3600.0)  # held at train's last known value, not pulled toward valid's
    assert np.all(valid.load[0, :5] == 3800.0)  # valid's first known value, not train's
    assert (train.filled_hours, train.longest_gap_hours, valid.filled_hours) == (24, 24, 5)
    assert not np.isnan(test.load).any()


def test_series_too_short_for_look_back_is_one_clear_error() -> None:
    from stages.tfrecords_series import Days, TfrecordsSeriesParams, make_splits

    load = np.ones((20, 24))
    days = Days([dt.date(2015, 1, 1) + dt.timedelta(days=i) for i in range(20)], load, load)
    with pytest.raises(StageError, match=r"load.csv: 20 whole days .* valid \(3 days\)"):
        make_splits(days, stage_params("tfrecords_series", TfrecordsSeriesParams, look_back=5), Path("load.csv"))


def test_series_calendar_features_of_known_dates() -> None:
    names = list(CALENDAR_FEATURES)
    days = [dt.date(2016, 1, d) for d in (5, 6, 7, 10)]  # Tue; Epiphany (Wed), a Spanish national holiday; Thu; Sun
    features = calendar_features(days, "ES")
    assert features.shape == (4, len(names)) and features.dtype == np.float32
    assert [int(np.argmax(f[:7])) for f in features] == [1, 2, 3, 6] and (features[:, :7].sum(axis=1) == 1).all()
    column = {
        name: features[:, names.index(name)].tolist() for name in ("holiday", "day_before_holiday", "day_after_holiday")
    }
    assert column == {"holiday": [0, 1, 0, 0], "day_before_holiday": [1, 0, 0, 0], "day_after_holiday": [0, 0, 1, 0]}
    assert calendar_features([dt.date(2018, 3, 30)], "ES")[0, names.index("holiday")] == 1  # Good Friday, movable


def test_series_day_of_year_and_regional_holiday_features() -> None:
    from stages.tfrecords_series import TfrecordsSeriesParams, calendar_names

    days = [dt.date(2016, 1, 1), dt.date(2016, 7, 2), dt.date(2017, 7, 2), dt.date(2018, 3, 19)]
    plain = calendar_features(days, "ES")
    extra = calendar_features(days, "ES", day_of_year=True, regional_holidays=True)
    names = calendar_names(day_of_year=True, regional_holidays=True)
    assert names[: len(CALENDAR_FEATURES)] == CALENDAR_FEATURES
    assert extra.shape == (4, len(CALENDAR_FEATURES) + 3) == (4, len(names)) and extra.dtype == np.float32
    np.testing.assert_array_equal(extra[:, : len(CALENDAR_FEATURES)], plain)  # the flags are unchanged, appended to
    year = extra[:, [names.index("year_cos"), names.index("year_sin")]]
    np.testing.assert_allclose(year[0], [1.0, 0.0], atol=1e-6)  # 1 January: angle 0
    np.testing.assert_allclose(year[1], [-1.0, 0.0], atol=0.02)  # early July: half a year on
    np.testing.assert_allclose(year[1], year[2], atol=0.02)  # the same date in a leap and a common year
    share = extra[:, names.index("regional_holiday_share")]
    n_regions = len(regions_of_spain())
    assert share[0] == 0  # New Year: national, so not a regional one
    assert 0 < share[3] < 1 and share[3] * n_regions == pytest.approx(round(share[3] * n_regions))  # San José
    assert calendar_features(days, "ES", day_of_year=True).shape == (4, len(CALENDAR_FEATURES) + 2)
    assert calendar_features([], "ES", regional_holidays=True).shape == (0, len(CALENDAR_FEATURES) + 1)
    with pytest.raises(StageError, match="regional_holidays: the holidays package knows no regions of 'IS'"):
        stage_params("tfrecords_series", TfrecordsSeriesParams, country="IS", regional_holidays=True)


def regions_of_spain() -> tuple[str, ...]:
    from stages.tfrecords_series import regions

    return regions("ES")


def test_series_country_param_changes_the_holidays() -> None:
    from stages.tfrecords_series import TfrecordsSeriesParams

    holiday = list(CALENDAR_FEATURES).index("holiday")
    days = [
        dt.date(2016, 1, 6),
        dt.date(2016, 10, 3),
        dt.date(2016, 10, 12),
    ]  # Epiphany, German Unity, Spain's National Day
    assert calendar_features(days, "ES")[:, holiday].tolist() == [1, 0, 1]
    assert calendar_features(days, "DE")[:, holiday].tolist() == [0, 1, 0]  # Epiphany is regional in Germany
    assert stage_params("tfrecords_series", TfrecordsSeriesParams, country="FR").country == "FR"
    with pytest.raises(StageError, match="'XX' is not a country the holidays package knows"):
        stage_params("tfrecords_series", TfrecordsSeriesParams, country="XX")


def test_series_operator_forecast_is_kept_as_read_not_filled() -> None:
    from stages.tfrecords_series import Days, TfrecordsSeriesParams, fit_scaler, make_splits, windows

    n_days = 40
    load = np.full((n_days, 24), 30000.0)
    forecast = load + 100.0
    forecast[37, 3:5] = np.nan  # the first test target day (test: days 34..39) has two blank hours
    days = Days([dt.date(2015, 1, 1) + dt.timedelta(days=i) for i in range(n_days)], load, forecast)
    train, valid, test = make_splits(
        days, stage_params("tfrecords_series", TfrecordsSeriesParams, look_back=3), Path("load.csv")
    )
    items = windows(test, 3, fit_scaler(train))
    incomplete = [i["target_day"] for i in items if not np.isfinite(i["forecast_mw"]).all()]
    assert incomplete == ["2015-02-07"]
    assert np.isnan(items[0]["forecast_mw"][3:5]).all() and items[0]["forecast_mw"][0] == 30100.0
