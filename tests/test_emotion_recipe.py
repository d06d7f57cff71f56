"""The FER2013 recipe's options of ``train_emotion_cnn``: the VGG-style network, SGD + Nesterov with
weight decay, warm-up, label smoothing, batch augmentation and test-time augmentation.

Tiny widths and a few hand-made batches: no TFRecords, no stage run (the bad recipe params are
checked beside the other bad params in test_emotion_cnn.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conftest import stage_params
from stages.train_emotion_cnn import (
    TrainEmotionCnnParams,
    WeightedCrossEntropy,
    augment_batches,
    build_model,
    learning_rate,
    make_optimizer,
    predict_probabilities,
    tta_views,
)

TINY_VGG: dict[str, Any] = dict(architecture="vgg", vgg_widths=[4, 8, 8, 16], vgg_dense_units=8)
RECIPE: dict[str, Any] = dict(
    TINY_VGG,
    optimizer="sgd",
    learning_rate=0.05,
    weight_decay=5e-3,
    lr_schedule="cosine",
    warmup_epochs=1,
    max_epochs=3,
    label_smoothing=0.1,
    augment=True,
    augment_rotation=10.0,
    augment_erasing=0.5,
)
SPEC = {"splits": {"train": {"examples": 128}}}  # 2 steps an epoch at batch 64


def faces(n: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, 48, 48, 1)).astype(np.float32)


def vgg_params(widths: list[int], convs: int, dense: int, classes: int = 7, side: int = 48) -> int:
    """The VGG option's layers counted by hand: 3×3 convs without bias, BN (4 per channel), dense head."""
    total, c_in = 0, 1
    for width in widths:
        for _ in range(convs):
            total += 9 * c_in * width + 4 * width
            c_in = width
        side //= 2
    return total + side * side * c_in * dense + 4 * dense + dense * classes + classes


def test_vgg_output_shape_and_parameter_count() -> None:
    model = build_model(stage_params("train_emotion_cnn", TrainEmotionCnnParams, **TINY_VGG), 7, 48)
    assert model.output_shape == (None, 7)
    assert model(faces(3), training=False).shape == (3, 7)
    assert model.count_params() == vgg_params([4, 8, 8, 16], 2, 8)
    recipe = build_model(
        stage_params("train_emotion_cnn", TrainEmotionCnnParams, architecture="vgg"), 7, 48
    )  # the default widths 16-32-64-128
    assert recipe.count_params() == vgg_params([16, 32, 64, 128], 2, 256) == 592_407
    three = build_model(
        stage_params(
            "train_emotion_cnn", TrainEmotionCnnParams, **{**TINY_VGG, "vgg_widths": [4, 8, 8]}, vgg_convs_per_stage=3
        ),
        7,
        48,
    )
    assert three.count_params() == vgg_params([4, 8, 8], 3, 8)  # 6×6 left before the head
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert len(convs) == 8 and all(c.kernel_size == (3, 3) and not c.use_bias for c in convs)
    norms = [layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]
    assert len(norms) == 9 and {n.momentum for n in norms} == {0.9}


def test_label_smoothing_spreads_the_target() -> None:
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], np.float32)
    labels = np.array([0, 2])
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    targets = np.full((2, 3), 0.1 / 3) + 0.9 * np.eye(3)[labels]
    expected = -(targets * log_softmax).sum(axis=1)
    loss = WeightedCrossEntropy(None, label_smoothing=0.1)
    assert float(loss(labels, logits)) == pytest.approx(expected.mean(), rel=1e-5)
    weighted = WeightedCrossEntropy([1.0, 1.0, 3.0], label_smoothing=0.1)
    assert float(weighted(labels, logits)) == pytest.approx((expected * [1.0, 3.0]).mean(), rel=1e-5)
    # The strategy path remakes it from its config: the smoothing survives.
    assert WeightedCrossEntropy.from_config({**loss.get_config(), "reduction": "sum"}).label_smoothing == 0.1


def test_warm_up_rises_linearly_then_the_cosine_decays_to_zero() -> None:
    schedule = learning_rate(
        stage_params("train_emotion_cnn", TrainEmotionCnnParams, **RECIPE), SPEC
    )  # 2 steps an epoch, 1 of warm-up, 3 in all
    rates = [float(schedule(step)) for step in range(7)]
    np.testing.assert_allclose(rates[:3], [0.0, 0.025, 0.05], rtol=1e-6)
    assert rates[3] < 0.05 and rates[6] == pytest.approx(0.0, abs=1e-9)
    flat = learning_rate(
        stage_params("train_emotion_cnn", TrainEmotionCnnParams, **{**RECIPE, "lr_schedule": "constant"}), SPEC
    )
    np.testing.assert_allclose([float(flat(s)) for s in (1, 2, 5)], [0.025, 0.05, 0.05], rtol=1e-6)
    assert (
        learning_rate(stage_params("train_emotion_cnn", TrainEmotionCnnParams), SPEC) == 1e-3
    )  # the tutorial's: a plain number
    sgd = make_optimizer(stage_params("train_emotion_cnn", TrainEmotionCnnParams, **RECIPE), SPEC)
    assert sgd.__class__.__name__ == "SGD" and sgd.nesterov and sgd.momentum == 0.9 and sgd.weight_decay == 5e-3


@pytest.mark.slow
def test_two_seeded_runs_of_a_few_recipe_steps_are_identical() -> None:
    import tensorflow as tf

    from stages.common.seeding import seed_everything
    from stages.common.training import Trainer

    x, y = faces(64, 1), np.random.default_rng(1).integers(0, 7, 64)
    p = stage_params("train_emotion_cnn", TrainEmotionCnnParams, **RECIPE)

    def train() -> list[np.ndarray]:
        seed_everything(11)
        trainer = Trainer(
            build_model(p, 7, 48), make_optimizer(p, SPEC), WeightedCrossEntropy(None, "sum_over_batch_size", 0.1)
        )
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
        for images, labels in augment_batches(data, 11, 0, 4, 0, True, p.augment_rotation, p.augment_erasing):
            trainer.train_step(images, labels)
        return [np.array(w) for w in trainer.model.weights]

    first, second = train(), train()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, np.array(w)) for a, w in zip(first, build_model(p, 7, 48).weights, strict=True))


def test_augmentation_keeps_shapes_and_dtype_and_repeats_from_its_seed() -> None:
    import tensorflow as tf

    x, y = faces(16, 2), np.arange(16) % 7
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    def augmented(seed: int, rotation: float = 10.0, erasing: float = 0.5) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(augment_batches(data, seed, 0, 3, 0, True, rotation, erasing).as_numpy_iterator())

    first, again, other = augmented(3), augmented(3), augmented(4)
    for (ax, ay), (bx, _), (cx, _), (ox, oy) in zip(first, again, other, data.as_numpy_iterator(), strict=True):
        assert ax.shape == ox.shape and ax.dtype == np.float32
        np.testing.assert_array_equal(ay, oy)  # labels untouched
        np.testing.assert_array_equal(ax, bx)  # same seed: same images
        assert not np.array_equal(ax, cx)
        assert 0.0 <= ax.min() and ax.max() <= 1.0
    # No rotation, no erasing, no flip: only the whole-pixel shifts of before (edges repeated).
    plain = list(augment_batches(data, 3, 0, 0, 0, False, 0.0, 0.0).as_numpy_iterator())
    np.testing.assert_array_equal(plain[0][0], x[:8])
    # Erasing every face replaces one rectangle of each (2-25 % of it) and leaves the rest.
    erased = list(augment_batches(data, 3, 0, 0, 0, False, 0.0, 1.0).as_numpy_iterator())[0][0]
    changed = (erased != x[:8]).reshape(8, -1).mean(axis=1)
    assert ((changed > 0.01) & (changed <= 0.25)).all(), changed


def test_flip_tta_equals_the_plain_prediction_on_a_flip_symmetric_face() -> None:
    import keras

    keras.utils.set_random_seed(5)
    model = build_model(stage_params("train_emotion_cnn", TrainEmotionCnnParams, **TINY_VGG), 7, 48)
    half = faces(4, 3)[:, :, :24]
    symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)  # each row reads the same both ways

    def predict(images):
        return model(images, training=False)

    plain = keras.ops.softmax(predict(symmetric)).numpy()
    # Same batches (4 faces) for both: a batch's size may pick another kernel, hence other last bits.
    np.testing.assert_array_equal(predict_probabilities(predict, symmetric, 4, "flip"), plain)
    np.testing.assert_allclose(predict_probabilities(predict, symmetric, 3, "flip"), plain, rtol=1e-6)
    # An asymmetric face: flip TTA averages two different views.
    other = faces(2, 4)
    single = keras.ops.softmax(predict(other)).numpy()
    expected = (single + keras.ops.softmax(predict(other[:, :, ::-1])).numpy()) / 2
    np.testing.assert_allclose(predict_probabilities(predict, other, 2, "flip"), expected, rtol=1e-6)
    assert not np.allclose(expected, single, rtol=1e-6, atol=0)
    views = tta_views(other, "flip_crops", 2)
    assert len(views) == 10 and all(tuple(v.shape) == other.shape for v in views)
    np.testing.assert_array_equal(views[2].numpy()[:, 2:, 2:], other[:, :-2, :-2])  # a corner crop: a 2 px shift
