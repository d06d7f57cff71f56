"""Benchmark: FER2013 CSV -> TFRecords, the ``tfrecords_fer2013`` stage on the ``full`` sample preset.

Copies the stages and params.yaml into a temporary project, sets
``fer2013.sample.preset: full`` (35,887 faces, ≈ 290 MB of CSV, written by
``download_fer2013``; not timed), then times the stage the way DVC runs it
(``python -m stages.tfrecords_fer2013``: process start, CSV parsing, PNG
encoding in the pool, writing) with 2 workers and with 1, and checks both
wrote the same bytes. Target: under 20 s on 2 cores. Prints a table and writes
``bench/results/tfrecords_fer2013.json``; the machine may be shared, so the
load average before each run is recorded.

    .venv/bin/python -m bench.bench_tfrecords_fer2013
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench import common
from bench.common import load_average, stage, write_result

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench/results/tfrecords_fer2013.json"
TARGET_SECONDS = 20.0
STAGE_PARAMS = {"num_shards": 4, "compression": "none"}


def make_project(dest: Path) -> Path:
    """A project copy with the full FER2013 sample (and params for the TFRecord stages)."""

    def full_sample(params: dict[str, Any]) -> None:
        params["fer2013"]["source"] = "sample"
        params["fer2013"]["sample"]["preset"] = "full"
        params.setdefault("tfrecords_fer2013", {}).update(STAGE_PARAMS, workers=2)

    return common.make_project(dest, full_sample, stages=["download_fer2013"])


def digest(directory: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        sha.update(path.name.encode() + path.read_bytes())
    return sha.hexdigest()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench_fer2013_") as tmp:
        project = make_project(Path(tmp) / "project")
        out = project / "data/tfrecords/fer2013"
        runs: dict[str, dict[str, Any]] = {}
        digests = set()
        for workers in (2, 1):
            params_path = project / "params.yaml"
            params = yaml.safe_load(params_path.read_text())
            params["tfrecords_fer2013"]["workers"] = workers
            params_path.write_text(yaml.safe_dump(params, sort_keys=False))
            load = load_average()
            seconds = stage(project, "tfrecords_fer2013")
            runs[f"workers_{workers}"] = {"seconds": round(seconds, 2), "load_average_before": load}
            digests.add(digest(out))
        spec = json.loads((out / "spec.json").read_text())
        size = sum(p.stat().st_size for p in out.iterdir())
    faces = sum(s["examples"] for s in spec["splits"].values())
    result = {
        "faces": faces,
        **runs,
        "faces_per_s": round(faces / runs["workers_2"]["seconds"]),
        "target_seconds": TARGET_SECONDS,
        "target_met": runs["workers_2"]["seconds"] < TARGET_SECONDS,
        "same_bytes_for_1_and_2_workers": len(digests) == 1,
        "output_mb": round(size / 1e6, 1),
        "params": STAGE_PARAMS,
        "note": "wall time of `python -m stages.tfrecords_fer2013` (start-up and CSV parsing included); "
        "2 cores may be shared with other processes: see the load averages",
    }
    write_result(RESULTS, result)
    print(f"{'FER2013 -> TFRecords':28s} {'seconds':>8s} {'faces/s':>8s}")
    for name in ("workers_2", "workers_1"):
        print(f"{name:28s} {runs[name]['seconds']:8.2f} {faces / runs[name]['seconds']:8.0f}")
    print(
        f"target < {TARGET_SECONDS:.0f} s: {'met' if result['target_met'] else 'NOT met'}; "
        f"same bytes: {result['same_bytes_for_1_and_2_workers']}; {result['output_mb']} MB "
        f"-> {RESULTS.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
