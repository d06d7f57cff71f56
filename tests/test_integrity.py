"""Nothing lost, nothing silently wrong (issue 12): damaged inputs, failed writes, concurrent runs.

Each case is built for real (a flipped bit, a cut shard, a read-only folder, a
held lock) and runs the stage as DVC does. A failure must be one ``error:``
line naming the file, key or member, exit 2, leave the previous outputs
byte-identical and no temporary file anywhere in the project.

Root ignores file permissions, so the read-only cases run the stage with
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped (``capsh``): still root, but
bound by the permission bits like any user.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run, stage_env
from helpers import snapshot as snapshot_of
from stages.common.cli import StageError
from stages.common.params import load_params
from stages.common.tfrecords import read_records, shard_paths
from stages.samples.series import entsoe_csv
from stages.simple_nn import SimpleNNParams
from stages.toy_data import ToyDataParams
from test_download_fer2013 import fer_csv, make_rows, tar_gz, zip_file
from test_download_imdb import make_tarball, review_files

OUTPUT_TOPS = ("data", "metrics", "models", "plots")
SHORT_SERIES = {"source": "synthetic", "synthetic": {"start": "2015-01-01", "end": "2015-06-30"}}
TEMPORARY = re.compile(r"\.(tmp|old)$|\.tmp\.|^\.(imdb-input|fer2013-input)\.")


# --- helpers --------------------------------------------------------------------------------------


def merged(base: object, values: dict) -> dict:
    """``base`` with ``values`` set, nested sections key by key: params.yaml keeps every other value
    (it is the one source of them; a key left out is an error)."""
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in values.items():
        out[key] = merged(out.get(key), value) if isinstance(value, dict) else value
    return out


def set_params(root: Path, section: str, values: dict) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section] = merged(params.get(section), values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage(root: Path, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *args],
        cwd=root,
        env=env or stage_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def unprivileged(root: Path, name: str) -> subprocess.CompletedProcess:
    """Run a stage bound by file permissions (see the module docstring)."""
    return as_user([sys.executable, "-m", f"stages.{name}"], root)


def as_user(command: list[str], root: Path) -> subprocess.CompletedProcess:
    """Run ``command`` in ``root`` bound by file permissions (see the module docstring)."""
    if os.geteuid() != 0:
        return run(command, root, check=False)
    capsh = shutil.which("capsh")
    if capsh is None:
        pytest.skip("capsh (libcap2-bin) is not installed: cannot drop root's CAP_DAC_OVERRIDE")
    return run(
        [capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", shlex.join(command)], root, check=False
    )


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr


def failed(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The one ``error:`` line of a failed run (exit 2, no traceback), checked for ``fragments``."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def snapshot(root: Path) -> dict[str, bytes]:
    return snapshot_of(root, OUTPUT_TOPS)


def leftovers(root: Path) -> list[str]:
    """Temporary files and folders anywhere in the project (ours and the stages' scratch folders)."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if TEMPORARY.search(p.name) and ".git" not in p.relative_to(root).parts
    )


# --- 1. damaged archives --------------------------------------------------------------------------


def flip_bit(path: Path, at: float) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def cut_tail(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:-n])


@pytest.mark.parametrize("form", ["tar.gz", "zip"])
@pytest.mark.parametrize("damage", ["bit flipped two thirds in", "last 20 bytes missing"])
def test_a_damaged_fer2013_archive_is_reported_as_one(workdir: Path, tmp_path: Path, form: str, damage: str) -> None:
    text = fer_csv(make_rows(40)).encode()
    if form == "tar.gz":
        archive = tar_gz(tmp_path / "fer2013.tar.gz", {"fer2013/README": b"readme\n", "fer2013/fer2013.csv": text})
    else:
        archive = zip_file(tmp_path / "fer2013.zip", {"fer2013.csv": text})
    set_params(workdir, "fer2013", {"source": "path", "path": str(archive)})
    ok(stage(workdir, "download_fer2013"))
    before = snapshot(workdir)
    if damage.startswith("bit"):
        flip_bit(archive, 2 / 3)
    else:
        cut_tail(archive, 20)
    failed(stage(workdir, "download_fer2013"), f"error: {archive}", "corrupt")
    assert snapshot(workdir) == before
    assert leftovers(workdir) == []


def test_a_fer2013_folder_or_unreadable_file_is_named(workdir: Path, tmp_path: Path) -> None:
    set_params(workdir, "fer2013", {"source": "path", "path": str(tmp_path)})
    failed(stage(workdir, "download_fer2013"), str(tmp_path), "is a folder")
    source = tmp_path / "fer2013.csv"
    source.write_text(fer_csv(make_rows(7)))
    source.chmod(0o000)
    set_params(workdir, "fer2013", {"source": "path", "path": str(source)})
    failed(unprivileged(workdir, "download_fer2013"), f"error: {source}: cannot read it: Permission denied")
    assert snapshot(workdir) == {} and leftovers(workdir) == []


# --- 2 and 7. TFRecord shards and spec.json that disagree -----------------------------------------


def test_a_shard_cut_at_a_record_boundary_or_a_wrong_spec_stops_training(workdir: Path) -> None:
    set_params(workdir, "series", SHORT_SERIES)
    set_params(workdir, "train_load_rnn", {"max_epochs": 2})
    ok(stage(workdir, "make_series"))
    ok(stage(workdir, "tfrecords_series"))
    data_dir = workdir / "data/tfrecords/series"
    shard = shard_paths(data_dir, "train")[0]
    whole = shard.read_bytes()
    records = list(read_records(shard))
    keep = len(records) - 17
    shard.write_bytes(whole[: sum(16 + len(r) for r in records[:keep])])  # valid framing, fewer records
    failed(
        stage(workdir, "train_load_rnn"),
        f"error: {shard.relative_to(workdir)}: {keep} records",
        f"give it {len(records)}",
    )
    assert not (workdir / "metrics/load_forecast.json").exists() and not (workdir / "models").exists()
    # 11: failing before the first epoch leaves no empty checkpoint folder.
    assert [p.name for p in (workdir / "checkpoints").rglob("*")] == []

    shard.write_bytes(whole)
    spec = json.loads((data_dir / "spec.json").read_text())
    spec["look_back"] = 4  # the records hold 5 days
    (data_dir / "spec.json").write_text(json.dumps(spec))
    failed(stage(workdir, "train_load_rnn"), "data/tfrecords/series/spec.json does not fit the records")
    assert not (workdir / "metrics/load_forecast.json").exists() and leftovers(workdir) == []


# --- 3 and 4. replacing outputs -------------------------------------------------------------------


def test_a_failed_replace_keeps_every_previous_output(workdir: Path) -> None:
    set_params(workdir, "imdb", {"sample": {"per_class": 5}})
    ok(stage(workdir, "download_imdb"))
    before = snapshot(workdir)
    set_params(workdir, "imdb", {"sample": {"per_class": 6}})  # new outputs differ from the old
    locked = workdir / "data/raw/imdb/aclImdb/test"
    locked.chmod(0o555)
    failed(
        unprivileged(workdir, "download_imdb"),
        "error: data/raw/imdb: cannot replace it",
        "data/raw/imdb/aclImdb/test is not writable",
    )
    assert snapshot(workdir) == before
    assert leftovers(workdir) == []
    locked.chmod(0o755)
    ok(stage(workdir, "download_imdb"))
    assert json.loads((workdir / "metrics/data_imdb.json").read_text())["reviews"]["total"] == 24


@pytest.mark.parametrize("read_only", ["metrics", "data/raw"])
def test_a_read_only_output_folder_is_one_line(workdir: Path, read_only: str) -> None:
    set_params(workdir, "series", SHORT_SERIES)
    ok(stage(workdir, "make_series"))
    before = snapshot(workdir)
    set_params(workdir, "series", {"synthetic": {"start": "2015-01-01", "end": "2015-05-31"}})
    (workdir / read_only).chmod(0o555)
    failed(unprivileged(workdir, "make_series"), f"error: {read_only}/", "Permission denied")
    assert snapshot(workdir) == before
    assert leftovers(workdir) == []


def test_temporaries_of_a_killed_run_are_removed_by_the_next(workdir: Path) -> None:
    stale = [
        workdir / "metrics/.data_series.json.k1ll3d_x.tmp",
        workdir / "data/raw/.series.k1ll3d_x.tmp/load.csv",
        workdir / "data/raw/.series.k1ll3d_y.old/series/load.csv",
    ]
    other = workdir / "metrics/.load_forecast.json.k1ll3d_x.tmp"  # another stage's: not ours to remove
    for path in [*stale, other]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    set_params(workdir, "series", SHORT_SERIES)
    ok(stage(workdir, "make_series"))
    assert leftovers(workdir) == ["metrics/.load_forecast.json.k1ll3d_x.tmp"]


# --- 5. non-finite params and diverging training --------------------------------------------------


@pytest.mark.parametrize(
    ("section", "model", "key", "value"),
    [
        ("simple_nn", SimpleNNParams, ["learning_rate"], math.inf),
        ("simple_nn", SimpleNNParams, ["checkpoint_every_s"], math.nan),
        ("toy_data", ToyDataParams, ["moons", "noise"], math.inf),
    ],
)
def test_non_finite_params_are_refused(workdir: Path, section: str, model, key: list[str], value: float) -> None:
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    node = params[section]
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(StageError, match=rf"{section}\.{'.'.join(key)}: must be a finite number"):
        load_params(section, model, workdir / "params.yaml")


def test_a_diverging_training_stops_and_keeps_the_previous_outputs(workdir: Path) -> None:
    ok(stage(workdir, "toy_data"))
    set_params(workdir, "simple_nn", {"epochs": 5})
    ok(stage(workdir, "simple_nn"))
    before = snapshot(workdir)
    set_params(workdir, "simple_nn", {"learning_rate": 1e30})
    failed(stage(workdir, "simple_nn"), "error: simple_nn: training diverged at epoch", "loss is nan")
    assert snapshot(workdir) == before and leftovers(workdir) == []
    set_params(workdir, "simple_nn", {"learning_rate": math.inf})
    assert (
        failed(stage(workdir, "simple_nn"))
        == "error: params.yaml: simple_nn.learning_rate: must be a finite number (got inf)"
    )


# --- 6. ~ in path params --------------------------------------------------------------------------


def test_tilde_is_expanded_in_every_path_param(workdir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "load.csv").write_text(entsoe_csv(dt.date(2015, 1, 1), dt.date(2015, 1, 31), 1, 300.0, 0.0))
    for name, data in review_files().items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_bytes(data)
    (home / "fer2013.csv").write_text(fer_csv(make_rows(7)))
    set_params(workdir, "series", {"source": "path", "path": "~/load.csv"})
    set_params(workdir, "imdb", {"source": "path", "path": "~/aclImdb"})
    set_params(workdir, "fer2013", {"source": "path", "path": "~/fer2013.csv"})
    env = stage_env() | {"HOME": str(home)}
    for name in ("make_series", "download_imdb", "download_fer2013"):
        ok(stage(workdir, name, env=env))
    # The committed data reports name a local source by its file name, not by the user's folders.
    assert json.loads((workdir / "metrics/data_series.json").read_text())["source_location"] == "load.csv"
    assert json.loads((workdir / "metrics/data_imdb.json").read_text())["source_location"] == "aclImdb"
    assert json.loads((workdir / "metrics/data_fer2013.json").read_text())["source_location"] == "fer2013.csv"


# --- 8. long gaps in the series -------------------------------------------------------------------


def test_a_year_long_gap_stops_make_series_naming_it(workdir: Path, tmp_path: Path) -> None:
    export = entsoe_csv(dt.date(2015, 1, 1), dt.date(2017, 1, 31), 1, 300.0, 0.0).splitlines(keepends=True)
    source = tmp_path / "load.csv"
    source.write_text("".join(line for line in export if not line.startswith('"') or ".2016 " not in line[:20]))
    set_params(workdir, "series", {"source": "path", "path": str(source)})
    failed(
        stage(workdir, "make_series"),
        f"error: {source}: no load values for 8784 hours",
        "from 2015-12-31T23:00:00Z to 2016-12-31T22:00:00Z",
        "series.max_gap_hours: 72",
    )
    assert snapshot(workdir) == {}
    set_params(workdir, "series", {"max_gap_hours": 9000})
    ok(stage(workdir, "make_series"))
    report = json.loads((workdir / "metrics/data_series.json").read_text())
    assert report["longest_gap_hours"] == 8784 and report["gap_examples"][0]["hours"] == 8784


# --- 9. one run of a stage at a time --------------------------------------------------------------


def test_a_second_run_of_a_stage_fails_at_once_while_the_first_holds_the_lock(workdir: Path) -> None:
    set_params(workdir, "series", SHORT_SERIES)
    lock = workdir / ".dvc/tmp/stage-make_series.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a running make_series holds
        failed(stage(workdir, "make_series"), "error: another run of make_series holds the lock")
    assert snapshot(workdir) == {} and leftovers(workdir) == []
    # Two real runs at once: each either finishes or stops on the lock; nothing is left behind.
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "stages.make_series"],
            cwd=workdir,
            env=stage_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]  # type: ignore[union-attr]  # stderr=PIPE
    assert any(code == 0 for code, _ in results), results
    for code, stderr in results:
        assert code == 0 or "another run of make_series holds the lock" in stderr, stderr
    assert leftovers(workdir) == []


# --- 10 and 11. IMDB sources: messages and links --------------------------------------------------


def test_imdb_tarball_problems_name_the_tarball_and_member(workdir: Path, tmp_path: Path) -> None:
    tarball = tmp_path / "aclImdb_v1.tar.gz"
    tarball.write_bytes(make_tarball({**review_files(), "aclImdb/train/pos/review_abc.txt": b"odd"}))
    set_params(workdir, "imdb", {"source": "path", "path": str(tarball)})
    message = failed(
        stage(workdir, "download_imdb"), f"error: {tarball}: member aclImdb/train/pos/review_abc.txt: bad file name"
    )
    assert ".imdb-input." not in message
    tarball.chmod(0o000)
    failed(unprivileged(workdir, "download_imdb"), f"error: {tarball}: cannot read it: Permission denied")
    assert leftovers(workdir) == []


def test_imdb_folder_links_leading_outside_and_unreadable_reviews_are_refused(workdir: Path, tmp_path: Path) -> None:
    tree = tmp_path / "imdb"
    for name, data in review_files().items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    secret = tmp_path / "secret.txt"
    secret.write_text("not a review")
    link = tree / "aclImdb/train/pos/9_9.txt"
    link.symlink_to(secret)
    set_params(workdir, "imdb", {"source": "path", "path": str(tree)})
    failed(stage(workdir, "download_imdb"), f"error: {link}: refusing symbolic link to {secret}")
    link.unlink()
    unreadable = tree / "aclImdb/test/neg/0_1.txt"
    unreadable.chmod(0o000)
    failed(unprivileged(workdir, "download_imdb"), f"error: {unreadable}: cannot read it: Permission denied")
    assert snapshot(workdir) == {} and leftovers(workdir) == []
