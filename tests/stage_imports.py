"""Which ``stages`` source files a stage runs: its module and every ``stages.*`` module it imports.

Found from the source (imports inside functions included, since stages import
TensorFlow-heavy modules lazily, after validating params), without importing.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(file: Path) -> set[str]:
    """``stages.*`` modules imported anywhere in ``file``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name.split(".")[0] == "stages" and module_file(name)}


def import_closure(module: str) -> set[Path]:
    """Source files of ``module`` and everything it imports from ``stages``, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        file = module_file(name)
        if file is None or file in seen:
            continue
        seen.add(file)
        todo.extend(imported_modules(file))
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run too
    return {f for f in seen if f.name != "__init__.py" or runs_code(f)}


def runs_code(file: Path) -> bool:
    """Whether a module does more than carry a docstring (an ``__init__.py`` that runs code is a dep)."""
    body = ast.parse(file.read_text(encoding="utf-8")).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def stage_module(cmd: str) -> str:
    """``python -m stages.x arg`` -> ``stages.x``."""
    words = shlex.split(cmd)
    assert words[:2] == ["python", "-m"], f"stage command should be `python -m stages.<name>`: {cmd}"
    return words[2]


def stage_code_files(cmd: str) -> set[str]:
    """Repository-relative paths of all the code a stage command runs."""
    return {f.relative_to(ROOT).as_posix() for f in import_closure(stage_module(cmd))}
