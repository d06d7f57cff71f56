"""A stage's stderr: TensorFlow's start-up lines dropped, everything real kept (stages/common/cli.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, run
from stages.common.cli import STARTUP_NOISE, filter_stream

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fd-level filter is POSIX")


def stage_like(tmp_path: Path, body: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``body`` as a stage's ``main`` through run_stage, in a process of its own."""
    script = tmp_path / "stage_like.py"
    script.write_text(
        "import os, sys\nfrom stages.common.cli import run_stage, fail\n\ndef main():\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\n\nif __name__ == '__main__':\n    run_stage(main, 'stage_like', lock=False)\n"
    )
    return run([sys.executable, str(script)], tmp_path, check=False, env={"PYTHONPATH": str(ROOT), **(env or {})})


def noise_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(pattern in line for pattern in STARTUP_NOISE)]


def filtered(data: bytes) -> bytes:
    """What filter_stream passes on of ``data`` written to it whole."""
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    os.write(write_in, data)
    os.close(write_in)
    filter_stream(read_in, write_out)
    os.close(write_out)
    return os.read(read_out, 65536)


def test_filter_drops_only_the_listed_lines_and_keeps_bytes_and_partial_lines() -> None:
    data = (
        b"keep me\n"
        + b"I0000 port.cc:153] oneDNN custom operations are on. You may see\n"
        + b"\r 10%|#   | 1/10\r 20%|##  | 2/10"
        + b"\xff\xfe not utf-8\n"
        + b"E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
        + b"no newline at the end"
    )
    assert filtered(data) == (
        b"keep me\n" + b"\r 10%|#   | 1/10\r 20%|##  | 2/10" + b"\xff\xfe not utf-8\n" + b"no newline at the end"
    )


def test_tensorflow_lines_about_a_dead_worker_are_dropped_whole() -> None:
    """Issue 23: a killed worker's `error:` line came after ~6 raw lines of TensorFlow's C++ log."""
    data = (
        b"simple_nn: epoch 3 loss 0.5\n"
        b"E0000 00:00:1796587076.289003   23111 base_collective_executor.cc:252] "
        b"BaseCollectiveExecutor::StartAbort UNAVAILABLE: Error reported from /job:worker/task:1: "
        b"The following tasks are unhealthy (stopped sending heartbeats):\n"
        b"/job:worker/replica:0/task:1\n"
        b"The tasks have crashed. Check the task logs for an earlier error, or scheduler events.\n"
        rb"[type.googleapis.com/tensorflow.CoordinationServiceError='\"\n\n\x06worker\x10\x01']"
        b"\n"
        b"E0000 00:00:1796587076.289077   23111 ring_alg.cc:291] Aborting RingReduce with UNAVAILABLE: "
        b"Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks\n"
        b"/job:worker/replica:0/task:1\n"
        b"The error could be from a previous operation. [type.googleapis.com/tensorflow.DerivedStatus='']\n"
        b"error: simple_nn: a worker of the cluster stopped or cannot be reached (...)\n"
    )
    assert filtered(data) == (
        b"simple_nn: epoch 3 loss 0.5\nerror: simple_nn: a worker of the cluster stopped or cannot be reached (...)\n"
    )


def test_the_error_line_survives_a_dead_worker_message_without_its_end() -> None:
    """A StartAbort message whose status payload never comes (seen under load: the chief's log held no
    `error:` line) must not take the stage's own line with it while the filter waits for that end."""
    data = (
        b"E0000 00:00:1796587076.289003   23111 base_collective_executor.cc:252] "
        b"BaseCollectiveExecutor::StartAbort UNAVAILABLE: Error reported from /job:worker/task:1: "
        b"The following tasks are unhealthy (stopped sending heartbeats):\n"
        b"/job:worker/replica:0/task:1\n"
        b"error: simple_nn: a worker of the cluster stopped or cannot be reached (...)\n"
        b"The tasks have crashed. Check the task logs for an earlier error, or scheduler events.\n"
    )
    assert filtered(data) == (
        b"error: simple_nn: a worker of the cluster stopped or cannot be reached (...)\n"
        b"The tasks have crashed. Check the task logs for an earlier error, or scheduler events.\n"
    )


def test_tensorflow_start_up_lines_are_gone_and_a_real_tensorflow_error_still_shows(tmp_path: Path) -> None:
    body = """
    import tensorflow as tf
    print("stage output", file=sys.stderr)
    tf.matmul(tf.ones([2, 3]), tf.ones([2, 3]))  # shapes do not match: a real error
    """
    result = stage_like(tmp_path, body)
    assert result.returncode == 1
    assert noise_in(result.stderr) == []
    assert "stage output" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "InvalidArgumentError" in result.stderr and "Matrix size-incompatible" in result.stderr
    # The switch shows everything TensorFlow prints (oneDNN's line is printed on every x86 CPU).
    shown = stage_like(tmp_path, body, env={"EAGER_PIPELINE_TF_LOG": "1"})
    assert shown.returncode == 1 and noise_in(shown.stderr) != []
    assert "Matrix size-incompatible" in shown.stderr


def test_error_lines_progress_bars_exit_codes_and_abrupt_exits_are_unaffected(tmp_path: Path) -> None:
    result = stage_like(
        tmp_path,
        """
    from tqdm import tqdm
    for _ in tqdm(range(3), desc="bar"):
        pass
    fail("something the user can fix")
    """,
    )
    assert result.returncode == 2
    assert "bar:   0%" in result.stderr and "bar: 100%" in result.stderr  # (text mode turns its \r into \n)
    assert result.stderr.splitlines()[-1] == "error: something the user can fix"

    # Leaving without atexit (os._exit) or by a C-level abort loses nothing already written.
    result = stage_like(tmp_path, 'sys.stderr.write("last words\\n"); sys.stderr.flush(); os._exit(3)')
    assert result.returncode == 3 and result.stderr == "last words\n"
    result = stage_like(tmp_path, 'os.write(2, b"before the abort\\n"); os.abort()')
    assert result.returncode < 0 and "before the abort" in result.stderr


def test_spawned_worker_processes_write_through_the_filter(tmp_path: Path) -> None:
    (tmp_path / "worker_mod.py").write_text(
        "import os, sys\n"
        "def work(i):\n"
        "    os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "    print(f'worker {i}', file=sys.stderr, flush=True)\n"
        "    return i * i\n"
    )
    result = stage_like(
        tmp_path,
        """
    import multiprocessing
    sys.path.insert(0, os.getcwd())
    import worker_mod
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        print(sum(pool.map(worker_mod.work, range(4))), file=sys.stderr)
    """,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert sorted(lines) == ["14", "worker 0", "worker 1", "worker 2", "worker 3"]


def test_on_a_terminal_the_stage_still_sees_a_terminal_and_draws_its_bars(tmp_path: Path) -> None:
    """stderr a terminal (a pty here): the filter hands the stage a pty, so tqdm (disable=None) still draws."""
    import pty

    script = tmp_path / "stage_like.py"
    script.write_text(
        textwrap.dedent("""
        import os, sys
        from tqdm import tqdm
        from stages.common.cli import run_stage

        def main():
            print("isatty", sys.stderr.isatty(), file=sys.stderr)
            os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on.\\n")
            for _ in tqdm(range(3), desc="bar", disable=None):
                pass

        run_stage(main, "stage_like", lock=False)
    """)
    )
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws nothing in 0 columns
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait(timeout=60) == 0
    text = output.decode()
    assert "isatty True" in text and "\rbar:   0%" in text and "\rbar: 100%" in text
    assert "oneDNN" not in text
    # As wide as the terminal (tqdm leaves its last column free): the size is passed on.
    assert len(text.split("\rbar: 100%")[1].split("\r")[0]) + len("bar: 100%") == 99


def test_ctrl_c_still_prints_the_interrupted_line(tmp_path: Path) -> None:
    """SIGINT to the whole process group (as a terminal's Ctrl-C): the filter outlives the stage's last words."""
    script = tmp_path / "stage_like.py"
    script.write_text(
        textwrap.dedent("""
        import sys, time
        from stages.common.cli import run_stage

        def main():
            print("started", file=sys.stderr, flush=True)
            time.sleep(60)

        run_stage(main, "stage_like", lock=False)
    """)
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    assert process.stderr is not None
    assert process.stderr.readline() == b"started\n"
    os.killpg(process.pid, 2)  # SIGINT to the stage and its filter
    rest = process.stderr.read()
    assert process.wait(timeout=30) == 130
    assert rest == b"stage_like: interrupted; outputs left as they were\n"
