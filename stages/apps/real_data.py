"""Command (not a DVC stage): the whole pipeline on the three real datasets, as one DVC experiment.

    make real                                        # sources as recipes/real-data.yaml says (urls)
    make real FER2013=~/fer2013 IMDB=~/aclImdb_v1.tar.gz SERIES=~/Total_Load_ES.csv
    python -m stages.apps.real_data --fer2013 PATH --imdb PATH --series PATH [--name NAME] [--dry-run]

The recipe (every param that differs from params.yaml's sample defaults: the
data sources and the real-data training recipes, each with its reason) lives in
``recipes/real-data.yaml``. This command turns it into
``dvc exp run --temp --name NAME --set-param key=value ...``: the experiment runs
in a temporary copy, so the workspace keeps the sample run, and ``dvc exp show``
puts the two side by side (``dvc exp apply NAME`` or ``dvc exp branch NAME``
takes it over). Paths given here replace the recipe's sources by
``source: path``.

When the experiment has finished, its metrics, key plots, the params it used,
the data reports, the wall time of each stage and the machine are copied into
``results/real-data/`` (read from the experiment's commit, so what is kept is
exactly what DVC recorded), for committing beside the code.
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from stages.common.cli import StageError, run_stage
from stages.common.machine import machine_info

RECIPE = Path("recipes/real-data.yaml")
RESULTS = Path("results/real-data")
KEPT_FILES = ("params.yaml", "dvc.lock", "reports/summary.md")  # besides metrics/*.json and KEPT_PLOTS
KEPT_PLOTS = re.compile(r"plots/[^/]+/[^/]+\.(png|tsv|csv|json)")
SOURCES = {"fer2013": "fer2013", "imdb": "imdb", "series": "series"}  # option -> params section


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def overrides(recipe: dict[str, Any], paths: dict[str, str | None]) -> dict[str, Any]:
    """The params to set: the recipe's, with ``source: path`` for each dataset given a path."""
    values = flatten(recipe)
    for section, path in paths.items():
        if path:
            values[f"{section}.source"] = "path"
            values[f"{section}.path"] = str(Path(path).expanduser().resolve())
    return values


def set_param_args(values: dict[str, Any]) -> list[str]:
    """``--set-param key=value`` arguments; values in YAML flow style, as DVC parses them."""
    args = []
    for key, value in values.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        args += ["--set-param", f"{key}={text}"]
    return args


def stage_seconds(lines: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Wall time of each stage from DVC's "Running stage 'x':" lines and their arrival times."""
    starts = [(t, m[1]) for t, line in lines if (m := re.match(r"Running stage '([^']+)'", line))]
    bounds = [t for t, _ in starts[1:]] + [end]
    # Not strict: with no stage run (all up to date) there are no starts, but one bound.
    return {name: round(stop - start, 1) for (start, name), stop in zip(starts, bounds, strict=False)}


def run_experiment(command: list[str]) -> tuple[int, dict[str, float], float]:
    """Run ``dvc exp run``, echoing its output; exit code, per-stage and total seconds."""
    start = time.monotonic()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append((time.monotonic(), line.strip()))
    end = time.monotonic()
    return proc.returncode, stage_seconds(lines, end), round(end - start, 1)


def experiment_rev(name: str, baseline: str) -> str:
    """The commit of the experiment ``name`` run on the commit ``baseline``. DVC keeps it as
    refs/exps/<baseline[:2]>/<baseline[2:]>/<name>; the same name recurs on other baselines (a
    second run the same day), so the baseline picks the one this run made."""
    ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise StageError(f"experiment {name!r}: no ref {ref} (did dvc exp run record it?)")
    return proc.stdout.strip()


def keep_results(rev: str, info: dict[str, Any], values: dict[str, Any], dest: Path = RESULTS) -> list[str]:
    """Copy the experiment's metrics, plots, summary page, params and lock into ``dest``;
    write run.json and recipe.yaml. The folder is replaced whole, except its README.md (a
    person's account of the runs), which is kept."""
    from stages.common.outputs import atomic_outputs, write_json

    listing = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    wanted = [
        name
        for name in listing
        if name in KEPT_FILES or (name.startswith("metrics/") and name.endswith(".json")) or KEPT_PLOTS.fullmatch(name)
    ]
    readme = dest / "README.md"
    notes = readme.read_bytes() if readme.is_file() else None
    with atomic_outputs() as out:
        folder = out.directory(dest)
        if notes is not None:
            (folder / "README.md").write_bytes(notes)
        for name in wanted:
            data = subprocess.run(["git", "show", f"{rev}:{name}"], capture_output=True, check=True).stdout
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (folder / "recipe.yaml").write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
        write_json(folder / "run.json", info)
    return wanted


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stages.apps.real_data", description="Run the pipeline on the real datasets as a DVC experiment."
    )
    for option in SOURCES:
        parser.add_argument(f"--{option}", metavar="PATH", help=f"local {option} data (sets {option}.source: path)")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help=f"params to set (default: {RECIPE})")
    parser.add_argument("--name", default=f"real-{datetime.date.today():%Y%m%d}", help="experiment name")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where to keep the results ({RESULTS})")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc command and stop")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        recipe = yaml.safe_load(args.recipe.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise StageError(f"{args.recipe}: cannot read the recipe: {exc}") from None
    if not isinstance(recipe, dict):
        raise StageError(f"{args.recipe}: expected a mapping of params sections")
    values = overrides(recipe, {section: getattr(args, option) for option, section in SOURCES.items()})
    for section in SOURCES.values():
        path = values.get(f"{section}.path")
        if values.get(f"{section}.source") == "path" and (not path or not Path(path).exists()):
            raise StageError(f"{section}.path: {path}: not found")
    command = ["dvc", "exp", "run", "--temp", "--name", args.name, *set_param_args(values)]
    print(" ".join(command if len(command) < 40 else command[:8] + ["..."]), flush=True)
    if args.dry_run:
        for key, value in values.items():
            print(f"  {key} = {value!r}")
        return
    started = datetime.datetime.now(datetime.UTC)
    # The code the experiment runs: its ref hangs under this commit, even if HEAD moves during the run.
    baseline = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    code, stages, total = run_experiment(command)
    if code != 0:
        raise StageError(f"dvc exp run failed (exit {code}); the workspace is unchanged")
    rev = experiment_rev(args.name, baseline)
    info = {
        "experiment": args.name,
        "experiment_rev": rev,
        "baseline_rev": baseline,
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_seconds": total,
        "stage_seconds": stages,
        "machine": machine_info(("tensorflow", "dvc")),
    }
    kept = keep_results(rev, info, values, args.results)
    print(
        f"{len(kept)} files of experiment {args.name} ({rev[:8]}) -> {args.results}/ (commit them to keep them);"
        f" dvc exp show compares it with the workspace"
    )


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]), "real_data", lock=False)  # DVC's experiment lock serializes runs
