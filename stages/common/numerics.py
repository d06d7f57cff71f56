"""Same numbers on every machine: pin what the numeric libraries read from the host.

Seeds and ``enable_op_determinism`` make a run repeat on *one* machine. Across
machines, three libraries still pick their code paths from the host, and each
choice changes the order in which floats are summed, hence the last bits of
every result, which training then amplifies into different accuracies:

- oneDNN, TensorFlow's CPU kernels for convolutions, matmuls and RNN cells, JIT-
  compiles AVX2, AVX-512 or AMX code depending on the CPU (``ONEDNN_MAX_CPU_ISA``
  caps it);
- TensorFlow's intra-op thread pool is sized from the core count, and its
  reductions and oneDNN's kernels split their sums by thread
  (``TF_NUM_INTRAOP_THREADS`` fixes it);
- OpenBLAS (NumPy's matrix products) picks Haswell, SkylakeX or Zen kernels
  (``OPENBLAS_CORETYPE``).

:func:`configure` pins all three to what every x86-64 CPU with AVX2 and FMA (2013
onwards) offers. It must run before NumPy or TensorFlow is imported, so the
``stages`` package runs it on import (``stages/__init__.py``), before any stage,
command, test or benchmark code. ``EAGER_PIPELINE_NUMERICS=fast`` skips it: each
machine then uses its best kernels and all its cores, and gets its own numbers.
The price is measured by ``bench/bench_numerics.py`` (README, "Same numbers on
every machine").
"""

from __future__ import annotations

import os

SWITCH = "EAGER_PIPELINE_NUMERICS"
MODES = ("reproducible", "fast")
INTRA_OP_THREADS = 2  # the smallest supported machine's cores: no machine runs slower than it could
PINNED = {
    # TF takes oneDNN's kernels by default only on CPUs with AVX-512-class features, Eigen's elsewhere.
    "TF_ENABLE_ONEDNN_OPTS": "1",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "TF_NUM_INTRAOP_THREADS": str(INTRA_OP_THREADS),
    "OPENBLAS_CORETYPE": "Haswell",
}


def mode() -> str:
    """The numerics mode asked for by the environment (``reproducible`` unless told otherwise)."""
    value = os.environ.get(SWITCH, "reproducible").strip().lower() or "reproducible"
    if value not in MODES:  # at import time, before run_stage: exit with the one line ourselves
        raise SystemExit(f"error: {SWITCH}={value!r}: must be one of {', '.join(MODES)}")
    return value


def exact_reciprocals() -> None:
    """Compute ``rsqrt(x)`` as ``1 / sqrt(x)`` and ``reciprocal(x)`` as ``1 / x`` in TensorFlow.

    TensorFlow's CPU kernels for these two start from the approximate RSQRTPS/RCPPS
    instructions (then a Newton step), whose last bits differ between Intel and AMD
    silicon (and the emulator): batch normalization (``tf.nn.batch_normalization``,
    which Keras calls) takes ``rsqrt`` of each channel's variance, so every CNN step
    would differ by CPU vendor. ``sqrt`` and division are exact (IEEE) on every x86-64
    CPU. Replaces TensorFlow's op wrappers, so it acts on graphs traced afterwards:
    call it after importing TensorFlow and before building models (seeding does).
    Idempotent; the ``fast`` mode keeps the approximate kernels.
    """
    import tensorflow as tf
    from tensorflow.python.ops import gen_math_ops

    if getattr(gen_math_ops.rsqrt, "exact", False):
        return

    # DivNoNan, not RealDiv: grappler turns a RealDiv of ones back into Reciprocal (constant
    # folding) and x / sqrt(y) into x * Rsqrt(y) (arithmetic optimizer) inside tf.function graphs.
    # The price: 0 instead of inf at x = 0 (batch norm adds its epsilon first).
    def rsqrt(x, name=None):
        x = tf.convert_to_tensor(x)
        return tf.math.divide_no_nan(tf.ones_like(x), tf.math.sqrt(x), name=name)

    def reciprocal(x, name=None):
        x = tf.convert_to_tensor(x)
        return tf.math.divide_no_nan(tf.ones_like(x), x, name=name)

    for exact, original in ((rsqrt, gen_math_ops.rsqrt), (reciprocal, gen_math_ops.reciprocal)):
        exact.exact = True  # type: ignore[attr-defined]
        exact.__doc__ = original.__doc__
        # math_ops.rsqrt calls gen_math_ops.rsqrt; tf.math.reciprocal and inv are the generated op itself.
        for module in (gen_math_ops, tf.math):
            for attribute, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attribute, exact)


def orthonormal_columns(a):
    """The Q of ``a``'s QR factorization with a positive diagonal in R, the same bits on every CPU.

    ``a`` is a (rows, cols) float64 NumPy array with rows >= cols. Modified Gram-Schmidt,
    each column orthogonalized twice ("twice is enough": orthogonal to float64 precision);
    every dot product is an exactly rounded ``math.fsum`` of the products and every other
    step is one IEEE multiply, subtract, divide or square root per element, so the result
    depends on no summation order, vector width or cache blocking. Keras' QR path flips
    Q's columns so that R's diagonal is positive: the same matrix in exact arithmetic.
    """
    import math

    import numpy as np

    q = np.array(a, dtype=np.float64, copy=True)
    for j in range(q.shape[1]):
        v = q[:, j]
        length = math.sqrt(math.fsum(v * v))
        for _ in range(2):
            for i in range(j):
                v -= math.fsum(q[:, i] * v) * q[:, i]
        norm = math.sqrt(math.fsum(v * v))
        if norm <= 1e-10 * length:  # in the span of the others, to rounding (probability 0 for Gaussian draws)
            raise ValueError(f"orthonormal_columns: column {j} is linearly dependent on the previous ones")
        q[:, j] = v / norm
    return q


def exact_orthogonal() -> None:
    """Draw Keras' ``Orthogonal`` initializer through :func:`orthonormal_columns`.

    Keras orthogonalizes its Gaussian draw with ``ops.qr``: TensorFlow's QR is Eigen's
    blocked Householder, whose matrix products block their sums by the CPU's cache sizes.
    Measured: the recurrent kernels of the LSTM and GRU layers (48 x 144 and larger) come
    out different under an emulated CPU with a 64 KiB L1 data cache than with 32 KiB. Here
    the same Gaussian draw (same seed stream, so every other weight is unchanged) is
    orthogonalized in float64 with fixed-order arithmetic and rounded once to the layer's
    dtype. Idempotent; the ``fast`` mode keeps Keras' QR.
    """
    import math

    import numpy as np
    from keras import ops, random
    from keras.src.initializers.random_initializers import Orthogonal

    original = Orthogonal.__call__
    if getattr(original, "exact", False):
        return

    def call(self, shape, dtype=None):
        if len(shape) < 2:
            return original(self, shape, dtype)  # Keras' own error
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = random.normal((max(rows, cols), min(rows, cols)), seed=self.seed, dtype=dtype)  # Keras' draw
        q = orthonormal_columns(ops.convert_to_numpy(a).astype(np.float64))
        q = q.T if rows < cols else q
        return self.gain * ops.cast(ops.convert_to_tensor(q.reshape(shape)), a.dtype)

    call.exact = True  # type: ignore[attr-defined]
    call.keras_qr = original  # type: ignore[attr-defined]  # Keras' own, for comparisons
    call.__doc__ = original.__doc__
    Orthogonal.__call__ = call


def configure() -> str:
    """Pin the host-dependent choices unless the fast mode is asked for; return the mode.

    Assigns rather than defaults: a stray ``ONEDNN_MAX_CPU_ISA`` in a user's
    shell must not silently change the committed numbers. Child processes
    (DVC's, the TFRecord encoders') inherit the same settings.
    """
    chosen = mode()
    if chosen == "reproducible":
        os.environ.update(PINNED)
    return chosen
