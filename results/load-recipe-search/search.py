"""Run one load-forecast recipe on the real Spain series in a scratch project.

    python search.py NAME key=value ...   (dotted params keys over recipes/real-data.yaml's)

Scratch project per run: params.yaml = the worktree's + the recipe's tfrecords_series /
train_load_rnn keys + series path + the overrides; `stages` symlinked to the worktree's.
The raw series is made once; the TFRecords once per tfrecords_series section.
Keeps params.yaml and metrics json under OUT/NAME.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

WT = Path("/work/wt-24load")
ROOT = Path("/work/scratch24load")
OUT = WT / "results/load-recipe-search/runs"
PY = str(WT / ".venv/bin/python")


def setp(tree, key, value):
    *path, last = key.split(".")
    for k in path:
        tree = tree.setdefault(k, {})
    tree[last] = value


def project(name, params):
    d = ROOT / "work" / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    (d / "stages").symlink_to(WT / "stages")
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return d


def run(cmd, cwd):
    # The stage's log names test figures: kept in a file, not shown while choosing.
    with open(cwd / "stage.log", "a") as log:
        subprocess.run(["nice", "-n", "10", PY, "-m", cmd], cwd=cwd, check=True, stdout=log, stderr=log)


def main():
    name, *sets = sys.argv[1:]
    params = yaml.safe_load((WT / "params.yaml").read_text())
    recipe = yaml.safe_load((WT / "recipes/real-data.yaml").read_text())
    for section in ("tfrecords_series", "train_load_rnn"):
        params[section].update(recipe[section])
    params["series"].update(source="path", path="/work/realdata/spain_hourly_entsoe.csv")
    for s in sets:
        k, v = s.split("=", 1)
        setp(params, k, yaml.safe_load(v))
    raw = ROOT / "raw"
    if not (raw / "data/raw/series/load.csv").exists():
        d = project("_raw", params)
        run("stages.make_series", d)
        shutil.copytree(d / "data", raw / "data")
    sections = json.dumps([params["series"], params["tfrecords_series"]], sort_keys=True)
    key = hashlib.sha256(sections.encode()).hexdigest()[:12]  # TFRecords made once per section
    tfr = ROOT / "tfrecords" / key
    if not tfr.exists():
        d = project("_tfr_" + key, params)
        shutil.copytree(raw / "data", d / "data")
        run("stages.tfrecords_series", d)
        shutil.copytree(d / "data/tfrecords/series", tfr)
    d = project(name, params)
    (d / "data/tfrecords").mkdir(parents=True)
    (d / "data/tfrecords/series").symlink_to(tfr)
    start = time.monotonic()
    run("stages.train_load_rnn", d)
    wall = round(time.monotonic() - start, 1)
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    kept = {k: params[k] for k in ("seed", "series", "tfrecords_series", "train_load_rnn")}
    (out / "params.yaml").write_text(yaml.safe_dump(kept, sort_keys=False))
    metrics = json.loads((d / "metrics/load_forecast.json").read_text())
    (out / "load_forecast.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "wall_s.txt").write_text(f"{wall}\n")
    # Only the validation figure is shown: the test figures are read for the chosen recipe alone.
    print(
        f"RESULT {name}: valid_mape {metrics['valid_mape']:.4f} epochs {metrics['epochs']} wall {wall}s",
        *sets,
    )


main()
