"""One seed for Python, NumPy and TensorFlow, and deterministic TF kernels."""

from __future__ import annotations

import os
import random

import numpy as np

from stages.common import numerics


def seed_everything(seed: int) -> None:
    """Seed every generator a stage may touch and make TF ops deterministic.

    Together with seeded data order this makes a stage's outputs byte-identical
    from run to run, which keeps DVC's cache honest.
    """
    os.environ["PYTHONHASHSEED"] = str(seed)  # for child processes
    random.seed(seed)
    np.random.seed(seed)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # python, numpy, tf and Keras' own seed generator
    tf.config.experimental.enable_op_determinism()
    if numerics.mode() == "reproducible":
        numerics.exact_reciprocals()  # the same bits on Intel and AMD (stages/common/numerics.py)
        numerics.exact_orthogonal()  # the same recurrent kernels whatever the CPU's caches
