"""The toy data stage: the tutorials' data sets, split and seeded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from conftest import run
from stages.datasets.tabular import read_tabular


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_toy_data_sets_match_the_tutorials(workdir: Path) -> None:
    run(["python", "-m", "stages.toy_data"], workdir)
    toy = workdir / "data" / "toy"
    assert sorted(p.name for p in toy.iterdir()) == ["imbalanced.csv", "moons.csv", "regression.csv", "wine.csv"]

    moons = read_tabular(toy / "moons.csv")
    assert (len(moons.y_train), len(moons.y_test)) == (80, 20)  # tutorial 03: first 80 / last 20
    assert pd.read_csv(toy / "moons.csv")["split"].tolist() == ["train"] * 80 + ["test"] * 20

    wine = read_tabular(toy / "wine.csv")
    assert wine.x.shape == (178, 13) and set(wine.y) == {0, 1, 2}
    np.testing.assert_allclose(wine.x_train.mean(axis=0), 0, atol=1e-5)  # standardized on train only
    np.testing.assert_allclose(wine.x_train.std(axis=0), 1, atol=1e-4)

    imbalanced = read_tabular(toy / "imbalanced.csv")
    assert (imbalanced.y == 1).sum() == 50 and (imbalanced.y == 0).sum() > 400
    assert 0.05 < imbalanced.y_test.mean() < 0.15  # stratified: the test split is imbalanced too

    regression = read_tabular(toy / "regression.csv", target_dtype="float32")
    assert regression.x.shape == (100, 1) and regression.y.std() > 30


def test_toy_data_is_byte_identical_across_runs(workdir: Path) -> None:
    run(["python", "-m", "stages.toy_data"], workdir)
    first = digests(workdir / "data" / "toy")
    run(["python", "-m", "stages.toy_data"], workdir)
    assert digests(workdir / "data" / "toy") == first


def test_reader_names_the_bad_row(tmp_path: Path) -> None:
    import pytest

    from stages.common.cli import StageError

    bad = tmp_path / "bad.csv"
    bad.write_text("x0,target,split\n1.0,0,train\nabc,1,test\n")
    with pytest.raises(StageError, match=r"bad.csv: row 3: column 'x0' is not a number"):
        read_tabular(bad)
    bad.write_text("x0,target,split\n1.0,0,validation\n")
    with pytest.raises(StageError, match=r"row 2: split must be one of"):
        read_tabular(bad)
