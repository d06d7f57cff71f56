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
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stages.common.cli import StageError
from stages.common.params import check_params_unchanged

log = logging.getLogger(__name__)

FLOAT_DIGITS = 6  # metrics and plot files: enough for comparisons, short in diffs


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _temp_names(final: Path) -> re.Pattern[str]:
    """Names of this module's temporaries for ``final``: ``.<name>.<8 random chars>.tmp`` / ``.old``."""
    return re.compile(rf"\.{re.escape(final.name)}\.[a-z0-9_]{{8}}\.(?:tmp|old)")


def _undeletable(path: Path) -> Path | None:
    """A folder in the tree ``path`` whose entries cannot be removed (not writable), or None.

    Checked before anything is replaced: once an old tree is half deleted it
    cannot be put back.
    """
    if not path.is_dir() or path.is_symlink():
        return None
    for folder, dirs, _ in os.walk(path):
        if not os.access(folder, os.W_OK | os.X_OK):
            return Path(folder)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
    return None


class Outputs:
    """Temporary paths handed out by :func:`atomic_outputs`, renamed on success."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def file(self, final: str | os.PathLike[str]) -> Path:
        """A temporary path to write the file ``final`` into."""
        final = Path(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        except OSError as exc:
            raise StageError(f"{final}: cannot write it: {exc.strerror or exc}") from None
        os.close(fd)
        self._pending.append((Path(tmp), final))
        return Path(tmp)

    def directory(self, final: str | os.PathLike[str]) -> Path:
        """A temporary, empty directory that replaces the directory ``final``."""
        final = Path(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        except OSError as exc:
            raise StageError(f"{final}: cannot write it: {exc.strerror or exc}") from None
        self._pending.append((tmp, final))
        return tmp

    def _commit(self) -> None:
        """Move every old output aside, the new ones in, then drop the old ones.

        Renames only until every new output is in place, so any failure puts
        every old output back where it was (all or nothing).
        """
        try:
            check_params_unchanged()  # outputs made with other params than params.yaml now says
        except StageError:
            self._abort()
            raise
        for _tmp, final in self._pending:
            blocked = _undeletable(final)
            if blocked is not None:
                self._abort()
                raise StageError(
                    f"{final}: cannot replace it: {blocked} is not writable; previous outputs left as they were"
                )
        asides: list[Path | None] = []  # per pending output: a folder holding the old one, if any
        moved_in = 0
        try:
            for tmp, final in self._pending:
                os.chmod(tmp, 0o644 if tmp.is_file() else 0o755)  # mkstemp creates 0600 files
                aside = None
                if _exists(final):
                    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
                    asides.append(aside)
                    os.rename(final, aside / final.name)
                else:
                    asides.append(None)
                os.rename(tmp, final)
                moved_in += 1
        except BaseException as exc:
            failed = final
            for i in reversed(range(len(asides))):
                (tmp, final), aside = self._pending[i], asides[i]
                try:
                    if i < moved_in:
                        os.rename(final, tmp)
                    if aside is not None:
                        if (aside / final.name).exists() or (aside / final.name).is_symlink():
                            os.rename(aside / final.name, final)
                        aside.rmdir()
                except OSError as undo:  # only if the file system changed under us
                    log.error("could not put %s back: %s", final, undo)
            self._abort()
            if isinstance(exc, OSError):
                raise StageError(
                    f"{failed}: cannot replace it: {exc.strerror or exc}; previous outputs left as they were"
                ) from None
            raise
        for (_, final), aside in zip(self._pending, asides, strict=True):
            if aside is not None:
                try:
                    _remove(aside)
                except OSError as gone:  # checked writable above: only if that changed meanwhile
                    log.warning("%s replaced, but its old copy %s could not be removed: %s", final, aside, gone)
            log.debug("wrote %s", final)
        finals = [final for _, final in self._pending]
        self._pending.clear()
        for final in finals:
            _remove_stale(final)

    def _abort(self) -> None:
        for tmp, _ in self._pending:
            try:
                _remove(tmp)
            except OSError as exc:
                log.error("could not remove %s: %s", tmp, exc)
        self._pending.clear()


def _remove_stale(final: Path) -> None:
    """Temporaries of ``final`` that a killed earlier run left behind.

    Safe: only the stage owning ``final`` writes it, and run_stage's per-stage
    lock keeps a second run of it from writing at the same time.
    """
    pattern = _temp_names(final)
    try:
        stale = [p for p in final.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return
    for path in stale:
        try:
            _remove(path)
            log.info("removed %s, left by an earlier run", path)
        except OSError as exc:
            log.warning("could not remove %s (left by an earlier run): %s", path, exc)


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


def scratch_folder(parent: Path, prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder in ``parent`` (the outputs' file system), removed whatever happens.

    For what a stage generates or extracts before writing its outputs; ``parent`` is created.
    """
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix=prefix, dir=parent)
    except OSError as exc:
        raise StageError(f"{parent}: cannot write here: {exc.strerror or exc}") from None


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


HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


def write_history(path: Path, history: Sequence[Mapping[str, Any]], columns: Sequence[str] = HISTORY_COLUMNS) -> None:
    """A training history as the TSV every training stage plots: ``columns`` that the
    epochs logged, in that order, one row per epoch."""
    present = [c for c in columns if history and c in history[0]]
    write_tsv(path, present, [[h[c] for c in present] for h in history])


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
