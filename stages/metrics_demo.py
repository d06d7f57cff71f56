"""Stage ``metrics_demo@<problem>`` (tutorial 02): streaming metrics for three problems.

- ``multiclass``: wine, 3 classes -> accuracy, macro/per-class precision, recall, F1, confusion matrix;
- ``imbalanced``: ~10:1 binary data -> the same plus ROC-AUC and the ROC curve;
- ``regression``: one noisy feature -> R² and MSE, predicted vs actual.

The network is tutorial 01's, widened to ``Dense(20) -> Dense(10)``. Metrics are
Keras metric objects updated batch by batch on the held-out test split.
Usage: ``python -m stages.metrics_demo {multiclass,imbalanced,regression}``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import Field

from stages.common.cli import StageError, run_stage
from stages.common.params import TrainingSection, load_params

log = logging.getLogger(__name__)

# problem -> (data file, number of classes; 0 means regression)
PROBLEMS = {
    "multiclass": ("wine", 3),
    "imbalanced": ("imbalanced", 2),
    "regression": ("regression", 0),
}
ROC_THRESHOLDS = 2001  # ROC-AUC is summed over thresholds; this many keeps it within ~1e-3 of exact
CHECKPOINTS = Path("checkpoints")


class ProblemParams(TrainingSection):
    hidden_units: list[int] = Field(min_length=1)
    learning_rate: float = Field(gt=0.0)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)


def classification_metrics(trainer, x, y, num_classes: int, batch_size: int) -> tuple[dict, dict]:
    """Streaming confusion matrix (and ROC for two classes) over test batches."""
    import keras
    import numpy as np
    import tensorflow as tf

    from stages.common.streaming_metrics import ConfusionMatrix, classification_report, roc_points

    confusion = ConfusionMatrix(num_classes)
    auc = keras.metrics.AUC(num_thresholds=ROC_THRESHOLDS, curve="ROC", summation_method="interpolation")
    predicted = []
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = trainer.predict_step(xb)
        confusion.update_state(yb, logits)
        if num_classes == 2:
            auc.update_state(yb, tf.nn.softmax(logits)[:, 1])
        predicted.append(np.argmax(logits.numpy(), axis=1))
    report = classification_report(confusion.result().numpy())
    metrics = {f"test_{k}": report[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")}
    metrics["test_per_class"] = {
        str(c): {k: report[k][c] for k in ("precision", "recall", "f1")} for c in range(num_classes)
    }
    plots: dict[str, Any] = {"predicted": np.concatenate(predicted)}
    if num_classes == 2:
        metrics["test_roc_auc"] = float(auc.result())
        plots["roc"] = roc_points(auc)
    return metrics, plots


def regression_metrics(trainer, x, y, batch_size: int) -> tuple[dict, dict]:
    import keras
    import numpy as np

    r2, mse, mae = keras.metrics.R2Score(), keras.metrics.MeanSquaredError(), keras.metrics.MeanAbsoluteError()
    predicted = []
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size, None]
        values = trainer.predict_step(xb)
        for metric in (r2, mse, mae):
            metric.update_state(yb, values)
        predicted.append(values.numpy()[:, 0])
    metrics = {"test_r2": float(r2.result()), "test_mse": float(mse.result()), "test_mae": float(mae.result())}
    return metrics, {"predicted": np.concatenate(predicted)}


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in PROBLEMS:
        raise StageError(f"usage: python -m stages.metrics_demo {{{','.join(PROBLEMS)}}}")
    problem = sys.argv[1]
    dataset, num_classes = PROBLEMS[problem]
    seed, p = load_params(f"metrics_demo.{problem}", ProblemParams)

    import keras

    from stages.common.checkpoints import checkpoint_dir, clear_checkpoints
    from stages.common.outputs import atomic_outputs, write_csv, write_history, write_json, write_tsv
    from stages.common.seeding import seed_everything
    from stages.common.training import Trainer, array_batches
    from stages.datasets.tabular import read_tabular
    from stages.models.dense_net import build_dense_net

    seed_everything(seed)
    regression = num_classes == 0
    data = read_tabular(Path(f"data/toy/{dataset}.csv"), target_dtype="float32" if regression else "int32")
    if regression:
        loss, metrics, outputs = keras.losses.MeanSquaredError(), {}, 1
        y_train = data.y_train[:, None]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics, outputs, y_train = {"accuracy": keras.metrics.SparseCategoricalAccuracy}, num_classes, data.y_train

    model = build_dense_net(data.x_train.shape[1], p.hidden_units, outputs, name=f"metrics_demo_{problem}")
    trainer = Trainer(model, keras.optimizers.SGD(learning_rate=p.learning_rate), loss, metrics, p.run_eagerly)
    stage = f"metrics_demo_{problem}"
    ckpt = checkpoint_dir(CHECKPOINTS, stage, p, seed)
    history = trainer.fit(
        array_batches(data.x_train, y_train, p.batch_size, seed=seed),
        p.epochs,
        checkpoint_dir=ckpt,
        checkpoint_every_s=p.checkpoint_every_s,
        desc=stage,
    )

    if regression:
        results, plots = regression_metrics(trainer, data.x_test, data.y_test, p.batch_size)
    else:
        results, plots = classification_metrics(trainer, data.x_test, data.y_test, num_classes, p.batch_size)
    results = {"train_loss": history[-1]["loss"], "test_examples": len(data.y_test), **results}
    log.info("%s", {k: v for k, v in results.items() if not isinstance(v, list)})

    plot_dir = Path("plots") / stage
    with atomic_outputs() as out:
        write_json(out.file(Path("metrics") / f"{stage}.json"), results)
        write_history(out.file(plot_dir / "history.tsv"), history)
        pairs = zip(data.y_test.tolist(), plots["predicted"].tolist(), strict=True)
        if regression:
            write_tsv(out.file(plot_dir / "predictions.tsv"), ["actual", "predicted"], pairs)
        else:
            write_csv(out.file(plot_dir / "confusion.csv"), ["actual", "predicted"], pairs)
        if "roc" in plots:
            fpr, tpr, thresholds = plots["roc"]
            write_tsv(
                out.file(plot_dir / "roc.tsv"), ["fpr", "tpr", "threshold"], zip(fpr, tpr, thresholds, strict=True)
            )
        model.save_weights(out.directory(Path("models") / stage) / "model.weights.h5")
    clear_checkpoints(ckpt)


if __name__ == "__main__":
    run_stage(main, "metrics_demo")
