"""Streaming metric objects (updated batch by batch) for the tutorial-02 metrics.

Keras ships accuracy, AUC, MSE and R²; what it lacks is a confusion matrix for
any number of classes, from which macro precision, recall and F1 follow; and
``binary_metrics``, the two-class summary both sentiment stages report.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf


def predicted_classes(predictions: tf.Tensor) -> tf.Tensor:
    """Class ids from logits or probabilities: argmax, or a 0.5 / 0-logit cut for one column."""
    predictions = tf.convert_to_tensor(predictions)
    if predictions.shape[-1] == 1:
        return tf.cast(tf.reshape(predictions, [-1]) > 0.0, tf.int64)
    return tf.argmax(predictions, axis=-1, output_type=tf.int64)


class ConfusionMatrix(keras.metrics.Metric):
    """Counts of (true class, predicted class) pairs; rows are true classes."""

    def __init__(self, num_classes: int, name: str = "confusion_matrix", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.counts = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", dtype="int64", name="counts"
        )

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int64)
        batch = tf.math.confusion_matrix(
            labels, predicted_classes(y_pred), num_classes=self.num_classes, dtype=tf.int64
        )
        self.counts.assign_add(batch)

    def result(self):
        return self.counts.value

    def reset_state(self) -> None:
        self.counts.assign(tf.zeros_like(self.counts.value))


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    # 0/0 counts as 0, as scikit-learn's zero_division=0 does.
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64), where=denominator > 0)


def classification_report(confusion: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class and macro precision/recall/F1 from a confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(confusion)
    precision = _safe_divide(true_positives, confusion.sum(axis=0))
    recall = _safe_divide(true_positives, confusion.sum(axis=1))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    total = confusion.sum()
    return {
        "accuracy": float(true_positives.sum() / total) if total else 0.0,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
    }


def report(labels: Any, logits: Any, num_classes: int) -> dict[str, Any]:
    """:func:`classification_report` of a whole split's labels and logits (or probabilities)."""
    confusion = ConfusionMatrix(num_classes)
    confusion.update_state(labels, logits)
    return classification_report(confusion.result().numpy())


def roc_points(auc: keras.metrics.AUC) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold) per threshold of a ROC ``AUC``."""
    tp = np.asarray(auc.true_positives.numpy(), dtype=np.float64)
    fp = np.asarray(auc.false_positives.numpy(), dtype=np.float64)
    fn = np.asarray(auc.false_negatives.numpy(), dtype=np.float64)
    tn = np.asarray(auc.true_negatives.numpy(), dtype=np.float64)
    tpr = _safe_divide(tp, tp + fn)
    fpr = _safe_divide(fp, fp + tn)
    return fpr, tpr, np.asarray(auc.thresholds, dtype=np.float64)


def binary_metrics(labels: Any, logits: Any, positive: int = 1) -> tuple[dict[str, float], np.ndarray]:
    """A two-class split's accuracy, ROC-AUC and the positive class's precision / recall / F1, from its
    labels and logits (b, 2); also the ROC points (k, 3): false and true positive rate, threshold."""
    probabilities = tf.nn.softmax(logits).numpy()[:, positive]
    scores = report(labels, logits, 2)
    auc = keras.metrics.AUC(num_thresholds=2001, curve="ROC")
    auc.update_state(labels, probabilities)
    fpr, tpr, thresholds = roc_points(auc)
    metrics = {
        "accuracy": scores["accuracy"],
        "auc": float(auc.result()),
        "precision": scores["precision"][positive],
        "recall": scores["recall"][positive],
        "f1": scores["f1"][positive],
    }
    return metrics, np.stack([fpr, tpr, thresholds], axis=1)
