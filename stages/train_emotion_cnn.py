"""Stage ``train_emotion_cnn`` (tutorial 07): a CNN that tells seven facial expressions apart.

The network, its SavedModel export and integrated gradients are in
stages/models/emotion_cnn.py: the tutorial's four conv blocks and head (the
default; the blocks' and head's widths and the dropout rates are params), or
with ``architecture: vgg`` a VGG-style network (``vgg_*`` params).

Trained with the shared eager loop (stages/common/training.py): Adam, batch
64, early stopping on the PublicTest (``valid``) loss with the best weights
restored, resumable checkpoints. PrivateTest (``test``) is used only for the
final metrics. Optional departures from the tutorial, off by default:

- ``class_weight: balanced``: each training example's loss is weighted by
  ``n / (k * count[class])`` (counts of the training split), as scikit-learn's
  "balanced"; the validation loss that early stopping watches is weighted the
  same way, so it tracks the objective being minimised;
- ``augment: true``: random horizontal flips and shifts of up to
  ``augment_shift`` pixels, and with ``augment_rotation`` / ``augment_erasing``
  small rotations and random erasing, each one op on a whole batch, drawn from
  (seed, epoch, batch) so a resumed run sees the same images;
- ``lr_schedule: cosine``: the learning rate decays from ``learning_rate`` to 0
  along a cosine over ``max_epochs`` (Loshchilov & Hutter 2017), so the last
  epochs fine-tune instead of bouncing around a minimum; ``warmup_epochs``
  first raise it linearly from 0;
- ``optimizer: sgd`` (Nesterov momentum), ``weight_decay``, ``label_smoothing``:
  the training of the published VGG-style FER2013 recipes;
- ``tta``: ``valid_accuracy`` and the test scores average the softmax over the
  flipped (``flip``) and also shifted (``flip_crops``) views of each face; the
  single view's accuracy stays in the metrics as ``*_single_view``.

With ``distribute.strategy`` other than ``none`` (stages/common/distribute.py)
the same training runs on the local devices or on the workers of ``TF_CONFIG``
(``python -m stages.apps.launch_workers -n 2 -- python -m stages.train_emotion_cnn``):
each worker reads its part of the TFRecords, batch norm is synchronized over the
replicas, and only the chief writes outputs and checkpoints.

Integrated gradients (stages/models/emotion_cnn.py) explain a fixed set of
test faces (the first test face of each class): the predicted class's logit,
zero baseline, ``ig_steps`` intervals; the metrics report how far their sums
are from the logit's rise (``ig_max_completeness_error``).

Outputs:

- ``models/emotion_cnn/model.weights.h5``: the Keras weights (byte-stable);
- ``models/emotion_cnn/saved_model/``: an exported SavedModel that needs only
  TensorFlow (``tf.saved_model.load``), no code of this project: ``serve(uint8
  pixels (batch, 48, 48, 1))`` -> ``logits``, ``probabilities``, and
  ``class_names()`` (stages/models/emotion_cnn.py says how to use it);
- ``metrics/emotion_cnn.json``: validation and test accuracy, test macro F1,
  per-class precision / recall / F1, best epoch, parameter count, ...;
- ``plots/train_emotion_cnn/``: ``history.tsv`` (per-epoch loss and accuracy),
  ``confusion.csv`` (test, class names) and ``integrated_gradients.png``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from stages.common.cli import run_stage
from stages.common.distribute import is_chief, load_distribute, make_strategy, strategy_is_chief
from stages.common.params import TrainingSection, load_params
from stages.models.emotion_cnn import HEAD_KERNELS, KERNELS

log = logging.getLogger(__name__)

STAGE = "train_emotion_cnn"
DATA_DIR = Path("data/tfrecords/fer2013")
MODEL_DIR = Path("models/emotion_cnn")
EXPORT_NAME = "saved_model"
METRICS = Path("metrics/emotion_cnn.json")
PLOTS = Path("plots/train_emotion_cnn")
CHECKPOINTS = Path("checkpoints")


class TrainEmotionCnnParams(TrainingSection):
    architecture: Literal["tutorial", "vgg"] = Field(
        description="tutorial: the tutorial's network; vgg: VGG-style stages of 3×3 convs"
    )
    block_filters: list[list[int]] = Field(description="(first conv, strided conv) widths of the four blocks")
    dropout: list[float] = Field(description="dropout rate after each block")
    head_filters: list[int] = Field(description="widths of the head's 1×1, 3×3/2 and 1×1 convs")
    vgg_widths: list[int] = Field(description="vgg: width of each stage (each halves the side)")
    vgg_convs_per_stage: int = Field(ge=1, le=4, description="vgg: 3×3 conv + BN + ReLU per stage")
    vgg_dense_units: int = Field(ge=1, description="vgg: width of the dense head")
    vgg_dropout: float = Field(ge=0.0, lt=1.0, description="vgg: dropout before the logits")
    vgg_bn_momentum: float = Field(gt=0.0, lt=1.0, description="vgg: batch norm's moving-average momentum")
    optimizer: Literal["adam", "sgd"] = Field(description="adam, or sgd with (Nesterov) momentum")
    learning_rate: float = Field(gt=0.0)
    momentum: float = Field(ge=0.0, lt=1.0, description="sgd: momentum")
    nesterov: bool = Field(description="sgd: Nesterov momentum")
    weight_decay: float = Field(ge=0.0, lt=1.0, description="decoupled, per step: w -= lr * weight_decay * w")
    lr_schedule: Literal["constant", "cosine"] = Field(
        description="cosine: decay the learning rate to 0 over max_epochs (cosine curve)"
    )
    warmup_epochs: int = Field(ge=0, description="linear warm-up from 0 over this many epochs, then the schedule")
    label_smoothing: float = Field(ge=0.0, lt=1.0, description="share of each target spread over all classes")
    batch_size: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=1, description="epochs without a lower validation loss before stopping")
    class_weight: Literal["none", "balanced"]
    augment: bool
    augment_shift: int = Field(
        ge=0, le=12, description="pad (edges repeated) and random crop: largest shift in pixels, when augment is on"
    )
    augment_flip: bool = Field(description="random horizontal flips, when augment is on")
    augment_rotation: float = Field(ge=0.0, le=45.0, description="largest random rotation in degrees")
    augment_erasing: float = Field(ge=0.0, le=1.0, description="probability of erasing a random rectangle")
    tta: Literal["none", "flip", "flip_crops"] = Field(
        description="test-time augmentation of valid/test accuracy: softmax averaged over views"
    )
    tta_shift: int = Field(ge=1, le=12, description="flip_crops: the four crops' shift in pixels")
    ig_steps: int = Field(ge=1, description="integration intervals of integrated gradients")

    @model_validator(mode="after")
    def _four_blocks(self) -> TrainEmotionCnnParams:
        if len(self.block_filters) != len(KERNELS) or any(len(b) != 2 or min(b) < 1 for b in self.block_filters):
            raise ValueError(
                f"block_filters: must be {len(KERNELS)} pairs of positive widths (got {self.block_filters!r})"
            )
        if len(self.dropout) != len(KERNELS) or not all(0.0 <= r < 1.0 for r in self.dropout):
            raise ValueError(f"dropout: must be {len(KERNELS)} rates in [0, 1) (got {self.dropout!r})")
        if len(self.head_filters) != len(HEAD_KERNELS) or min(self.head_filters) < 1:
            raise ValueError(f"head_filters: must be {len(HEAD_KERNELS)} positive widths (got {self.head_filters!r})")
        # Each stage halves the side: five take 48 px down to 1 px.
        if not 1 <= len(self.vgg_widths) <= 5 or min(self.vgg_widths) < 1:
            raise ValueError(f"vgg_widths: must be 1 to 5 positive widths (got {self.vgg_widths!r})")
        if self.warmup_epochs >= self.max_epochs:
            raise ValueError(f"warmup_epochs: must be less than max_epochs ({self.warmup_epochs} >= {self.max_epochs})")
        return self


# --- class weights, loss, augmentation ------------------------------------------------------------


def class_weights(counts: Sequence[int], mode: str) -> np.ndarray | None:
    """``balanced``: ``n / (k * count)`` per class (0 for a class absent from training); ``none``: None."""
    if mode == "none":
        return None
    array = np.asarray(counts, dtype=np.float64)
    n, k = array.sum(), len(array)
    return np.divide(n, k * array, out=np.zeros(k), where=array > 0)


class WeightedCrossEntropy:
    """Softmax cross-entropy on logits, each example weighted by its class's weight (batch mean).

    ``label_smoothing`` ``s``: the target is ``1 - s`` on the true class plus ``s / k``
    on every class (Szegedy et al. 2016). Like a Keras loss, it has a ``reduction`` and
    ``get_config``/``from_config``: under a tf.distribute strategy the Trainer remakes it
    with ``reduction="sum"``.
    """

    def __init__(
        self,
        weights: Sequence[float] | np.ndarray | None,
        reduction: str = "sum_over_batch_size",
        label_smoothing: float = 0.0,
    ) -> None:
        import keras
        import tensorflow as tf

        self.reduction = reduction
        self.label_smoothing = label_smoothing
        if label_smoothing:
            # Keras' sparse loss has no smoothing: the dense one takes one-hot targets.
            self.cross_entropy = keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=label_smoothing, reduction=reduction
            )
        else:
            self.cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
        self.weights = None if weights is None else tf.constant(np.asarray(weights), tf.float32)

    def get_config(self) -> dict:
        weights = None if self.weights is None else self.weights.numpy().tolist()  # the same float32 values
        return {"weights": weights, "reduction": self.reduction, "label_smoothing": self.label_smoothing}

    @classmethod
    def from_config(cls, config: dict) -> WeightedCrossEntropy:
        return cls(**config)

    def __call__(self, labels, logits):
        import tensorflow as tf

        targets = tf.one_hot(labels, tf.shape(logits)[-1]) if self.label_smoothing else labels
        if self.weights is None:
            return self.cross_entropy(targets, logits)
        return self.cross_entropy(targets, logits, sample_weight=tf.gather(self.weights, labels))


def augment_batches(
    batches,
    seed: int,
    epoch: int,
    max_shift: int,
    stream: int = 0,
    flip: bool = True,
    rotation: float = 0.0,
    erasing: float = 0.0,
):
    """Random horizontal flips, shifts (edge pixels repeated: pad and random crop), rotations of up to
    ``rotation`` degrees and random erasing (probability ``erasing``), drawn from (seed, epoch, batch index).

    Each is one vectorised op on the whole batch (no per-image Python). Shifts and
    rotations are one projective transform: nearest-pixel for shifts alone (whole-pixel
    moves, exact), bilinear when rotating. ``stream``: the input pipeline (worker)
    drawing them, so that workers do not all draw the same.
    """
    import tensorflow as tf

    base = tf.constant([seed, epoch], tf.int64)
    if stream:
        base = tf.random.experimental.stateless_fold_in(base, stream)

    def augment(index, batch):
        images, labels = batch
        flip_seed = tf.random.experimental.stateless_fold_in(base, 2 * index)
        shift_seed = tf.random.experimental.stateless_fold_in(base, 2 * index + 1)
        if flip:
            images = tf.image.stateless_random_flip_left_right(images, flip_seed)
        n = tf.shape(images)[0]
        shifts = tf.cast(
            tf.random.stateless_uniform([n, 2], shift_seed, -max_shift, max_shift + 1, tf.int32), tf.float32
        )
        images = transform(images, shifts, rotation_angles(n, shift_seed, rotation) if rotation else None)
        if erasing:
            images = random_erasing(images, tf.random.experimental.stateless_fold_in(shift_seed, 2), erasing)
        return images, labels

    return batches.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def rotation_angles(n, seed, degrees: float):
    """``n`` angles in radians, uniform in ±``degrees``, from their own stream of ``seed``."""
    import math

    import tensorflow as tf

    rotation_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    limit = degrees * math.pi / 180.0
    return tf.random.stateless_uniform([n], rotation_seed, -limit, limit)


def transform(images, shifts, angles=None):
    """Each image shifted by its ``(dx, dy)`` and, with ``angles``, rotated about its centre; edges repeated."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    ones, zeros = tf.ones([n, 1]), tf.zeros([n, 1])
    dx, dy = shifts[:, :1], shifts[:, 1:]
    if angles is None:
        # Projective transform rows [1, 0, dx, 0, 1, dy, 0, 0]: output (x, y) reads input (x + dx, y + dy).
        transforms = tf.concat([ones, zeros, dx, zeros, ones, dy, zeros, zeros], axis=1)
        interpolation = "NEAREST"
    else:
        # Output (x, y) reads input R(angle) (x - c, y - c) + c + (dx, dy), c the centre.
        c = (tf.cast(tf.shape(images)[2], tf.float32) - 1.0) / 2.0
        cos, sin = tf.cos(angles)[:, None], tf.sin(angles)[:, None]
        transforms = tf.concat(
            [cos, -sin, c - cos * c + sin * c + dx, sin, cos, c - sin * c - cos * c + dy, zeros, zeros], axis=1
        )
        interpolation = "BILINEAR"
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="NEAREST",
    )


def random_erasing(images, seed, probability: float, area=(0.02, 0.25), aspect=(0.3, 3.3)):
    """Random erasing (Zhong et al. 2020): with ``probability``, a rectangle of ``area`` (share of the
    image) and ``aspect`` (height / width, log-uniform) per image is replaced by uniform noise."""
    import tensorflow as tf

    seeds = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(5)]
    shape = tf.shape(images)
    n, height, width = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    share = tf.random.stateless_uniform([n], seeds[0], area[0], area[1])
    ratio = tf.exp(tf.random.stateless_uniform([n], seeds[1], np.log(aspect[0]), np.log(aspect[1])))
    h = tf.minimum(tf.sqrt(share * height * width * ratio), height)
    w = tf.minimum(tf.sqrt(share * height * width / ratio), width)
    corner = tf.random.stateless_uniform([n, 2], seeds[2])  # top-left, as a share of the free room
    top, left = corner[:, 0] * (height - h), corner[:, 1] * (width - w)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + h)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + w)[:, None, None])
    )
    erased = tf.random.stateless_uniform([n], seeds[3]) < probability
    mask = (inside & erased[:, None, None])[..., None]  # (n, H, W, 1)
    noise = tf.random.stateless_uniform(shape, seeds[4], dtype=images.dtype)
    return tf.where(mask, noise, images)


# --- test-time augmentation -----------------------------------------------------------------------


def tta_views(images, mode: str, shift: int = 2) -> list:
    """The views averaged by test-time augmentation: ``none`` the images; ``flip`` and their mirror
    images; ``flip_crops`` also both shifted by ``shift`` pixels towards each corner (pad and crop,
    edges repeated): ten views, the usual ten-crop at the input size."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    views = [images]
    if mode in ("flip", "flip_crops"):
        views.append(tf.image.flip_left_right(images))
    if mode == "flip_crops":
        n = tf.shape(images)[0]
        for dx, dy in ((-shift, -shift), (-shift, shift), (shift, -shift), (shift, shift)):
            shifted = transform(images, tf.tile(tf.constant([[dx, dy]], tf.float32), [n, 1]))
            views += [shifted, tf.image.flip_left_right(shifted)]
    return views


def predict_probabilities(predict, images: np.ndarray, batch_size: int, mode: str, shift: int = 2) -> np.ndarray:
    """Softmax of ``predict`` (images -> logits) averaged over the ``tta_views``, batch by batch."""
    import tensorflow as tf

    out = []
    for i in range(0, len(images), batch_size):
        views = tta_views(images[i : i + batch_size], mode, shift)
        out.append(tf.add_n([tf.nn.softmax(predict(v)) for v in views]).numpy() / len(views))
    return np.concatenate(out)


# --- explanation: the faces and their panel ----------------------------------------------------------


def first_of_each_class(labels: np.ndarray, num_classes: int) -> list[int]:
    """Index of the first example of each class present, in class order: the fixed faces explained."""
    return [int(np.flatnonzero(labels == c)[0]) for c in range(num_classes) if (labels == c).any()]


def plot_integrated_gradients(
    images: np.ndarray,
    attributions: np.ndarray,
    true: Sequence[str],
    predicted: Sequence[str],
    confidence: Sequence[float],
    path: Path,
) -> None:
    """One column per face: the face (true vs predicted class) above its saliency |attribution|."""
    from stages.common.plotting import plt, save_png

    n = len(images)
    figure, axes = plt.subplots(2, n, figsize=(1.9 * n, 4.4), squeeze=False, layout="constrained")
    for i in range(n):
        saliency = np.abs(attributions[i, ..., 0])
        axes[0, i].imshow(images[i, ..., 0], cmap="gray", vmin=0.0, vmax=1.0)
        color = "tab:green" if true[i] == predicted[i] else "tab:red"
        axes[0, i].set_title(f"true {true[i]}\npred {predicted[i]} {confidence[i]:.0%}", fontsize=9, color=color)
        axes[1, i].imshow(saliency, cmap="inferno", vmin=0.0, vmax=max(float(saliency.max()), 1e-12))
        for ax in axes[:, i]:
            ax.set(xticks=[], yticks=[])
    axes[0, 0].set_ylabel("test face")
    axes[1, 0].set_ylabel("|integrated gradients|")
    figure.suptitle("train_emotion_cnn: integrated gradients of the predicted class (zero baseline)")
    save_png(figure, path)


# --- training and evaluation ------------------------------------------------------------------------


def split_batches(data_dir: Path, split: str, batch_size: int):
    """A split's batches, unshuffled, as a function of the worker's InputContext (None: all of them)."""
    from stages.common.input_pipelines import image_batches

    return lambda context: image_batches(data_dir, split, batch_size, input_context=context)


def train_model(
    p: TrainEmotionCnnParams,
    seed: int,
    data_dir: Path,
    checkpoints: Path | None,
    on_epoch_end=None,
    strategy=None,
):
    """Seed, build and train; return ``(trainer, history)`` with the best weights restored.

    With a ``strategy`` (stages/common/distribute.py) each worker reads its part of every
    split (``input_context``: its shards, or every n-th face when there are fewer shards than
    workers) and batch norm takes its statistics over the global batch.
    """
    import keras

    from stages.common.early_stopping import EarlyStopping
    from stages.common.input_pipelines import image_batches, read_spec
    from stages.common.replicas import distribute_input, scope
    from stages.common.seeding import seed_everything
    from stages.common.training import Trainer

    seed_everything(seed)
    spec = read_spec(data_dir)
    names = spec["class_names"]
    counts = [spec["splits"]["train"]["class_counts"].get(name, 0) for name in names]
    weights = class_weights(counts, p.class_weight)
    if weights is not None:
        log.info("class weights: %s", ", ".join(f"{n} {w:.3g}" for n, w in zip(names, weights, strict=True)))
    side = int(spec.get("image_shape", [48])[0])
    synchronized = strategy is not None and strategy.num_replicas_in_sync > 1
    loss = WeightedCrossEntropy(weights, label_smoothing=p.label_smoothing)
    with scope(strategy):  # with a strategy, its variables are made in its scope
        model = build_model(p, len(names), side, synchronized)
        optimizer = make_optimizer(p, spec)
    trainer = Trainer(
        model,
        optimizer,
        loss,
        metrics={"accuracy": keras.metrics.SparseCategoricalAccuracy},
        run_eagerly=p.run_eagerly,
        strategy=strategy,
    )

    # Each function of the InputContext gets this worker's (None without a strategy: all batches).
    def train(epoch: int):
        def batches(context):
            data = image_batches(data_dir, "train", p.batch_size, shuffle_seed=seed, epoch=epoch, input_context=context)
            if not p.augment:
                return data
            stream = context.input_pipeline_id if context else 0
            return augment_batches(
                data, seed, epoch, p.augment_shift, stream, p.augment_flip, p.augment_rotation, p.augment_erasing
            )

        return distribute_input(strategy, batches)

    def validation():
        return distribute_input(strategy, split_batches(data_dir, "valid", p.batch_size))

    history = trainer.fit(
        train=train,
        epochs=p.max_epochs,
        validation=validation,
        early_stopping=EarlyStopping(monitor="val_loss", mode="min", patience=p.patience),
        checkpoint_dir=checkpoints,
        checkpoint_every_s=p.checkpoint_every_s,
        on_epoch_end=on_epoch_end,
        desc=STAGE,
    )
    return trainer, history


def build_model(p: TrainEmotionCnnParams, num_classes: int, side: int, synchronized: bool = False):
    """The network ``architecture`` names (stages/models/emotion_cnn.py), with its params."""
    from stages.models.emotion_cnn import build_emotion_cnn, build_emotion_vgg

    if p.architecture == "vgg":
        return build_emotion_vgg(
            p.vgg_widths,
            p.vgg_convs_per_stage,
            p.vgg_dense_units,
            p.vgg_dropout,
            num_classes,
            side,
            synchronized,
            p.vgg_bn_momentum,
        )
    return build_emotion_cnn(p.block_filters, p.dropout, p.head_filters, num_classes, side, synchronized)


def make_optimizer(p: TrainEmotionCnnParams, spec: dict):
    """Adam, or SGD with (Nesterov) momentum; Keras' decoupled weight decay when ``weight_decay`` > 0."""
    import keras

    decay = p.weight_decay or None  # None: the optimizer as the tutorial's, no decay step at all
    if p.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate=learning_rate(p, spec), momentum=p.momentum, nesterov=p.nesterov, weight_decay=decay
        )
    if decay is None:
        return keras.optimizers.Adam(learning_rate=learning_rate(p, spec))
    return keras.optimizers.Adam(learning_rate=learning_rate(p, spec), weight_decay=decay)


def learning_rate(p: TrainEmotionCnnParams, spec: dict):
    """The constant ``learning_rate``, or its cosine decay to 0 over ``max_epochs``; with
    ``warmup_epochs``, first a linear rise from 0 over those epochs (then the decay over the rest).

    A schedule of the optimizer's step counter, which the checkpoint holds, so a resumed run
    continues on the same curve.
    """
    if p.lr_schedule == "constant" and not p.warmup_epochs:
        return p.learning_rate
    import keras

    steps_per_epoch = -(-int(spec["splits"]["train"]["examples"]) // p.batch_size)
    if not p.warmup_epochs:
        return keras.optimizers.schedules.CosineDecay(p.learning_rate, decay_steps=p.max_epochs * steps_per_epoch)
    # Keras' warm-up: linear from initial_learning_rate (0) to warmup_target, then the cosine down to
    # alpha * warmup_target; alpha 1 keeps a constant learning rate after the warm-up.
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=(p.max_epochs - p.warmup_epochs) * steps_per_epoch,
        alpha=1.0 if p.lr_schedule == "constant" else 0.0,
        warmup_target=p.learning_rate,
        warmup_steps=p.warmup_epochs * steps_per_epoch,
    )


def collect_split(data_dir: Path, split: str, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in file order: images float32 (n, H, W, 1) in [0, 1], labels int64 (n,)."""
    from stages.common.input_pipelines import image_batches

    images, labels = [], []
    for x, y in image_batches(data_dir, split, batch_size).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def evaluate_test(
    trainer,
    images: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    batch_size: int,
    tta: str = "none",
    tta_shift: int = 2,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Accuracy, macro and per-class scores on the test split; also the (single-view) logits and the
    predicted classes. With ``tta`` other than ``none`` the scores and predictions are those of the
    averaged views, and the single view's accuracy and macro F1 are kept as ``*_single_view``."""
    from stages.common.streaming_metrics import report as classification

    logits = trainer.predict([images[i : i + batch_size] for i in range(0, len(images), batch_size)])
    scores = logits
    single = None
    if tta != "none":
        single = classification(labels, logits, len(names))
        scores = predict_probabilities(trainer.predict_step, images, batch_size, tta, tta_shift)
    report = classification(labels, scores, len(names))
    support = np.bincount(labels, minlength=len(names))
    metrics = {
        "test_accuracy": report["accuracy"],
        "test_macro_f1": report["macro_f1"],
        "test_macro_precision": report["macro_precision"],
        "test_macro_recall": report["macro_recall"],
        "test_examples": len(labels),
        "test_majority_class_share": float(support.max() / support.sum()),
        "test_per_class": {
            name: {
                "precision": report["precision"][c],
                "recall": report["recall"][c],
                "f1": report["f1"][c],
                "support": int(support[c]),
            }
            for c, name in enumerate(names)
        },
    }
    if single is not None:
        metrics |= {
            "test_accuracy_single_view": single["accuracy"],
            "test_macro_f1_single_view": single["macro_f1"],
        }
    return metrics, logits, np.argmax(scores, axis=1)


def explain(model, images: np.ndarray, labels: np.ndarray, names: Sequence[str], steps: int, path: Path) -> dict:
    """Integrated-gradients panel of the first test face of each class; returns its completeness errors."""
    import tensorflow as tf

    from stages.models.emotion_cnn import integrated_gradients

    shown = first_of_each_class(labels, len(names))
    faces = images[shown]
    attributions, targets = integrated_gradients(model, faces, steps)
    logits = model(faces, training=False).numpy()
    at_baseline = model(np.zeros_like(faces), training=False).numpy()
    probabilities = tf.nn.softmax(logits).numpy()
    rows = np.arange(len(shown))
    gap = logits[rows, targets] - at_baseline[rows, targets]
    error = np.abs(attributions.reshape(len(shown), -1).sum(axis=1) - gap)
    plot_integrated_gradients(
        faces,
        attributions,
        [names[c] for c in labels[shown]],
        [names[c] for c in targets],
        probabilities[rows, targets],
        path,
    )
    return {
        "ig_faces": len(shown),
        "ig_steps": steps,
        "ig_max_completeness_error": float(np.max(error / np.maximum(np.abs(gap), 1e-6))),
    }


def main() -> None:
    seed, p = load_params(STAGE, TrainEmotionCnnParams)
    strategy = make_strategy(load_distribute())  # None for `none`; before any other TensorFlow op

    import tensorflow as tf

    from stages.common.checkpoints import checkpoint_dir, clear_checkpoints
    from stages.common.input_pipelines import read_spec
    from stages.common.outputs import atomic_outputs, write_csv, write_history, write_json
    from stages.common.replicas import distribute_input
    from stages.models.emotion_cnn import export_saved_model, to_pixels

    chief = strategy_is_chief(strategy)
    spec = read_spec(DATA_DIR)
    names = list(spec["class_names"])
    ckpt = checkpoint_dir(CHECKPOINTS, STAGE, p, seed, prune=chief)
    trainer, history = train_model(p, seed, DATA_DIR, ckpt, strategy=strategy)
    valid = trainer.evaluate(distribute_input(strategy, split_batches(DATA_DIR, "valid", p.batch_size)))  # its part
    if not chief:
        return  # that was the last step all workers take together; the chief writes the outputs
    images, labels = collect_split(DATA_DIR, "test", p.batch_size)
    results, logits, predicted = evaluate_test(trainer, images, labels, names, p.batch_size, p.tta, p.tta_shift)
    tta = {}
    if p.tta != "none":  # only then: the default run's metrics stay as they were
        valid_images, valid_labels = collect_split(DATA_DIR, "valid", p.batch_size)
        probabilities = predict_probabilities(trainer.predict_step, valid_images, p.batch_size, p.tta, p.tta_shift)
        tta = {
            "tta": p.tta,
            "valid_accuracy_single_view": valid["val_accuracy"],
            "test_accuracy_single_view": results.pop("test_accuracy_single_view"),
            "test_macro_f1_single_view": results.pop("test_macro_f1_single_view"),
        }
        valid["val_accuracy"] = float(np.mean(np.argmax(probabilities, axis=1) == valid_labels))
    metrics = {
        "valid_accuracy": valid["val_accuracy"],
        "valid_loss": valid["val_loss"],
        **results,
        "best_epoch": history.best_epoch,
        "epochs": len(history),
        "train_examples": int(spec["splits"]["train"]["examples"]),
        "params": int(trainer.model.count_params()),
        "class_weight": p.class_weight,
        "augment": p.augment,
        **({"architecture": p.architecture} if p.architecture != "tutorial" else {}),
        **tta,
    }

    with atomic_outputs() as out:
        model_dir = out.directory(MODEL_DIR)
        trainer.model.save_weights(model_dir / "model.weights.h5")
        export_saved_model(trainer.model, names, model_dir / EXPORT_NAME, side=images.shape[1])
        # The export must answer exactly as the model in memory.
        served = tf.saved_model.load(str(model_dir / EXPORT_NAME))
        exported = served.serve(tf.constant(to_pixels(images[: p.batch_size])))["logits"].numpy()
        metrics["export_max_abs_diff"] = float(np.max(np.abs(exported - logits[: p.batch_size])))
        metrics |= explain(
            trainer.model, images, labels, names, p.ig_steps, out.file(PLOTS / "integrated_gradients.png")
        )
        write_json(out.file(METRICS), metrics)
        write_history(out.file(PLOTS / "history.tsv"), history)
        write_csv(
            out.file(PLOTS / "confusion.csv"),
            ["actual", "predicted"],
            [(names[a], names[b]) for a, b in zip(labels.tolist(), predicted.tolist(), strict=True)],
        )
    log.info(
        "test accuracy %.3f (majority class %.3f), macro F1 %.3f; valid accuracy %.3f; best epoch %d of %d",
        metrics["test_accuracy"],
        metrics["test_majority_class_share"],
        metrics["test_macro_f1"],
        metrics["valid_accuracy"],
        history.best_epoch,
        len(history),
    )
    clear_checkpoints(ckpt)


if __name__ == "__main__":
    run_stage(main, STAGE, lock=is_chief())  # the other workers of a cluster write nothing
