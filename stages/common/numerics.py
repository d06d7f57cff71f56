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
