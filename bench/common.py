"""What every benchmark result records about the machine it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_info() -> dict:
    """CPU model, cores, architecture, the vector instruction sets the CPU offers (from
    /proc/cpuinfo on Linux) and the numerics mode (stages/common/numerics.py): the speed
    of TensorFlow's CPU kernels depends on all of them."""
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
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "vector_isa": vector,
        "numerics": os.environ.get("EAGER_PIPELINE_NUMERICS", "reproducible"),
    }
