"""The CSV format of the small tabular data sets: features ``x0..xN``, ``target``, ``split``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.cli import StageError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class TabularData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def x(self) -> np.ndarray:
        return np.concatenate([self.x_train, self.x_test])

    @property
    def y(self) -> np.ndarray:
        return np.concatenate([self.y_train, self.y_test])


def write_tabular(path: Path, x: np.ndarray, y: np.ndarray, split: np.ndarray) -> None:
    """Write one data set; floats as shortest round-trip text, so bytes are stable."""
    frame = pd.DataFrame(np.asarray(x, dtype=np.float64), columns=[f"x{i}" for i in range(x.shape[1])])
    frame["target"] = y
    frame["split"] = split
    frame.to_csv(path, index=False, lineterminator="\n")


def read_tabular(path: Path, target_dtype: str = "int32") -> TabularData:
    """Read a data set written by :func:`write_tabular`; a malformed file is a StageError."""
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise StageError(f"{path}: file not found (run the toy_data stage first)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StageError(f"{path}: not a readable CSV: {str(exc).splitlines()[0]}") from None
    features = [c for c in frame.columns if c.startswith("x")]
    for column in ("target", "split"):
        if column not in frame.columns:
            raise StageError(f"{path}: missing column {column!r}")
    if not features:
        raise StageError(f"{path}: no feature columns (x0, x1, ...)")
    bad = ~frame["split"].isin(SPLITS)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # 1-based, after the header
        raise StageError(f"{path}: row {row}: split must be one of {SPLITS} (got {frame['split'].iloc[row - 2]!r})")
    numeric = frame[features + ["target"]].apply(pd.to_numeric, errors="coerce")
    if numeric.isna().any().any():
        row_index, column = next((r, c) for c in numeric.columns for r in np.flatnonzero(numeric[c].isna().to_numpy()))
        raise StageError(f"{path}: row {row_index + 2}: column {column!r} is not a number")
    is_train = (frame["split"] == "train").to_numpy()
    x = numeric[features].to_numpy(np.float32)
    y = numeric["target"].to_numpy().astype(target_dtype)
    return TabularData(x[is_train], y[is_train], x[~is_train], y[~is_train])
