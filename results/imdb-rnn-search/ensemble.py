"""Validation accuracy of the mean probability of several sweep runs (each run's valid_logits.npy):

python results/imdb-rnn-search/ensemble.py RUN_DIR [RUN_DIR ...]
"""

import sys
from pathlib import Path

import numpy as np


def probabilities(folder: Path) -> np.ndarray:
    logits = np.load(folder / "valid_logits.npy").astype(np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


folders = [Path(arg) for arg in sys.argv[1:]]
labels = np.load(folders[0] / "valid_labels.npy")
assert all((np.load(f / "valid_labels.npy") == labels).all() for f in folders), "runs saw other validation reviews"
each = [probabilities(f) for f in folders]
for folder, p in zip(folders, each, strict=True):
    print(f"{folder.name}: {np.mean(p.argmax(axis=1) == labels):.4f}")
print(f"mean of {len(each)}: {np.mean(np.mean(each, axis=0).argmax(axis=1) == labels):.4f}")
