"""Stage ``train_emotion_cnn`` (tutorial 07): architecture, training, resume, export, explanations, quality gate.

The stage itself runs once at its default params on the default FER2013 sample
(the session fixture ``emotion_cnn_project`` in conftest.py); the other tests
use its TFRecords and trained weights, or tiny widths.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from conftest import copy_project, project_files, run, stage_params
from stages.models.emotion_cnn import build_emotion_cnn, integrated_gradients, to_pixels
from stages.train_emotion_cnn import (
    EXPORT_NAME,
    TrainEmotionCnnParams,
    WeightedCrossEntropy,
    class_weights,
    first_of_each_class,
)

TINY: dict[str, Any] = dict(block_filters=[[4, 4], [4, 8], [8, 8], [8, 16]], head_filters=[16, 16, 16])


def network(p: TrainEmotionCnnParams):
    """The network the stage builds for these params (stages/models/emotion_cnn.py)."""
    return build_emotion_cnn(p.block_filters, p.dropout, p.head_filters)


def conv(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out + c_out  # kernel + bias


def bn(c: int) -> int:
    return 4 * c  # gamma, beta, moving mean, moving variance


def expected_params(blocks: list[list[int]], head: list[int], classes: int = 7) -> int:
    """The tutorial's layer list, counted by hand: kernels 5/5, 5/5, 3/3, 1/3 per block; head 1, 3, 1, 3."""
    (a1, b1), (a2, b2), (a3, b3), (a4, b4) = blocks
    h1, h2, h3 = head
    return (
        conv(5, 1, a1)
        + bn(a1)
        + conv(5, a1, b1)
        + bn(b1)
        + conv(5, b1, a2)
        + bn(a2)
        + conv(5, a2, b2)
        + bn(b2)
        + conv(3, b2, a3)
        + bn(a3)
        + conv(3, a3, b3)
        + bn(b3)
        + conv(1, b3, a4)
        + bn(a4)
        + conv(3, a4, b4)
        + bn(b4)
        + conv(1, b4, h1)
        + bn(h1)
        + conv(3, h1, h2)
        + conv(1, h2, h3)
        + bn(h3)
        + conv(3, h3, classes)
    )


def test_output_shape_and_parameter_count_match_the_tutorial() -> None:
    model = network(stage_params("train_emotion_cnn", TrainEmotionCnnParams))
    assert model.output_shape == (None, 7)
    assert model(np.zeros((3, 48, 48, 1), np.float32), training=False).shape == (3, 7)
    assert expected_params([[16, 16], [32, 32], [64, 64], [64, 128]], [256, 128, 256]) == 559_671
    assert model.count_params() == 559_671
    tiny = network(stage_params("train_emotion_cnn", TrainEmotionCnnParams, **TINY))
    assert tiny.count_params() == expected_params(TINY["block_filters"], TINY["head_filters"])
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [layer.strides for layer in convs] == [(1, 1), (2, 2)] * 4 + [(1, 1), (2, 2), (1, 1), (2, 2)]


def test_batch_norm_and_dropout_follow_the_training_flag() -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = network(stage_params("train_emotion_cnn", TrainEmotionCnnParams, **TINY))
    x = np.random.default_rng(0).uniform(size=(4, 48, 48, 1)).astype(np.float32)
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
    assert not np.allclose(model(x, training=True), model(x, training=True))  # dropout draws anew
    moving_mean = model.get_layer("block1_bn").moving_mean.numpy().copy()
    model(x, training=False)
    np.testing.assert_array_equal(model.get_layer("block1_bn").moving_mean.numpy(), moving_mean)
    model(x, training=True)
    assert not np.array_equal(model.get_layer("block1_bn").moving_mean.numpy(), moving_mean)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"dropout": [0.4, 0.3]}, "train_emotion_cnn: dropout: must be 4 rates in [0, 1) (got [0.4, 0.3])"),
        ({"block_filters": [[16, 16], [32, 32], [64, 64]]}, "train_emotion_cnn: block_filters: must be 4 pairs"),
        ({"class_weight": "auto"}, "train_emotion_cnn.class_weight:"),
        ({"architecture": "resnet"}, "train_emotion_cnn.architecture:"),
        ({"vgg_widths": []}, "train_emotion_cnn: vgg_widths: must be 1 to 5 positive widths (got [])"),
        ({"warmup_epochs": 30}, "train_emotion_cnn: warmup_epochs: must be less than max_epochs (30 >= 30)"),
        ({"tta": "ten_crop"}, "train_emotion_cnn.tta:"),
        ({"label_smoothing": 1.5}, "train_emotion_cnn.label_smoothing:"),
    ],
)
def test_bad_params_stop_with_one_line(workdir: Path, bad: dict, message: str) -> None:
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["train_emotion_cnn"].update(bad)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run([sys.executable, "-m", "stages.train_emotion_cnn"], workdir, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: params.yaml: {message}")
    assert "Traceback" not in result.stderr


# --- class weights and augmentation ----------------------------------------------------------------------


def test_balanced_class_weights_and_the_weighted_loss() -> None:
    weights = class_weights([10, 1, 5], "balanced")
    absent = class_weights([4, 0, 4], "balanced")
    assert weights is not None and absent is not None
    np.testing.assert_allclose(weights, [16 / 30, 16 / 3, 16 / 15])
    np.testing.assert_allclose(absent, [8 / 12, 0.0, 8 / 12])  # absent class: 0
    assert class_weights([10, 1, 5], "none") is None
    # Balanced weights give every class the same total weight in the training split.
    np.testing.assert_allclose(weights * [10, 1, 5], [16 / 3] * 3)

    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 5.0]], np.float32)
    labels = np.array([0, 2, 1, 2])
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    per_example = -log_softmax[np.arange(4), labels]
    expected = np.mean(weights[labels] * per_example)
    assert float(WeightedCrossEntropy(weights)(labels, logits)) == pytest.approx(expected, rel=1e-5)
    assert float(WeightedCrossEntropy(None)(labels, logits)) == pytest.approx(per_example.mean(), rel=1e-5)
    # Under a strategy the Trainer remakes the loss from its config with reduction "sum": same weights.
    summed = WeightedCrossEntropy.from_config({**WeightedCrossEntropy(weights).get_config(), "reduction": "sum"})
    assert float(summed(labels, logits)) == pytest.approx(expected * len(labels), rel=1e-5)


def test_augmentation_flips_and_shifts_each_face_deterministically(emotion_cnn_project: Path) -> None:
    from stages.common.input_pipelines import image_batches
    from stages.train_emotion_cnn import augment_batches

    data, shift = emotion_cnn_project / "data/tfrecords/fer2013", 3

    def batches(seed: int, epoch: int):
        plain = image_batches(data, "train", 64, shuffle_seed=seed, epoch=epoch).take(2)
        return list(plain.as_numpy_iterator()), list(augment_batches(plain, seed, epoch, shift).as_numpy_iterator())

    plain, augmented = batches(5, 0)
    _, again = batches(5, 0)
    _, other_epoch = batches(5, 1)
    for (_x, y), (ax, ay), (bx, _) in zip(plain, augmented, again, strict=True):
        np.testing.assert_array_equal(ay, y)
        np.testing.assert_array_equal(ax, bx)  # same (seed, epoch): same augmentation
    assert not np.array_equal(augmented[0][0], other_epoch[0][0])

    # Each augmented face is its original, maybe mirrored, shifted by at most `shift` pixels.
    inner = slice(shift, 48 - shift)
    flips = shifted = 0
    for original, result in zip(plain[0][0], augmented[0][0], strict=True):
        matches = [
            (flip, dx, dy)
            for flip in (False, True)
            for dx in range(-shift, shift + 1)
            for dy in range(-shift, shift + 1)
            if np.array_equal(
                result[inner, inner],
                (original[:, ::-1] if flip else original)[shift + dy : 48 - shift + dy, shift + dx : 48 - shift + dx],
            )
        ]
        assert matches, "augmented face is not a flipped/shifted copy of its original"
        flips += matches[0][0]
        shifted += matches[0][1:] != (0, 0)
    assert 10 < flips < 54 and shifted > 32  # about half mirrored, most shifted


# --- training: a few steps, resume ------------------------------------------------------------------------


def test_a_few_steps_reduce_the_loss(emotion_cnn_project: Path) -> None:
    import keras

    from stages.common.input_pipelines import image_batches
    from stages.common.training import Trainer

    keras.utils.set_random_seed(3)
    x, y = next(iter(image_batches(emotion_cnn_project / "data/tfrecords/fer2013", "train", 64)))
    trainer = Trainer(
        network(stage_params("train_emotion_cnn", TrainEmotionCnnParams)),
        keras.optimizers.Adam(1e-3),
        WeightedCrossEntropy(None),
    )
    losses = [float(trainer.train_step(x, y)) for _ in range(15)]
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses


def test_interrupted_training_resumes_the_step_count(emotion_cnn_project: Path, tmp_path: Path) -> None:
    from stages.train_emotion_cnn import train_model

    data = emotion_cnn_project / "data/tfrecords/fer2013"
    p = stage_params(
        "train_emotion_cnn", TrainEmotionCnnParams, **TINY, max_epochs=3, patience=10, checkpoint_every_s=0.0
    )
    reference, reference_history = train_model(p, 7, data, None)
    steps_per_epoch = -(-3000 // 64)
    assert int(reference.optimizer.iterations.numpy()) == 3 * steps_per_epoch

    def interrupt(epoch: int, logs: dict) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(p, 7, data, tmp_path, on_epoch_end=interrupt)
    seen: list[int] = []
    resumed, history = train_model(p, 7, data, tmp_path, on_epoch_end=lambda epoch, logs: seen.append(epoch))
    assert seen == [2]  # only the missing epoch ran
    assert int(resumed.optimizer.iterations.numpy()) == 3 * steps_per_epoch  # the step count continued
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for a, b in zip(history, reference_history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    for a, b in zip(resumed.model.weights, reference.model.weights, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)


# --- the trained model: export, integrated gradients ---------------------------------------------------------


def trained(project: Path):
    model = network(stage_params("train_emotion_cnn", TrainEmotionCnnParams))
    model.load_weights(project / "models/emotion_cnn/model.weights.h5")
    return model


def test_exported_model_gives_the_in_memory_logits(emotion_cnn_project: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    from stages.train_emotion_cnn import collect_split

    images, labels = collect_split(emotion_cnn_project / "data/tfrecords/fer2013", "test", 64)
    expected = trained(emotion_cnn_project)(images, training=False).numpy()
    export = emotion_cnn_project / "models/emotion_cnn" / EXPORT_NAME
    served = tf.saved_model.load(str(export))
    out = served.serve(tf.constant(to_pixels(images)))
    np.testing.assert_allclose(out["logits"].numpy(), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    signature = served.signatures["serving_default"](pixels=tf.constant(to_pixels(images[:5])))
    np.testing.assert_allclose(signature["logits"].numpy(), expected[:5], atol=1e-5)

    # Plain TensorFlow in a fresh process, outside the project, without its code on the path.
    np.save(tmp_path / "pixels.npy", to_pixels(images))
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "p = m.serve(np.load('pixels.npy'))['probabilities'].numpy()\n"
        "np.save('probabilities.npy', p)\n"
        "print(','.join(n.decode() for n in m.class_names().numpy()))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(export)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "Angry,Disgust,Fear,Happy,Sad,Surprise,Neutral"
    np.testing.assert_allclose(np.load(tmp_path / "probabilities.npy"), tf.nn.softmax(expected).numpy(), atol=1e-5)


def test_integrated_gradients_of_a_linear_model_are_input_times_weight() -> None:
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(7)])
    x = np.random.default_rng(1).uniform(size=(2, 48, 48, 1)).astype(np.float32)
    attributions, targets = integrated_gradients(model, x, steps=2, targets=[4, 1])
    kernel = model.layers[-1].kernel.numpy()
    for a, image, target in zip(attributions, x, targets, strict=True):
        np.testing.assert_allclose(a.ravel(), image.ravel() * kernel[:, target], rtol=1e-5, atol=1e-7)


def test_integrated_gradients_satisfy_completeness(emotion_cnn_project: Path) -> None:
    from stages.train_emotion_cnn import collect_split

    images, labels = collect_split(emotion_cnn_project / "data/tfrecords/fer2013", "test", 64)
    faces = images[first_of_each_class(labels, 7)[:3]]
    model = trained(emotion_cnn_project)
    attributions, targets = integrated_gradients(model, faces, steps=256)
    np.testing.assert_array_equal(targets, np.argmax(model(faces, training=False), axis=1))
    rows = np.arange(len(faces))
    gap = (
        model(faces, training=False).numpy()[rows, targets]
        - model(np.zeros_like(faces), training=False).numpy()[rows, targets]
    )
    totals = attributions.reshape(len(faces), -1).sum(axis=1)
    np.testing.assert_allclose(totals, gap, rtol=0.01, atol=1e-3)
    assert (np.abs(gap) > 0.5).all()  # the check is not vacuous


# --- the stage at its default params: outputs and the quality gate ----------------------------------------------


def test_stage_learns_the_sample_clearly(emotion_cnn_project: Path) -> None:
    metrics = json.loads((emotion_cnn_project / "metrics/emotion_cnn.json").read_text())
    # Quality gate: ≈ 0.78 with the defaults; the majority class (Happy) is 0.25 of the test split.
    assert metrics["test_accuracy"] > 0.55, metrics
    assert metrics["test_majority_class_share"] == pytest.approx(0.25)
    assert metrics["test_macro_f1"] > 0.45 and metrics["valid_accuracy"] > 0.55
    assert metrics["params"] == 559_671
    assert metrics["export_max_abs_diff"] <= 1e-5
    assert metrics["ig_faces"] == 7 and metrics["ig_max_completeness_error"] < 0.05
    assert set(metrics["test_per_class"]) == {"Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"}
    assert sum(c["support"] for c in metrics["test_per_class"].values()) == metrics["test_examples"] == 400

    plots = emotion_cnn_project / "plots/train_emotion_cnn"
    history = (plots / "history.tsv").read_text().splitlines()
    assert history[0] == "epoch\tloss\taccuracy\tval_loss\tval_accuracy"
    assert len(history) == metrics["epochs"] + 1 and 1 <= metrics["best_epoch"] <= metrics["epochs"] <= 30
    best = history[metrics["best_epoch"]].split("\t")
    assert metrics["valid_loss"] == pytest.approx(float(best[3]), rel=1e-4)  # the best weights were restored
    assert metrics["valid_accuracy"] == pytest.approx(float(best[4]), abs=1e-6)
    confusion = (plots / "confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 401
    correct = sum(a == b for a, b in (line.split(",") for line in confusion[1:]))
    assert correct / 400 == pytest.approx(metrics["test_accuracy"])
    assert (plots / "integrated_gradients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (emotion_cnn_project / "models/emotion_cnn/model.weights.h5").stat().st_size > 0
    assert (emotion_cnn_project / "models/emotion_cnn" / EXPORT_NAME / "saved_model.pb").is_file()
    assert not [p for p in (emotion_cnn_project / "checkpoints/train_emotion_cnn").iterdir() if p.name != "README.txt"]


def test_stage_runs_with_balanced_weights_and_augmentation(emotion_cnn_project: Path, tmp_path: Path) -> None:
    files = [f for f in project_files() if f == "params.yaml" or f.startswith("stages/")]
    root = copy_project(tmp_path / "project", files)
    shutil.copytree(emotion_cnn_project / "data/tfrecords", root / "data/tfrecords")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train_emotion_cnn"].update(TINY, class_weight="balanced", augment=True, max_epochs=1, ig_steps=4)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run([sys.executable, "-m", "stages.train_emotion_cnn"], root)
    assert "class weights: Angry 1.04, Disgust 9.32" in result.stderr  # 3000 / (7 * 414), 3000 / (7 * 46)
    metrics = json.loads((root / "metrics/emotion_cnn.json").read_text())
    assert metrics["class_weight"] == "balanced" and metrics["augment"] is True and metrics["epochs"] == 1
