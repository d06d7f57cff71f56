"""Stage ``train_emotion_cnn`` (tutorial 07): a CNN that tells seven facial expressions apart.

The network, its SavedModel export and integrated gradients are in
stages/models/emotion_cnn.py: the tutorial's four conv blocks and head; the
blocks' and head's widths and the dropout rates are params.

Trained with the shared eager loop (stages/common/training.py): Adam, batch
64, early stopping on the PublicTest (``valid``) loss with the best weights
restored, resumable checkpoints. PrivateTest (``test``) is used only for the
final metrics. Three optional departures from the tutorial, off by default:

- ``class_weight: balanced``: each training example's loss is weighted by
  ``n / (k * count[class])`` (counts of the training split), as scikit-learn's
  "balanced"; the validation loss that early stopping watches is weighted the
  same way, so it tracks the objective being minimised;
- ``augment: true``: random horizontal flips and shifts of up to
  ``augment_shift`` pixels, drawn from (seed, epoch, batch) so a resumed run
  sees the same images;
- ``lr_schedule: cosine``: the learning rate decays from ``learning_rate`` to 0
  along a cosine over ``max_epochs`` (Loshchilov & Hutter 2017), so the last
  epochs fine-tune instead of bouncing around a minimum.

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
    block_filters: list[list[int]] = Field(
        [[16, 16], [32, 32], [64, 64], [64, 128]], description="(first conv, strided conv) widths of the four blocks"
    )
    dropout: list[float] = Field([0.4, 0.3, 0.3, 0.3], description="dropout rate after each block")
    head_filters: list[int] = Field([256, 128, 256], description="widths of the head's 1×1, 3×3/2 and 1×1 convs")
    learning_rate: float = Field(1e-3, gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: decay the learning rate to 0 over max_epochs (cosine curve)"
    )
    batch_size: int = Field(64, ge=1)
    max_epochs: int = Field(30, ge=1)
    patience: int = Field(5, ge=1, description="epochs without a lower validation loss before stopping")
    class_weight: Literal["none", "balanced"] = "none"
    augment: bool = False
    augment_shift: int = Field(3, ge=0, le=12, description="largest shift in pixels when augment is on")
    ig_steps: int = Field(64, ge=1, description="integration intervals of integrated gradients")

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

    Like a Keras loss, it has a ``reduction`` and ``get_config``/``from_config``: under a
    tf.distribute strategy the Trainer remakes it with ``reduction="sum"``.
    """

    def __init__(self, weights: Sequence[float] | np.ndarray | None, reduction: str = "sum_over_batch_size") -> None:
        import keras
        import tensorflow as tf

        self.reduction = reduction
        self.cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
        self.weights = None if weights is None else tf.constant(np.asarray(weights), tf.float32)

    def get_config(self) -> dict:
        weights = None if self.weights is None else self.weights.numpy().tolist()  # the same float32 values
        return {"weights": weights, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config: dict) -> WeightedCrossEntropy:
        return cls(**config)

    def __call__(self, labels, logits):
        import tensorflow as tf

        if self.weights is None:
            return self.cross_entropy(labels, logits)
        return self.cross_entropy(labels, logits, sample_weight=tf.gather(self.weights, labels))


def augment_batches(batches, seed: int, epoch: int, max_shift: int, stream: int = 0):
    """Random horizontal flips and shifts (edge pixels repeated), drawn from (seed, epoch, batch index).

    ``stream``: the input pipeline (worker) drawing them, so that workers do not all draw the same.
    """
    import tensorflow as tf

    base = tf.constant([seed, epoch], tf.int64)
    if stream:
        base = tf.random.experimental.stateless_fold_in(base, stream)

    def augment(index, batch):
        images, labels = batch
        flip_seed = tf.random.experimental.stateless_fold_in(base, 2 * index)
        shift_seed = tf.random.experimental.stateless_fold_in(base, 2 * index + 1)
        images = tf.image.stateless_random_flip_left_right(images, flip_seed)
        n = tf.shape(images)[0]
        shifts = tf.cast(
            tf.random.stateless_uniform([n, 2], shift_seed, -max_shift, max_shift + 1, tf.int32), tf.float32
        )
        # Projective transform rows [1, 0, dx, 0, 1, dy, 0, 0]: output (x, y) reads input (x + dx, y + dy).
        ones, zeros = tf.ones([n, 1]), tf.zeros([n, 1])
        transforms = tf.concat([ones, zeros, shifts[:, :1], zeros, ones, shifts[:, 1:], zeros, zeros], axis=1)
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=tf.shape(images)[1:3],
            fill_value=0.0,
            interpolation="NEAREST",
            fill_mode="NEAREST",
        )
        return images, labels

    return batches.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


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

    from stages.common.input_pipelines import image_batches, read_spec
    from stages.common.seeding import seed_everything
    from stages.common.training import EarlyStopping, Trainer
    from stages.models.emotion_cnn import build_emotion_cnn

    seed_everything(seed)
    spec = read_spec(data_dir)
    names = spec["class_names"]
    counts = [spec["splits"]["train"]["class_counts"].get(name, 0) for name in names]
    weights = class_weights(counts, p.class_weight)
    if weights is not None:
        log.info("class weights: %s", ", ".join(f"{n} {w:.3g}" for n, w in zip(names, weights, strict=True)))
    side = int(spec.get("image_shape", [48])[0])
    synchronized = strategy is not None and strategy.num_replicas_in_sync > 1
    loss = WeightedCrossEntropy(weights)
    trainer = Trainer(
        lambda: build_emotion_cnn(p.block_filters, p.dropout, p.head_filters, len(names), side, synchronized),
        lambda: keras.optimizers.Adam(learning_rate=learning_rate(p, spec)),
        loss,
        metrics={"accuracy": keras.metrics.SparseCategoricalAccuracy},
        run_eagerly=p.run_eagerly,
        strategy=strategy,
    )

    # The Trainer calls each function of the InputContext with this worker's (None without a strategy).
    def train(epoch: int):
        def batches(context):
            data = image_batches(data_dir, "train", p.batch_size, shuffle_seed=seed, epoch=epoch, input_context=context)
            if not p.augment:
                return data
            return augment_batches(data, seed, epoch, p.augment_shift, context.input_pipeline_id if context else 0)

        return batches

    def validation():
        return split_batches(data_dir, "valid", p.batch_size)

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


def learning_rate(p: TrainEmotionCnnParams, spec: dict):
    """Adam's learning rate: the constant ``learning_rate``, or its cosine decay to 0 over ``max_epochs``.

    A schedule of the optimizer's step counter, which the checkpoint holds, so a resumed run
    continues on the same curve.
    """
    if p.lr_schedule == "constant":
        return p.learning_rate
    import keras

    steps_per_epoch = -(-int(spec["splits"]["train"]["examples"]) // p.batch_size)
    return keras.optimizers.schedules.CosineDecay(p.learning_rate, decay_steps=p.max_epochs * steps_per_epoch)


def collect_split(data_dir: Path, split: str, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in file order: images float32 (n, H, W, 1) in [0, 1], labels int64 (n,)."""
    from stages.common.input_pipelines import image_batches

    images, labels = [], []
    for x, y in image_batches(data_dir, split, batch_size).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def evaluate_test(
    trainer, images: np.ndarray, labels: np.ndarray, names: Sequence[str], batch_size: int
) -> tuple[dict, np.ndarray]:
    """Accuracy, macro and per-class scores on the test split; also the logits."""
    from stages.common.streaming_metrics import report as classification

    logits = trainer.predict([images[i : i + batch_size] for i in range(0, len(images), batch_size)])
    report = classification(labels, logits, len(names))
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
    return metrics, logits


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

    from stages.common.input_pipelines import read_spec
    from stages.common.outputs import atomic_outputs, write_csv, write_history, write_json
    from stages.common.training import checkpoint_dir, clear_checkpoints
    from stages.models.emotion_cnn import export_saved_model, to_pixels

    chief = strategy_is_chief(strategy)
    spec = read_spec(DATA_DIR)
    names = list(spec["class_names"])
    ckpt = checkpoint_dir(CHECKPOINTS, STAGE, p, seed, prune=chief)
    trainer, history = train_model(p, seed, DATA_DIR, ckpt, strategy=strategy)
    valid = trainer.evaluate(split_batches(DATA_DIR, "valid", p.batch_size))  # each worker reads its part
    if not chief:
        return  # that was the last step all workers take together; the chief writes the outputs
    images, labels = collect_split(DATA_DIR, "test", p.batch_size)
    results, logits = evaluate_test(trainer, images, labels, names, p.batch_size)
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
    }
    predicted = np.argmax(logits, axis=1)

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
