"""Streaming metrics agree with scikit-learn on the same predictions."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as skm

from stages.common.streaming_metrics import ConfusionMatrix, classification_report, report, roc_points


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_confusion_matrix_and_macro_scores_match_sklearn(num_classes: int) -> None:
    rng = np.random.default_rng(num_classes)
    y = rng.integers(0, num_classes, size=203)
    logits = rng.normal(size=(203, num_classes)) + 1.5 * np.eye(num_classes)[y]  # better than chance
    if num_classes == 5:
        logits[:, 4] = -10.0  # class 4 never predicted: precision 0/0 must count as 0
    metric = ConfusionMatrix(num_classes)
    for part in batches(len(y), 32):  # streaming: batch by batch
        metric.update_state(tf.constant(y[part]), tf.constant(logits[part], tf.float32))
    predicted = logits.argmax(axis=1)
    labels = list(range(num_classes))
    confusion = metric.result().numpy()
    np.testing.assert_array_equal(confusion, skm.confusion_matrix(y, predicted, labels=labels))

    report = classification_report(confusion)
    kwargs = {"labels": labels, "zero_division": 0}
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert report["macro_precision"] == pytest.approx(skm.precision_score(y, predicted, average="macro", **kwargs))
    assert report["macro_recall"] == pytest.approx(skm.recall_score(y, predicted, average="macro", **kwargs))
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y, predicted, average="macro", **kwargs))
    np.testing.assert_allclose(report["precision"], skm.precision_score(y, predicted, average=None, **kwargs))
    np.testing.assert_allclose(report["recall"], skm.recall_score(y, predicted, average=None, **kwargs))
    np.testing.assert_allclose(report["f1"], skm.f1_score(y, predicted, average=None, **kwargs))

    metric.reset_state()
    assert metric.result().numpy().sum() == 0


def test_report_of_a_whole_split_matches_sklearn() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, size=300)
    logits = rng.normal(size=(300, 4)).astype(np.float32)
    logits[np.arange(300), labels] += 1.0  # better than chance, not perfect
    predicted = logits.argmax(axis=1)
    got = report(labels, logits, 4)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(labels, predicted, average="macro"))
    np.testing.assert_allclose(got["recall"], skm.recall_score(labels, predicted, average=None))


def test_roc_auc_and_curve_match_sklearn() -> None:
    rng = np.random.default_rng(7)
    y = (rng.random(500) < 0.1).astype(int)  # imbalanced, as tutorial 02
    scores = 1 / (1 + np.exp(-(rng.normal(size=500) + 2.0 * y)))
    auc = keras.metrics.AUC(num_thresholds=2001, curve="ROC", summation_method="interpolation")
    for part in batches(len(y), 64):
        auc.update_state(y[part], scores[part])
    assert float(auc.result()) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-3)

    fpr, tpr, thresholds = roc_points(auc)
    # At every threshold the streaming counts give exactly sklearn's rates for that cut.
    for i in range(0, len(thresholds), 100):
        predicted = scores > thresholds[i]
        assert tpr[i] == pytest.approx(predicted[y == 1].mean(), abs=1e-9)
        assert fpr[i] == pytest.approx(predicted[y == 0].mean(), abs=1e-9)


def test_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(50, 30, size=(101, 1)).astype(np.float32)
    predicted = (y + rng.normal(0, 10, size=y.shape)).astype(np.float32)
    r2, mse = keras.metrics.R2Score(), keras.metrics.MeanSquaredError()
    for part in batches(len(y), 16):
        r2.update_state(y[part], predicted[part])
        mse.update_state(y[part], predicted[part])
    assert float(r2.result()) == pytest.approx(skm.r2_score(y, predicted), rel=1e-5)
    assert float(mse.result()) == pytest.approx(skm.mean_squared_error(y, predicted), rel=1e-5)
