"""Tutorial 07's network and a VGG-style one: CNNs that tell seven facial expressions apart, their export
and their explanation.

The tutorial's network, block for block (``build_emotion_cnn``): four blocks of
``conv -> BN -> strided conv -> BN -> ReLU -> dropout`` (48 -> 24 -> 12 -> 6 -> 3
pixels), then its head of 1×1 and 3×3 convolutions down to a 1×1×7 map, the
seven logits. As in the tutorial the head has no ReLU (only batch norm).
Kernel sizes are the tutorial's (``KERNELS``, ``HEAD_KERNELS``); widths and
dropout rates are arguments (the stage's params). Batch norm and dropout follow
the ``training`` flag the caller passes. With the tutorial's widths it has
559,671 parameters.

``build_emotion_vgg`` is the architecture behind the best published single
FER2013 networks (VGG-style, e.g. Khaireddin & Chen 2021), narrowed to a 2-core
budget: stages of ``convs_per_stage`` × (3×3 conv -> BN -> ReLU), each stage
then halving the side with a 2×2 max-pool, and a small dense head
(``dense_units`` -> BN -> ReLU -> dropout -> logits). The convs have no bias:
the batch norm after each would cancel it.

``export_saved_model`` writes a SavedModel that needs only TensorFlow
(``tf.saved_model.load``), no code of this project::

    m = tf.saved_model.load("models/emotion_cnn/saved_model")
    out = m.serve(pixels)       # pixels: uint8 (batch, 48, 48, 1), raw 0-255 grayscale
    out["logits"], out["probabilities"]   # float32 (batch, 7)
    m.class_names()             # string (7,): Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral

(also as the signatures ``serving_default`` and ``class_names``).

``integrated_gradients`` (Sundararajan et al. 2017) explains a prediction: the
attribution of pixel i is ``(x_i - x0_i) * mean over the straight path x0 -> x
of d logit_c / d x_i`` for class ``c`` (by default the predicted one), baseline
``x0`` (zeros by default), ``steps`` intervals (trapezoid rule). Attributions
sum to ``logit_c(x) - logit_c(x0)`` (completeness; tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stages.datasets.fer2013_csv import SIDE

# The tutorial's kernel sizes: (first conv, strided conv) per block, then the head's four convs.
KERNELS = ((5, 5), (5, 5), (3, 3), (1, 3))
HEAD_KERNELS = (1, 3, 1)  # then the 3×3 strided conv to the logits


# --- the network --------------------------------------------------------------------------------


def build_emotion_cnn(
    block_filters: Sequence[Sequence[int]],
    dropout: Sequence[float],
    head_filters: Sequence[int],
    num_classes: int = 7,
    side: int = SIDE,
    synchronized: bool = False,
):
    """The tutorial's CNN: float32 (b, side, side, 1) in [0, 1] -> logits (b, num_classes).

    ``block_filters``: (first conv, strided conv) widths of the four blocks;
    ``dropout``: the rate after each block; ``head_filters``: widths of the
    head's 1×1, 3×3/2 and 1×1 convs. Shapes below are for 48 px faces.
    ``synchronized``: batch norm takes its statistics over the global batch of
    all replicas (several workers or devices), as one process does, instead of
    each replica's share.
    """
    import functools

    import keras
    from keras import layers

    batch_norm = functools.partial(layers.BatchNormalization, synchronized=synchronized)

    def conv(filters: int, kernel: int, stride: int, name: str):
        return layers.Conv2D(filters, kernel, strides=stride, padding="same", name=name)

    images = keras.Input((side, side, 1), name="images")  # (b, 48, 48, 1)
    x = images
    for i, ((first, strided), (k1, k2), rate) in enumerate(zip(block_filters, KERNELS, dropout, strict=True), start=1):
        x = conv(first, k1, 1, f"block{i}_conv")(x)  # (b, s, s, first); s = 48, 24, 12, 6 in blocks 1-4
        x = batch_norm(name=f"block{i}_bn")(x)
        x = conv(strided, k2, 2, f"block{i}_conv_stride2")(x)  # (b, s/2, s/2, strided): halves the side
        x = batch_norm(name=f"block{i}_stride2_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
        x = layers.Dropout(rate, name=f"block{i}_dropout")(x)
    # Head (48 px input: 3×3 -> 2×2 -> 1×1), linear apart from batch norm, as in the tutorial.
    wide, narrow, wide2 = head_filters
    x = conv(wide, HEAD_KERNELS[0], 1, "head_conv1x1_a")(x)  # (b, 3, 3, wide)
    x = batch_norm(name="head_bn_a")(x)
    x = conv(narrow, HEAD_KERNELS[1], 2, "head_conv3x3_stride2")(x)  # (b, 2, 2, narrow)
    x = conv(wide2, HEAD_KERNELS[2], 1, "head_conv1x1_b")(x)  # (b, 2, 2, wide2)
    x = batch_norm(name="head_bn_b")(x)
    x = conv(num_classes, 3, 2, "logits_conv3x3_stride2")(x)  # (b, 1, 1, num_classes)
    logits = layers.Flatten(name="logits")(x)  # (b, 1, 1, k) -> (b, k) for 48 px faces
    return keras.Model(images, logits, name="emotion_cnn")


def build_emotion_vgg(
    widths: Sequence[int],
    convs_per_stage: int = 2,
    dense_units: int = 256,
    dropout: float = 0.5,
    num_classes: int = 7,
    side: int = SIDE,
    synchronized: bool = False,
    bn_momentum: float = 0.9,
):
    """VGG-style CNN: float32 (b, side, side, 1) in [0, 1] -> logits (b, num_classes).

    One stage per entry of ``widths`` (its convs' width); with four stages a 48 px
    face goes 48 -> 24 -> 12 -> 6 -> 3 pixels. ``dropout``: the rate before the logits.
    ``bn_momentum``: batch norm's moving-average momentum. 0.9 (PyTorch's default, which
    the published recipes used) rather than Keras' 0.99: with SGD's larger steps the
    slower averages lag the weights, and the validation accuracy in inference mode
    collapsed (0.16 against 0.30 after 200 steps on the real faces, lr 0.02).
    """
    import functools

    import keras
    from keras import layers

    batch_norm = functools.partial(layers.BatchNormalization, synchronized=synchronized, momentum=bn_momentum)
    images = keras.Input((side, side, 1), name="images")  # (b, 48, 48, 1)
    x = images
    for i, width in enumerate(widths, start=1):
        for j in range(1, convs_per_stage + 1):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"stage{i}_conv{j}")(x)
            x = batch_norm(name=f"stage{i}_bn{j}")(x)
            x = layers.ReLU(name=f"stage{i}_relu{j}")(x)
        x = layers.MaxPooling2D(2, name=f"stage{i}_pool")(x)  # (b, s/2, s/2, width)
    x = layers.Flatten(name="flatten")(x)  # (b, 3 * 3 * widths[-1]) for 48 px and four stages
    x = layers.Dense(dense_units, use_bias=False, name="dense")(x)
    x = batch_norm(name="dense_bn")(x)
    x = layers.ReLU(name="dense_relu")(x)
    x = layers.Dropout(dropout, name="dense_dropout")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(images, logits, name="emotion_vgg")


# --- export -------------------------------------------------------------------------------------


def export_saved_model(model, class_names: Sequence[str], path: Path, side: int = SIDE) -> None:
    """A SavedModel taking raw uint8 pixels, loadable with ``tf.saved_model.load`` alone (see the docstring)."""
    import tensorflow as tf

    names = list(class_names)
    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, side, side, 1], tf.uint8, name="pixels")])
    def serve(pixels):
        # The same uint8 -> [0, 1] conversion as the training input pipeline, so logits match exactly.
        logits = module.model(tf.image.convert_image_dtype(pixels, tf.float32), training=False)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    @tf.function(input_signature=[])
    def class_names_fn():
        return tf.constant(names)

    from stages.common.export import save

    module.serve, module.class_names = serve, class_names_fn
    save(module, path, signatures={"serving_default": serve, "class_names": class_names_fn})


def to_pixels(images: np.ndarray) -> np.ndarray:
    """Float [0, 1] images from the input pipeline back to their uint8 pixels (what ``serve`` takes)."""
    return np.rint(np.asarray(images) * 255.0).astype(np.uint8)


# --- explanation: integrated gradients ------------------------------------------------------------


def integrated_gradients(
    model, images: np.ndarray, steps: int, baseline: np.ndarray | None = None, targets: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Attributions (same shape as ``images``) of each image's class logit, and those classes.

    ``targets`` defaults to the predicted classes. The path integral from
    ``baseline`` (zeros by default) to the image uses ``steps`` intervals and
    the trapezoid rule; ``model`` runs in inference mode (``training=False``).
    """
    import tensorflow as tf

    images = np.asarray(images, np.float32)
    baseline = np.zeros_like(images[0]) if baseline is None else np.asarray(baseline, np.float32)
    if targets is None:
        targets = np.argmax(model(images, training=False).numpy(), axis=1)
    alphas = tf.reshape(tf.linspace(0.0, 1.0, steps + 1), [-1, 1, 1, 1])
    attributions = []
    for image, target in zip(images, targets, strict=True):
        path = baseline + alphas * (image - baseline)  # (steps + 1, H, W, C)
        with tf.GradientTape() as tape:
            tape.watch(path)
            logit = model(path, training=False)[:, int(target)]
        gradients = tape.gradient(logit, path).numpy().astype(np.float64)
        average = (gradients[:-1] + gradients[1:]).sum(axis=0) / (2 * steps)
        attributions.append((image - baseline) * average)
    return np.asarray(attributions), np.asarray(targets)
