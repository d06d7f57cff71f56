"""What a timing or a result needs to say about the machine it came from."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def machine_info(packages: Iterable[str] = ()) -> dict[str, Any]:
    """CPU model, cores, architecture, the vector instruction sets the CPU offers (from
    /proc/cpuinfo on Linux), the numerics mode (stages/common/numerics.py), Python and the
    versions of ``packages``: the speed and the last bits of TensorFlow's CPU results depend
    on all of them."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    vector = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    info: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "vector_isa": vector,
        "numerics": os.environ.get("EAGER_PIPELINE_NUMERICS", "reproducible"),
        "python": platform.python_version(),
    }
    for package in packages:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    return info
