"""The package as pip builds it: a non-editable install must hold every module of ``stages``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT, run


def test_wheel_holds_every_stages_module(tmp_path: Path) -> None:
    # Built from a copy of the tracked files: setuptools writes build/ into the source tree,
    # and a stale build/ there would hide a missing package.
    source = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    # --no-build-isolation: use the venv's setuptools (the tests stay offline).
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(tmp_path),
            str(source),
        ],
        cwd=tmp_path,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    packed = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    sources = {name for name in tracked.splitlines() if name.startswith("stages/") and name.endswith(".py")}
    assert sources, "no sources found"
    missing = sorted(sources - packed)
    assert not missing, f"{wheel.name} lacks {missing}"
