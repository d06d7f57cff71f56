"""Atomic stage outputs and deterministic writers for JSON, TSV and CSV.

A stage writes every output into a temporary sibling path and renames them all
into place only when it finished without error, so a failed or interrupted run
leaves the previous outputs exactly as they were (dvc.yaml declares outs with
``persist: true`` so DVC does not delete them before the stage runs).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FLOAT_DIGITS = 6  # metrics and plot files: enough for comparisons, short in diffs


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class Outputs:
    """Temporary paths handed out by :func:`atomic_outputs`, renamed on success."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def file(self, final: str | os.PathLike[str]) -> Path:
        """A temporary path to write the file ``final`` into."""
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        self._pending.append((Path(tmp), final))
        return Path(tmp)

    def directory(self, final: str | os.PathLike[str]) -> Path:
        """A temporary, empty directory that replaces the directory ``final``."""
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        self._pending.append((tmp, final))
        return tmp

    def _commit(self) -> None:
        for tmp, final in self._pending:
            if tmp.is_file():
                os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
            elif tmp.is_dir():
                os.chmod(tmp, 0o755)
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)  # os.replace cannot replace a non-empty dir
            os.replace(tmp, final)
            log.debug("wrote %s", final)
        self._pending.clear()

    def _abort(self) -> None:
        for tmp, _ in self._pending:
            _remove(tmp)
        self._pending.clear()


@contextmanager
def atomic_outputs() -> Iterator[Outputs]:
    """Context in which all outputs are staged; they appear together at exit or not at all."""
    outputs = Outputs()
    try:
        yield outputs
    except BaseException:
        outputs._abort()
        raise
    outputs._commit()


def keep_folder(path: Path, note: str) -> None:
    """Create a declared-but-often-empty out folder (downloads, checkpoints) with a README.

    The fixed README makes the folder's DVC hash stable and stops DVC warning
    that the out is empty.
    """
    path.mkdir(parents=True, exist_ok=True)
    readme = path / "README.txt"
    if not readme.exists() or readme.read_text(encoding="utf-8") != note:
        readme.write_text(note, encoding="utf-8")


def clean_float(value: Any) -> Any:
    """Plain Python numbers, rounded, so JSON and TSV bytes do not depend on dtype."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy / tf scalar
    if isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        rounded = round(value, FLOAT_DIGITS)
        return 0.0 if rounded == 0 else rounded  # no "-0.0"
    if isinstance(value, Mapping):
        return {str(k): clean_float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_float(v) for v in value]
    if hasattr(value, "tolist"):
        return clean_float(value.tolist())
    return value


def dumps_json(data: Mapping[str, Any]) -> str:
    """Stable JSON: insertion key order, rounded floats, trailing newline."""
    return json.dumps(clean_float(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(dumps_json(data), encoding="utf-8")


def write_table(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]], sep: str) -> None:
    """A delimited text table with a header; floats rounded like the JSON files."""
    lines = [sep.join(columns)]
    for row in rows:
        cells = clean_float(list(row))
        if len(cells) != len(columns):
            raise ValueError(f"{path}: row has {len(cells)} cells, header has {len(columns)}")
        lines.append(sep.join("" if c is None else str(c) for c in cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_tsv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    write_table(path, columns, rows, "\t")


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    write_table(path, columns, rows, ",")
