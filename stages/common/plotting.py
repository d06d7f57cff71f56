"""Matplotlib set up for headless, byte-stable PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless (CI, dvc repro over ssh)
import matplotlib.pyplot as plt

# No "Software"/date chunks: the same figure gives the same bytes on every run.
_PNG_METADATA = {"Software": None}


def save_png(figure: plt.Figure, path: Path, dpi: int = 100) -> None:
    figure.savefig(path, format="png", dpi=dpi, metadata=_PNG_METADATA, bbox_inches="tight")
    plt.close(figure)
