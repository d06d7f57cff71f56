"""Stage ``inspect_batches`` (tutorial 06): one batch of each dataset, as the training stages will see it.

Reads the TFRecords of ``tfrecords_fer2013``, ``tfrecords_imdb`` and
``tfrecords_series`` through stages/common/input_pipelines.py (shuffled with
the global seed, epoch 0) and writes to ``plots/inspect_batches/``:

- ``fer2013_batch.png``: a grid of the first image batch, each face titled
  with its emotion name;
- ``imdb_batch.json``: shapes, lengths, padding and targets of the first text batch;
- ``series_batch.json``: shapes, target days and value ranges of the first window batch.

The shards are checked first, so a damaged file stops the stage with one line
naming it, and nothing is written.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from pydantic import Field

from stages.common.cli import run_stage
from stages.common.params import Section, load_params

log = logging.getLogger(__name__)

FER_DIR = Path("data/tfrecords/fer2013")
IMDB_DIR = Path("data/tfrecords/imdb")
SERIES_DIR = Path("data/tfrecords/series")
PLOTS = Path("plots/inspect_batches")
SAMPLE_TOKENS = 20  # token ids shown per review in the text summary


class InspectBatchesParams(Section):
    split: str = Field(pattern="^(train|valid|test)$")
    image_batch_size: int = Field(ge=1, le=256)
    text_batch_size: int = Field(ge=1, le=1024)
    series_batch_size: int = Field(ge=1, le=1024)


def plot_faces(images: Any, labels: Any, class_names: list[str], path: Path) -> None:
    """A grid of faces, each titled with its emotion name."""
    from stages.common.plotting import plt, save_png

    n = len(labels)
    columns = min(8, n)
    rows = math.ceil(n / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 1.7 * rows), squeeze=False)
    for i, axis in enumerate(axes.ravel()):
        axis.axis("off")
        if i < n:
            axis.imshow(images[i, :, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_title(class_names[int(labels[i])], fontsize=9)
    figure.suptitle(f"FER2013: one batch of {n} faces")
    save_png(figure, path)


def text_summary(features: dict[str, Any], targets: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Shapes, lengths and padding of one text batch."""
    import numpy as np

    tokens = features["token_indexes"]
    lengths = features["sequence_length"]
    padded = int(tokens.size - np.count_nonzero(tokens))
    return {
        "batch_size": int(tokens.shape[0]),
        "token_indexes_shape": list(tokens.shape),
        "token_indexes_dtype": str(tokens.dtype),
        "vocab_size": spec.get("vocab_size"),
        "sequence_length": lengths.tolist(),
        "targets": targets.tolist(),
        "padding_id": 0,
        "padding_fraction": padded / tokens.size if tokens.size else 0.0,
        "first_tokens": [row[:SAMPLE_TOKENS].tolist() for row in tokens],
    }


def series_summary(features: dict[str, Any], targets: Any) -> dict[str, Any]:
    """Shapes and ranges of one batch of load windows."""
    return {
        "batch_size": int(targets.shape[0]),
        "inputs_shape": list(features["inputs"].shape),
        "target_shape": list(targets.shape),
        "target_days": [d.decode() for d in features["target_day"]],
        "weekdays": features["weekday"].tolist(),
        "inputs_scaled_range": [float(features["inputs"].min()), float(features["inputs"].max())],
        "target_mw_range": [float(features["target_mw"].min()), float(features["target_mw"].max())],
    }


def first_batch(dataset: Any, files: list[Path]) -> Any:
    """The first batch as NumPy, a damaged shard reported by name."""
    from stages.common.input_pipelines import naming_damaged_file

    with naming_damaged_file(files):
        return next(iter(dataset.as_numpy_iterator()))


def main() -> None:
    seed, p = load_params("inspect_batches", InspectBatchesParams)

    from stages.common import input_pipelines as pipelines
    from stages.common.outputs import atomic_outputs, write_json

    # Check every input before any output: a damaged shard fails here, by name.
    inputs = {
        name: pipelines.dataset_files(path, p.split)
        for name, path in (("fer2013", FER_DIR), ("imdb", IMDB_DIR), ("series", SERIES_DIR))
    }
    shuffle: dict[str, Any] = {"shuffle_seed": seed, "epoch": 0}
    images, labels = first_batch(
        pipelines.image_batches(FER_DIR, p.split, p.image_batch_size, cache=False, **shuffle), inputs["fer2013"]
    )
    text, targets = first_batch(pipelines.text_batches(IMDB_DIR, p.split, p.text_batch_size, **shuffle), inputs["imdb"])
    windows, window_targets = first_batch(
        pipelines.series_batches(SERIES_DIR, p.split, p.series_batch_size, metadata=True, cache=False, **shuffle),
        inputs["series"],
    )
    fer_spec = pipelines.read_spec(FER_DIR)
    with atomic_outputs() as out:
        plot_faces(images, labels, fer_spec["class_names"], out.file(PLOTS / "fer2013_batch.png"))
        write_json(out.file(PLOTS / "imdb_batch.json"), text_summary(text, targets, pipelines.read_spec(IMDB_DIR)))
        write_json(out.file(PLOTS / "series_batch.json"), series_summary(windows, window_targets))
    log.info("faces %s, reviews %s, windows %s", images.shape, text["token_indexes"].shape, windows["inputs"].shape)


if __name__ == "__main__":
    run_stage(main, "inspect_batches")
