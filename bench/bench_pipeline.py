"""Benchmark: the default pipeline's wall time (`dvc repro` on the embedded samples) at git revisions.

For each revision (default: ``HEAD``), a fresh clone of this repository is
checked out in a temporary folder, given this checkout's ``.venv`` (the
pinned dependencies; a revision whose lock file differs would need its own),
and runs ``dvc repro`` from nothing, as a user's first ``make repro`` does
after the set-up. Each revision runs ``--rounds`` times, in turn, so that a
slow spell of a shared machine does not land on one revision only. Also
checks that the run leaves ``git status`` clean (the committed outputs
reproduced byte for byte). Results: ``bench/results/pipeline.json``.

    .venv/bin/python -m bench.bench_pipeline                      # HEAD
    .venv/bin/python -m bench.bench_pipeline --revs 4466cc4 HEAD  # before issue 24, and now
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, load_average, write_result

RESULT = ROOT / "bench/results/pipeline.json"


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def repro_seconds(rev: str, scratch: Path) -> dict[str, Any]:
    """One ``dvc repro`` from nothing in a fresh clone at ``rev``: its wall time and whether it left git clean."""
    project = scratch / "project"
    shutil.rmtree(project, ignore_errors=True)
    git("clone", "-q", str(ROOT), str(project))
    git("checkout", "-q", rev, cwd=project)
    (project / ".venv").symlink_to(ROOT / ".venv")
    venv_bin = str(ROOT / ".venv" / "bin")
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    log = scratch / "repro.log"
    load_before = load_average()
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(["dvc", "repro"], cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench_pipeline: dvc repro at {rev} failed (status {done.returncode}); its log: {log}")
    changed = [line for line in git("status", "--porcelain", cwd=project).splitlines() if line != "?? .venv"]
    return {"seconds": round(seconds, 1), "git_status_clean": not changed, "load_average_before": load_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--revs", nargs="+", default=["HEAD"], help="git revisions to time (default: HEAD)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each revision, taken in turn")
    args = parser.parse_args()

    commits = {rev: git("rev-parse", "--short", rev) for rev in args.revs}
    runs: dict[str, list[dict[str, Any]]] = {rev: [] for rev in args.revs}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        for round_ in range(args.rounds):
            for rev in args.revs:
                run = repro_seconds(rev, Path(tmp))
                runs[rev].append(run)
                print(f"bench_pipeline: {rev} ({commits[rev]}) round {round_ + 1}: {run['seconds']} s", flush=True)
    result = {
        "what": "wall time of `dvc repro` from nothing in a fresh clone (the default pipeline on the embedded samples)",
        "revisions": {
            rev: {
                "commit": commits[rev],
                "seconds": [run["seconds"] for run in runs[rev]],
                "min_seconds": min(run["seconds"] for run in runs[rev]),
                "git_status_clean": all(run["git_status_clean"] for run in runs[rev]),
                "load_average_before": [run["load_average_before"] for run in runs[rev]],
            }
            for rev in args.revs
        },
    }
    write_result(RESULT, result)
    print(f"bench_pipeline: -> {RESULT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
