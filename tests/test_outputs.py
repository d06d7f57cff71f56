"""Atomic outputs and deterministic writers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages.common.cli import StageError
from stages.common.outputs import atomic_outputs, dumps_json, write_tsv


def test_outputs_appear_together_on_success(tmp_path: Path) -> None:
    with atomic_outputs() as out:
        out.file(tmp_path / "a" / "x.json").write_text("{}")
        directory = out.directory(tmp_path / "model")
        (directory / "weights").write_text("w")
        assert not (tmp_path / "a" / "x.json").exists()  # nothing visible before the end
    assert (tmp_path / "a" / "x.json").read_text() == "{}"
    assert (tmp_path / "model" / "weights").read_text() == "w"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "model", "weights", "x.json"]


def test_failure_leaves_previous_outputs_and_no_temporaries(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("old")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_outputs() as out:
            out.file(tmp_path / "x.json").write_text("new, half")
            (out.directory(tmp_path / "model") / "weights").write_text("new")
            raise RuntimeError("stage failed")
    assert (tmp_path / "x.json").read_text() == "old"
    assert (tmp_path / "model" / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "x.json"]


def test_replacing_a_directory_drops_stale_files(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "stale").write_text("s")
    with atomic_outputs() as out:
        (out.directory(tmp_path / "model") / "fresh").write_text("f")
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["fresh"]


def test_json_is_stable_and_plain() -> None:
    data = {"b": np.float32(0.1), "a": np.int64(3), "nested": {"z": -0.0, "list": [np.float64(1 / 3)]}}
    text = dumps_json(data)
    assert text == dumps_json(data)
    assert list(json.loads(text)) == ["b", "a", "nested"]  # insertion order kept
    assert json.loads(text) == {"b": 0.1, "a": 3, "nested": {"z": 0.0, "list": [0.333333]}}


def test_tsv_rejects_ragged_rows(tmp_path: Path) -> None:
    write_tsv(tmp_path / "ok.tsv", ["a", "b"], [(1, 2.5)])
    assert (tmp_path / "ok.tsv").read_text() == "a\tb\n1\t2.5\n"
    with pytest.raises(ValueError, match="row has 1 cells"):
        write_tsv(tmp_path / "bad.tsv", ["a", "b"], [(1,)])


def test_a_failed_commit_puts_every_previous_output_back(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("old a")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights").write_text("old weights")
    with pytest.raises(StageError, match="b.json: cannot replace it"):
        with atomic_outputs() as out:
            out.file(tmp_path / "a.json").write_text("new a")
            (out.directory(tmp_path / "model") / "weights").write_text("new weights")
            out.file(tmp_path / "b.json").unlink()  # the last output fails after the first two are in place
    assert (tmp_path / "a.json").read_text() == "old a"
    assert (tmp_path / "model" / "weights").read_text() == "old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "model"]
