"""Stage ``toy_data``: the small data sets of tutorials 01–03, generated with a seed.

Writes ``data/toy/{moons,wine,imbalanced,regression}.csv`` (features ``x0..``,
``target``, ``split``). Wine is standardized with training-split statistics only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator
from sklearn.datasets import load_wine, make_classification, make_moons, make_regression
from sklearn.model_selection import train_test_split

from stages.common.cli import StageError, run_stage
from stages.common.outputs import atomic_outputs
from stages.common.params import Section, load_params
from stages.datasets.tabular import write_tabular

log = logging.getLogger(__name__)
OUT_DIR = Path("data/toy")


class Moons(Section):
    n_samples: int = Field(ge=10)
    noise: float = Field(ge=0.0)
    n_train: int = Field(ge=1, description="first n_train rows train, the rest test (tutorial 03)")

    @model_validator(mode="after")
    def _leaves_a_test_split(self) -> Moons:
        if self.n_train >= self.n_samples:
            raise ValueError(f"n_train ({self.n_train}) must be smaller than n_samples ({self.n_samples})")
        return self


class Imbalanced(Section):
    n_samples: int = Field(ge=20)
    class_sep: float = Field(gt=0.0)
    flip_y: float = Field(ge=0.0, le=1.0)
    n_positives: int = Field(ge=2, description="positives kept; all negatives are kept")


class Regression(Section):
    n_samples: int = Field(ge=10)
    noise: float = Field(ge=0.0)


class ToyDataParams(Section):
    test_fraction: float = Field(gt=0.0, lt=1.0)
    moons: Moons
    imbalanced: Imbalanced
    regression: Regression


def split_labels(n: int, test_index: np.ndarray) -> np.ndarray:
    split = np.full(n, "train", dtype=object)
    split[test_index] = "test"
    return split


def moons(p: Moons, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = make_moons(n_samples=p.n_samples, noise=p.noise, random_state=seed)
    return x, y, split_labels(p.n_samples, np.arange(p.n_train, p.n_samples))


def stratified(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, stratify: bool = True) -> np.ndarray:
    index = np.arange(len(y))
    _, test_index = train_test_split(
        index, test_size=test_fraction, random_state=seed, stratify=y if stratify else None
    )
    return split_labels(len(y), np.sort(test_index))


def wine(test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_wine(return_X_y=True)  # ships with scikit-learn: no download
    split = stratified(x, y, test_fraction, seed)
    train = split == "train"
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    return (x - mean) / std, y, split


def imbalanced(p: Imbalanced, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = make_classification(
        n_samples=p.n_samples,
        n_features=2,
        n_informative=2,
        n_redundant=0,
        class_sep=p.class_sep,
        flip_y=p.flip_y,
        random_state=seed,
    )
    positives = np.flatnonzero(y == 1)
    if len(positives) < p.n_positives:
        raise StageError(
            f"params.yaml: toy_data.imbalanced.n_positives: only {len(positives)} positives were generated"
        )
    keep = np.sort(np.concatenate([np.flatnonzero(y == 0), positives[: p.n_positives]]))
    x, y = x[keep], y[keep]
    return x, y, stratified(x, y, test_fraction, seed)


def regression(p: Regression, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = make_regression(n_samples=p.n_samples, n_features=1, noise=p.noise, random_state=seed)
    return x, y, stratified(x, y, test_fraction, seed, stratify=False)


def main() -> None:
    seed, p = load_params("toy_data", ToyDataParams)
    datasets = {
        "moons": moons(p.moons, seed),
        "wine": wine(p.test_fraction, seed),
        "imbalanced": imbalanced(p.imbalanced, p.test_fraction, seed),
        "regression": regression(p.regression, p.test_fraction, seed),
    }
    with atomic_outputs() as out:
        for name, (x, y, split) in datasets.items():
            write_tabular(out.file(OUT_DIR / f"{name}.csv"), x, y, split)
            counts = {s: int((split == s).sum()) for s in ("train", "test")}
            log.info("%s: %d rows x %d features (%s)", name, len(y), x.shape[1], counts)


if __name__ == "__main__":
    run_stage(main, "toy_data")
