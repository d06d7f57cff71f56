"""Start a command as N workers of one local ``tf.distribute`` cluster.

    python -m stages.apps.launch_workers -n 2 -- python -m stages.simple_nn

Picks N free ports on 127.0.0.1 and runs the command N times, each with the
``TF_CONFIG`` of one worker (worker 0 is the chief, which writes the outputs),
in the current folder. The stage must read ``distribute.strategy: multi_worker``
from params.yaml (a stage with ``none`` refuses to run under TF_CONFIG).

Worker 0's output passes as it is (straight to the terminal, so its progress bars
draw); the others' lines are prefixed ``worker i:`` and relayed whole, between
two of worker 0's writes (Python's ``print`` writes a line's text and its newline
separately when the output is not a terminal, so a relayed line can land between them).
When a worker fails, the others stop by themselves (their collectives fail once
its heartbeats stop, about 10 s); any still running ``--grace`` seconds later
are terminated. The exit status is the first failure's (0 when all succeed).
Ctrl-C stops every worker.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from stages.common import sigterm

EXIT_USAGE = 2


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` now (all bound at once, so no two are the same)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_configs(ports: Sequence[int], host: str = "127.0.0.1") -> list[str]:
    """The ``TF_CONFIG`` of each worker of a cluster on ``host``'s ``ports``."""
    cluster = {"worker": [f"{host}:{port}" for port in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(len(ports))]


def _prefix_lines(stream: IO[bytes], out: IO[bytes], prefix: bytes) -> None:
    for line in iter(stream.readline, b""):
        out.write(prefix + line)
        out.flush()
    stream.close()


def launch(command: Sequence[str], workers: int, grace_s: float = 90.0) -> int:
    """Run ``command`` as ``workers`` local workers; return the first failure's exit status, or 0."""
    configs = tf_configs(free_ports(workers))
    processes: list[subprocess.Popen[bytes]] = []
    threads: list[threading.Thread] = []
    for index, config in enumerate(configs):
        env = {**os.environ, "TF_CONFIG": config}
        pipe = None if index == 0 else subprocess.PIPE
        try:
            process = subprocess.Popen(command, env=env, stdout=pipe, stderr=pipe)
        except OSError as exc:  # no such command, not executable
            _stop(processes)
            print(f"error: {command[0]}: cannot run it: {exc.strerror or exc}", file=sys.stderr, flush=True)
            return EXIT_USAGE
        if index > 0:
            for stream, out in ((process.stdout, sys.stdout.buffer), (process.stderr, sys.stderr.buffer)):
                assert stream is not None
                thread = threading.Thread(
                    target=_prefix_lines, args=(stream, out, f"worker {index}: ".encode()), daemon=True
                )
                thread.start()
                threads.append(thread)
        processes.append(process)

    status = 0
    deadline: float | None = None
    try:
        while any(p.poll() is None for p in processes):
            for index, process in enumerate(processes):
                code = process.poll()
                if code not in (None, 0) and status == 0:
                    status = code if code > 0 else 128 - code
                    deadline = time.monotonic() + grace_s
                    print(
                        f"launch_workers: worker {index} exited with status {code}; "
                        f"the others get {grace_s:g} s to stop",
                        file=sys.stderr,
                        flush=True,
                    )
            if deadline is not None and time.monotonic() > deadline:
                print("launch_workers: terminating the workers still running", file=sys.stderr, flush=True)
                _stop(processes)
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        _stop(processes, signal.SIGINT)
        status = status or 130
    for index, process in enumerate(processes):
        code = process.wait()
        if code != 0 and status == 0:  # every worker ended between two polls
            status = code if code > 0 else 128 - code
            print(f"launch_workers: worker {index} exited with status {code}", file=sys.stderr, flush=True)
    for thread in threads:
        thread.join(timeout=5)
    return status


def _stop(processes: Sequence[subprocess.Popen[bytes]], first: int = signal.SIGTERM, wait_s: float = 10.0) -> None:
    """Send ``first`` to the workers still running, then SIGKILL to those that outlive ``wait_s``."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(first)
    deadline = time.monotonic() + wait_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.apps.launch_workers",
        description="Run a command as N workers of a local tf.distribute cluster (TF_CONFIG on 127.0.0.1).",
    )
    parser.add_argument("-n", "--workers", type=int, default=2, help="number of workers (default 2)")
    parser.add_argument(
        "--grace",
        type=float,
        default=90.0,
        help="seconds the others get to stop by themselves after a worker fails (default 90)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command each worker runs")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command: python -m stages.apps.launch_workers -n 2 -- python -m stages.simple_nn")
    if args.workers < 1:
        parser.error(f"-n must be at least 1 (got {args.workers})")
    if not math.isfinite(args.grace) or args.grace < 0:  # nan: the deadline would never pass
        parser.error(f"--grace must be a finite number of seconds, 0 or more (got {args.grace:g})")
    return launch(command, args.workers, args.grace)


if __name__ == "__main__":
    sigterm.release()  # blocked at import if TF_CONFIG is set here (stages/common/sigterm.py)
    sys.exit(main())
