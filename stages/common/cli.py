"""Entry-point wrapper: user errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import atexit
import errno
import fcntl
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

# TensorFlow prints several lines of C++ start-up chatter per process; a stage
# only wants warnings and errors. Set before any module imports tensorflow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Lines TensorFlow (absl, CUDA stubs, oneDNN) prints at start-up on any machine without a
# GPU, some before absl reads TF_CPP_MIN_LOG_LEVEL or at ERROR level, so no setting hides
# them. run_stage drops exactly these (substring match, whole lines); everything else on
# stderr passes unchanged. EAGER_PIPELINE_TF_LOG=1 shows them.
TF_LOG_SWITCH = "EAGER_PIPELINE_TF_LOG"
STARTUP_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning: Could not find TensorRT",
)
_NOISE = re.compile("|".join(re.escape(s) for s in STARTUP_NOISE).encode())
# TensorFlow's C++ log messages when a worker of a cluster dies: several lines each (the
# unhealthy task, advice, a status payload), all said again by the stage's one `error:` line
# (replicas.py). run_stage drops such a message from its first line to the one holding the
# status payload ("[type.googleapis.com/...]"), at most _ABORT_MAX_LINES lines.
PEER_ABORT_NOISE = (
    "BaseCollectiveExecutor::StartAbort",
    "] Aborting RingReduce with",
)
_ABORT = re.compile("|".join(re.escape(s) for s in PEER_ABORT_NOISE).encode())
_ABORT_END = re.compile(rb"\[type\.googleapis\.com/")
_ABORT_MAX_LINES = 12
_PARTIAL_WAIT_S = 0.2  # an unterminated line (a tqdm bar's \r update) is shown after this pause

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


def filter_stream(fd_in: int, fd_out: int) -> None:
    """Copy ``fd_in`` to ``fd_out`` until EOF, dropping whole lines that match :data:`STARTUP_NOISE`.

    A line ends at ``\n`` or ``\r`` (so progress bars pass as they are drawn).
    """
    broken = False

    def write(data: bytes) -> None:
        nonlocal broken
        try:
            while data and not broken:
                data = data[os.write(fd_out, data) :]
        except OSError:  # the reader went away (a closed terminal or pipe): keep draining, so no writer blocks
            broken = True

    pending = b""
    aborting = 0  # > 0: inside a PEER_ABORT_NOISE message, lines left before giving up on its end

    def keep(line: bytes) -> bool:
        nonlocal aborting
        if line.startswith(b"error: "):  # the stage's own one line: never lost in a message cut short
            aborting = 0
            return True
        if aborting:
            aborting = 0 if _ABORT_END.search(line) else aborting - 1
            return False
        if _ABORT.search(line):
            aborting = 0 if _ABORT_END.search(line) else _ABORT_MAX_LINES
            return False
        return not _NOISE.search(line)

    while True:
        ready, _, _ = select.select([fd_in], [], [], _PARTIAL_WAIT_S if pending else None)
        if not ready:  # a partial line and a pause: show it (unless it is noise still being written)
            if not _NOISE.search(pending):
                write(pending)
                pending = b""
            continue
        try:
            chunk = os.read(fd_in, 65536)
        except OSError as exc:  # a pty's master reads EIO once every slave is closed: its EOF
            if exc.errno != errno.EIO:
                raise
            chunk = b""
        if not chunk:
            break
        pending += chunk
        lines = re.split(rb"(?<=[\n\r])", pending)
        pending = lines.pop()  # the unterminated rest, maybe empty
        kept = b"".join(line for line in lines if keep(line))
        if kept:
            write(kept)
    if pending and not _NOISE.search(pending):
        write(pending)


def _filter_startup_noise() -> None:
    """Route this process's fd 2 (and its children's) through a filter process.

    A separate process, not a thread: it drains the pipe to the end even if this
    one dies in C++ (abort, a fatal signal) or leaves by os._exit, so nothing real
    is lost. It runs this file as a script (stdlib only, no ``stages`` import).
    """
    if os.environ.get(TF_LOG_SWITCH, "") not in ("", "0"):
        return
    try:
        real = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        return
    if os.isatty(real):
        # A terminal: hand the stage a pseudo-terminal of the same size, so whatever asks
        # isatty() (tqdm's bars: disable=None) behaves as on the terminal itself. Raw mode:
        # the bytes pass unchanged (no \n -> \r\n).
        import termios
        import tty

        read_end, write_end = os.openpty()
        tty.setraw(write_end)
        try:
            fcntl.ioctl(write_end, termios.TIOCSWINSZ, fcntl.ioctl(real, termios.TIOCGWINSZ, b"\0" * 8))
        except OSError:
            pass
    else:
        read_end, write_end = os.pipe()
    try:
        helper = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), "--filter-stderr"],
            stdin=read_end,
            stdout=real,
            stderr=real,
            close_fds=True,
        )
    except OSError:
        os.close(read_end)
        os.close(write_end)
        os.close(real)
        return
    os.close(read_end)
    sys.stderr.flush()
    os.dup2(write_end, 2)  # inheritable: spawned workers write through the filter too
    os.close(write_end)

    def restore() -> None:
        # Put the real stderr back (closing our end of the pipe) and let the filter
        # write the rest before this process exits, so output keeps its order.
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(real, 2)
        os.close(real)
        try:
            helper.wait(timeout=10)  # longer only if a child process still holds the pipe
        except subprocess.TimeoutExpired:
            pass

    atexit.register(restore)


def _stop_with_parent(name: str, poll_s: float = 1.0) -> None:
    """Interrupt this stage (as Ctrl-C would) once the process that started it is gone.

    After a SIGKILL of ``dvc repro`` the stage would otherwise train on unseen, and a new
    ``dvc repro`` would find nothing to do while it still writes. A thread, not
    prctl(PR_SET_PDEATHSIG): that one fires when the parent *thread* ends.
    """
    parent = os.getppid()
    if parent == 1:  # started by init, or the parent already left: nothing to watch
        return
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:  # nohup: meant to outlive its parent
        return

    main = threading.main_thread().ident
    assert main is not None

    def watch() -> None:
        # Signals are the main thread's: one delivered to this thread would not interrupt the main
        # thread's blocking call (a sleep, a download), and Python runs its handlers there anyway.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while os.getppid() == parent:
            time.sleep(poll_s)
        print(f"{name}: the process that started it (pid {parent}) is gone; stopping", file=sys.stderr, flush=True)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_stage(main: Callable[[], None], name: str, lock: bool = True) -> None:
    """Run a stage's ``main`` with logging set up and user errors reported as one line.

    ``lock``: one run of the stage at a time (one per variant given as the first
    argument, e.g. ``metrics_demo multiclass``); commands that write no stage
    outputs pass False.
    """
    from stages.common import sigterm  # here: this file also runs as the stdlib-only filter script

    sigterm.release()  # blocked while NumPy and TensorFlow started their threads (cluster workers only)
    _filter_startup_noise()  # before main() imports TensorFlow
    # Our loggers at INFO; libraries (TensorFlow's checkpoint chatter) only warnings.
    logging.basicConfig(level=logging.WARNING, format=f"{name}: %(message)s", stream=sys.stderr)
    level = os.environ.get("STAGE_LOG_LEVEL", "INFO")
    for logger in ("__main__", "stages"):
        logging.getLogger(logger).setLevel(level)
    _stop_with_parent(name)
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


if __name__ == "__main__" and sys.argv[1:] == ["--filter-stderr"]:
    # Ctrl-C or a SIGTERM sent to the process group: keep draining until the stage (which
    # handles them) has said its last; EOF ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    filter_stream(0, 1)
