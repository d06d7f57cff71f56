"""The embedded samples' generators (stages/samples/): one entry point, the bytes of their helpers."""

from __future__ import annotations

import datetime as dt
import inspect
from pathlib import Path
from types import ModuleType

import pytest

from stages.samples import fer2013, imdb, series


@pytest.mark.parametrize("module", [imdb, fer2013, series], ids=lambda m: m.__name__)
def test_every_sample_has_write_sample_with_keyword_only_sizes(module: ModuleType) -> None:
    params = list(inspect.signature(module.write_sample).parameters.values())
    assert [p.name for p in params[:2]] == ["destination", "seed"]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:2])
    assert params[2:] and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:])
    assert inspect.signature(module.write_sample).return_annotation in (None, "None")


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_imdb_write_sample_is_the_tree_generate_writes(tmp_path: Path) -> None:
    imdb.write_sample(tmp_path / "a" / "aclImdb", 3, per_class=6, unsup=4, label_noise=0.2)
    assert imdb.generate(tmp_path / "b", 3, 6, unsup=4, label_noise=0.2) == 6 * 4 + 4
    written = tree_bytes(tmp_path / "a" / "aclImdb")
    assert len(written) == 28 and written == tree_bytes(tmp_path / "b" / "aclImdb")


def test_fer2013_write_sample_is_the_rows_iter_sample_rows_yields(tmp_path: Path) -> None:
    rows = {"Training": 20, "PublicTest": 4, "PrivateTest": 4}
    fer2013.write_sample(tmp_path / "new" / "fer2013.csv", 5, rows=rows)
    assert (tmp_path / "new" / "fer2013.csv").read_bytes() == b"".join(fer2013.iter_sample_rows(rows, 5))


def test_series_write_sample_is_the_text_entsoe_csv_returns(tmp_path: Path) -> None:
    days = dict(start=dt.date(2016, 3, 1), end=dt.date(2016, 4, 15))
    series.write_sample(tmp_path / "new" / "load.csv", 4, **days, noise_mw=200.0, missing_fraction=0.01)
    expected = series.entsoe_csv(days["start"], days["end"], 4, 200.0, 0.01).encode("utf-8")
    assert (tmp_path / "new" / "load.csv").read_bytes() == expected
