"""Training on several devices or hosts: ``params.yaml`` -> ``distribute`` -> a ``tf.distribute`` strategy.

``strategy: none`` (the default) is no strategy at all: the stages run exactly the
code they always ran. ``mirrored`` mirrors the model over the local devices
(``tf.distribute.MirroredStrategy``); ``multi_worker`` over the workers that
``TF_CONFIG`` names (``tf.distribute.MultiWorkerMirroredStrategy``, the ring
collectives, which also work on CPU). ``python -m stages.apps.launch_workers -n 2
-- python -m stages.train_emotion_cnn`` starts such a cluster on this host. The
stages that read this section: simple_nn and train_emotion_cnn; the others refuse
a TF_CONFIG cluster.

With several workers only the chief (task ``chief``, or ``worker`` 0 when the
cluster has no chief) writes outputs, metrics, plots and checkpoints; the others
write their checkpoints to temporary folders they remove, and nothing else.

The strategy must exist before TensorFlow runs any op (it configures the
collectives of the eager context): :func:`make_strategy` right after loading the
params, before seeding.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from stages.common import sigterm
from stages.common.cli import StageError
from stages.common.params import PARAMS_FILE, Section, read_params_file, remember, validate

if TYPE_CHECKING:
    import tensorflow as tf

SECTION = "distribute"

log = logging.getLogger(__name__)


class DistributeSection(Section):
    """``params.yaml`` -> ``distribute``: how a training stage spreads over devices and hosts."""

    strategy: Literal["none", "mirrored", "multi_worker"] = Field(
        description="none: one process, as the tutorials; mirrored: the local devices; multi_worker: TF_CONFIG"
    )
    # Off by default: the coordination service's heartbeats already stop the others about 10 s
    # after a worker dies, and a per-collective timeout costs one sleeping thread per collective
    # (TF's own advice: for debugging only); under load it also fails healthy but slow peers.
    timeout_s: float | None = Field(
        gt=0.0,
        description="multi_worker, for debugging a hung (alive) peer: a collective waiting longer than this fails",
    )
    # TensorFlow waits for every worker TF_CONFIG names before the first op, in C++ and by default
    # for an hour, deaf to Ctrl-C: one mistyped host or a worker never started hangs the stage.
    cluster_timeout_s: float = Field(
        gt=0.0,
        description="multi_worker: give up when the workers TF_CONFIG names have not all started within this",
    )


def load_distribute(path: Path = PARAMS_FILE) -> DistributeSection:
    """The ``distribute`` section."""
    data = read_params_file(path)
    if SECTION not in data:
        raise StageError(f"{path}: {SECTION}: missing section")
    if path == PARAMS_FILE:
        remember(SECTION, data[SECTION])
    return validate(DistributeSection, data[SECTION], SECTION, path)


@dataclass(frozen=True)
class Task:
    """This process's place in the ``TF_CONFIG`` cluster (one worker, index 0, without one)."""

    type: str = "worker"
    index: int = 0
    workers: int = 1
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        return self.type == "chief" or (self.type == "worker" and self.index == 0 and not self.has_chief)


def cluster_task(environ: dict[str, str] | None = None) -> Task:
    """Read ``TF_CONFIG`` (without importing TensorFlow): this task, and how many workers in all."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw.strip():
        return Task()
    try:
        config: Any = json.loads(raw)
        cluster = config["cluster"]
        task = config["task"]
        has_chief = bool(cluster.get("chief"))
        workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        this = Task(type=str(task["type"]), index=int(task["index"]), workers=workers, has_chief=has_chief)
        jobs = {str(job): list(addresses) for job, addresses in cluster.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StageError(f"TF_CONFIG: not a cluster and task description ({exc!r}): {raw[:200]}") from None
    # Checked here, in one line: TensorFlow raises a traceback for the first and waits forever on the second.
    if not 0 <= this.index < len(jobs.get(this.type, [])):
        raise StageError(
            f"TF_CONFIG: task {this.type} {this.index} is not in the cluster "
            f"({this.type}: {len(jobs.get(this.type, []))} addresses, indices from 0)"
        )
    for job, addresses in jobs.items():
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise StageError(f"TF_CONFIG: cluster {job}: {address!r} is not host:port with a port in 1-65535")
    return this


def cluster_address(task: Task) -> str:
    """This task's host:port in ``TF_CONFIG`` (checked by cluster_task)."""
    return str(json.loads(os.environ["TF_CONFIG"])["cluster"][task.type][task.index])


def is_chief() -> bool:
    """True in a single process and in the cluster's chief: the one process that writes outputs.

    ``run_stage(main, name, lock=is_chief())``: only the chief takes the stage's lock (the
    others write nothing). A malformed TF_CONFIG counts as chief here; make_strategy reports it.
    """
    try:
        return cluster_task().is_chief
    except StageError:
        return True


def strategy_is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes outputs under ``strategy``: the same rule as :attr:`Task.is_chief`,
    read from the strategy's cluster resolver (always true without a multi-worker strategy)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().jobs
    return Task(type=resolver.task_type, index=int(resolver.task_id), has_chief=has_chief).is_chief


def make_strategy(section: DistributeSection) -> tf.distribute.Strategy | None:
    """The strategy ``section`` names (None for ``none``). Call before any other TensorFlow op."""
    task = cluster_task()
    if section.strategy != "multi_worker" and task.workers > 1:
        # Every worker would train alone, and each would think it is the chief and write.
        raise StageError(
            f"TF_CONFIG names a cluster of {task.workers} workers but params.yaml distribute.strategy is "
            f"{section.strategy} (set it to multi_worker, or unset TF_CONFIG)"
        )
    if section.strategy == "none":
        return None
    if section.strategy == "mirrored":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy()
    if not os.environ.get("TF_CONFIG", "").strip():
        raise StageError(
            "distribute.strategy is multi_worker but TF_CONFIG is not set "
            "(start the workers with python -m stages.apps.launch_workers -n N -- <command>)"
        )
    # SIGTERM blocked in every thread until the cluster formed, so that it stays pending where the
    # watchdog sees it (stages/common/sigterm.py): from before TensorFlow's import starts threads.
    with sigterm.held():
        import tensorflow as tf

        options = tf.distribute.experimental.CommunicationOptions(
            # RING: the collectives that exist on CPU too (NCCL is GPU-only; AUTO picks NCCL on GPUs).
            implementation=tf.distribute.experimental.CommunicationImplementation.RING,
            timeout_seconds=section.timeout_s,
        )
        with cluster_watchdog(section.cluster_timeout_s, task.workers):
            try:
                return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
            except tf.errors.OpError as exc:  # e.g. "Could not start gRPC server": this task's port is taken
                address = cluster_address(task)
                raise StageError(f"TF_CONFIG: task {task.type} {task.index} ({address}): {exc.message}") from None
            except RuntimeError as exc:  # "Collective ops must be configured at program startup"
                raise RuntimeError(f"{exc} (make_strategy must run before any other TensorFlow op)") from exc


# The watchdog process: waits for a signal number on the wake fd, "done" (or EOF: the stage is
# gone) on the done fd, a SIGTERM pending in the stage (blocked in all its threads during the wait:
# polled in /proc/<pid>/status), or the timeout; on a signal or the timeout it prints its line and
# kills the stage.
_WATCHDOG = """
import os, select, signal, sys, time
pid, wake, done = (int(a) for a in sys.argv[1:4])
timeout, message = float(sys.argv[4]), sys.argv[5]
r, w = os.pipe()  # a SIGINT or SIGTERM sent to the whole process group reaches this process too
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: None)
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # inherited blocked from the stage

def sigterm_pending():
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("ShdPnd:"):
                    return bool(int(line.split()[1], 16) & 1 << (signal.SIGTERM - 1))
    except (OSError, ValueError):
        pass
    return False

deadline = time.monotonic() + timeout
name = None
while name is None:
    left = deadline - time.monotonic()
    ready, _, _ = select.select([wake, done, r], [], [], max(0.0, min(left, 0.1)))
    if done in ready:
        sys.exit(0)
    if wake in ready or r in ready:
        name = signal.Signals(os.read(wake if wake in ready else r, 1)[0]).name
    elif sigterm_pending():
        name = "SIGTERM"
    elif left <= 0:
        break
if name is not None:
    message = f"distribute: {name} while waiting for the cluster to form; stopped, nothing written"
os.write(2, (message + "\\n").encode())
os.kill(pid, signal.SIGKILL)
"""


@contextmanager
def cluster_watchdog(timeout_s: float, workers: int) -> Iterator[None]:
    """Kill this process if the block (the cluster's formation) outlasts ``timeout_s``, or on SIGINT or SIGTERM.

    TensorFlow waits for the other workers inside one C++ call that holds the GIL: no Python
    thread, signal handler or timeout runs until it returns. So a small process watches:
    Python's C-level signal handler writes each signal's number to the wakeup fd (no GIL
    needed), and the watchdog ends the stage with SIGKILL (nothing has been written yet; the
    stage lock is an flock the kernel releases). The exit status is then 137 (killed).

    SIGTERM needs more: TensorFlow's preemption notifier replaces the handler inside that same
    call with one that only sets a flag. So the caller holds SIGTERM blocked in every thread of
    the process (:func:`stages.common.sigterm.held`, make_strategy): a SIGTERM sent to this
    process stays pending, and the watchdog polls for it (``ShdPnd`` in ``/proc/<pid>/status``).
    A SIGTERM to the process group (what a terminal or ``kill -- -PGID`` sends) also reaches the
    watchdog itself. Afterwards the handlers from before are back (TensorFlow's one would ignore
    SIGTERM), and the caller unblocks SIGTERM.
    """
    import subprocess
    import sys

    wake_read, wake_write = os.pipe()
    done_read, done_write = os.pipe()
    os.set_blocking(wake_write, False)
    message = (
        f"error: TF_CONFIG: the cluster of {workers} workers did not form within {timeout_s:g} s "
        "(distribute.cluster_timeout_s): a worker it names is not running, or a host or port is wrong"
    )
    watchdog = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _WATCHDOG]
        + [str(os.getpid()), str(wake_read), str(done_read), str(timeout_s), message],
        pass_fds=(wake_read, done_read),
    )
    os.close(wake_read)
    os.close(done_read)
    # A Python-level handler for both, so that the C-level one writes the wakeup fd (SIGTERM's
    # default action would not); the watchdog acts on it.
    handlers = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_fd = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    log.info("waiting up to %g s for the %d workers TF_CONFIG names", timeout_s, workers)
    try:
        yield
    finally:
        os.write(done_write, b"x")
        watchdog.wait()
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        os.close(wake_write)
        os.close(done_write)
