"""What the benchmarks share: a project copy to run stages in, and how a result is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ROOT", "load_average", "machine_info", "make_project", "stage", "write_result"]


def machine_info(packages: Iterable[str] = ("tensorflow", "numpy")) -> dict[str, Any]:
    """stages.common.machine.machine_info, imported when called: importing ``stages`` pins the
    numerics of this process (stages/__init__.py), which a benchmark decides for itself."""
    from stages.common.machine import machine_info as info

    return info(packages)


def stage(project: Path, name: str, env: dict[str, str] | None = None) -> float:
    """Run one stage in ``project`` as DVC does (its own process); its wall time in seconds."""
    environment = dict(os.environ, PYTHONPATH=str(project), TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", f"stages.{name}"],
        cwd=project,
        env=environment,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def make_project(dest: Path, edit: Callable[[dict[str, Any]], None] | None = None, stages: Iterable[str] = ()) -> Path:
    """A copy of the project's code and params.yaml in ``dest``, the params changed by
    ``edit(params)``, after which ``stages`` run there (not timed)."""
    shutil.copytree(ROOT / "stages", dest / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if edit is not None:
        edit(params)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in stages:
        stage(dest, name)
    return dest


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: these machines may be shared, so record them."""
    return [round(x, 2) for x in os.getloadavg()]


def write_result(path: Path, result: dict[str, Any]) -> None:
    """The result as indented JSON, with the machine it was measured on (unless given)."""
    result = {**result, "machine": result.get("machine") or machine_info()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
