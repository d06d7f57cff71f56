"""Entry-point wrapper: user errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import NoReturn

# TensorFlow prints several lines of C++ start-up chatter per process; a stage
# only wants warnings and errors. Set before any module imports tensorflow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
LOCK_DIR = ".dvc/tmp"  # git-ignored by DVC; `dvc repro` locks the repo, direct runs only this


class StageError(Exception):
    """An error the user can fix (bad params, bad input file): printed as one line."""


def fail(message: str) -> NoReturn:
    raise StageError(message)


def _lock(name: str) -> int:
    """Hold ``.dvc/tmp/stage-<name>.lock`` until the process ends; fail at once if another run holds it.

    Two runs of one stage at once would write the same outputs and clear each
    other's temporary files. (flock: released by the kernel even if the run is killed.)
    """
    path = os.path.join(LOCK_DIR, f"stage-{name}.lock")
    try:
        os.makedirs(LOCK_DIR, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        fail(f"{path}: cannot create the stage lock: {exc.strerror or exc}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        fail(f"another run of {name} holds the lock {path}; wait for it to finish")
    return fd


def run_stage(main: Callable[[], None], name: str, lock: bool = True) -> None:
    """Run a stage's ``main`` with logging set up and user errors reported as one line.

    ``lock``: one run of the stage at a time (one per variant given as the first
    argument, e.g. ``metrics_demo multiclass``); commands that write no stage
    outputs pass False.
    """
    # Our loggers at INFO; libraries (TensorFlow's checkpoint chatter) only warnings.
    logging.basicConfig(level=logging.WARNING, format=f"{name}: %(message)s", stream=sys.stderr)
    level = os.environ.get("STAGE_LOG_LEVEL", "INFO")
    for logger in ("__main__", "stages"):
        logging.getLogger(logger).setLevel(level)
    try:
        if lock:
            variant = sys.argv[1] if len(sys.argv) > 1 and re.fullmatch(r"\w[\w-]*", sys.argv[1]) else None
            _lock(f"{name}@{variant}" if variant else name)
        main()
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except OSError as exc:  # an unreadable input, a read-only folder: the environment, not a bug
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; outputs left as they were", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
