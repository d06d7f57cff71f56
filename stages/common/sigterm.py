"""SIGTERM held (blocked) in every thread of a cluster worker while TensorFlow waits for its cluster.

TensorFlow waits for the workers ``TF_CONFIG`` names inside one C++ call, and inside that call
its preemption notifier replaces the process's SIGTERM handler with one that only sets a flag:
a SIGTERM sent to the stage's pid would be swallowed. Blocked in *every* thread, a SIGTERM
instead stays pending in the process's shared pending set (``ShdPnd`` in ``/proc/<pid>/status``),
where the cluster watchdog (:mod:`stages.common.distribute`) sees it.

A signal mask is per thread and a new thread inherits its creator's, and importing NumPy and
TensorFlow starts threads (OpenBLAS's, TensorFlow's) that no later call can reach. So:

- :func:`hold_from_start`, run by ``stages/__init__.py`` before anything imports NumPy, blocks
  SIGTERM in the main thread of a ``python -m stages.…`` process run with ``TF_CONFIG``: the
  threads those imports start inherit the block (and keep it; SIGTERM is the main thread's anyway);
- :func:`release` unblocks it in the main thread as soon as the program starts (``run_stage``,
  the worker launcher), so the stage, and whatever it starts, handles SIGTERM as always;
- :func:`held` blocks it again in the main thread around the wait (every thread TensorFlow starts
  in it inherits the block) and then puts the mask back: a SIGTERM that came meanwhile is
  delivered then, to the stage's own handler.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_held_from_start = False


def hold_from_start() -> None:
    """Block SIGTERM in this (the main) thread if this process runs a stage as a cluster worker."""
    global _held_from_start
    # sys.argv[0] is "-m" while `python -m stages.x` imports the package, before x itself runs.
    if sys.argv[:1] == ["-m"] and os.environ.get("TF_CONFIG", "").strip():
        _held_from_start = signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def release() -> None:
    """Undo :func:`hold_from_start` in this (the main) thread: the mask the process started with."""
    global _held_from_start
    if _held_from_start:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        _held_from_start = False


@contextmanager
def held() -> Iterator[None]:
    """SIGTERM blocked in this thread (and the threads it starts) inside the block."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
