"""Entry-point wrapper: user errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

# TensorFlow prints several lines of C++ start-up chatter per process; a stage
# only wants warnings and errors. Set before any module imports tensorflow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class StageError(Exception):
    """An error the user can fix (bad params, bad input file): printed as one line."""


def fail(message: str) -> NoReturn:
    raise StageError(message)


def run_stage(main: Callable[[], None], name: str) -> None:
    """Run a stage's ``main`` with logging set up and user errors reported as one line."""
    # Our loggers at INFO; libraries (TensorFlow's checkpoint chatter) only warnings.
    logging.basicConfig(level=logging.WARNING, format=f"{name}: %(message)s", stream=sys.stderr)
    level = os.environ.get("STAGE_LOG_LEVEL", "INFO")
    for logger in ("__main__", "stages"):
        logging.getLogger(logger).setLevel(level)
    try:
        main()
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; outputs left as they were", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
