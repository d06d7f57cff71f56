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
