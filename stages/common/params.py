"""Typed, validated views of ``params.yaml``.

Each stage declares a pydantic model for its own section: the types and bounds
of its keys, and no default values: params.yaml is the one source of those, so a
key missing from it is an error like any other. Loading validates the section
before the stage does any work; a problem becomes a StageError naming the key,
e.g. ``params.yaml: simple_nn.epochs: must be greater than 0 (got -5)`` or
``params.yaml: train_load_rnn.patience: missing key``.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from stages.common.cli import StageError

PARAMS_FILE = Path("params.yaml")

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base for a params section: unknown keys, missing keys and loose types are errors.

    Fields declare types and bounds only, never a default (tests/test_params.py checks it).
    """

    # strict: YAML `epochs: "5"` or `epochs: 5.0` is a mistake, not an int.
    # allow_inf_nan: YAML `.inf` / `.nan` pass `gt=0` checks but are never a sensible param.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class TrainingSection(Section):
    """A training stage's params: the switches every training loop (stages/common/training.py) has."""

    run_eagerly: bool = Field(description="true: no tf.function, for debugging")
    checkpoint_every_s: float = Field(
        ge=0.0, description="seconds between resumable checkpoints (0: after every epoch)"
    )


UserPath = Annotated[str, AfterValidator(os.path.expanduser)]
"""A path to a user's file: ``~`` and ``~user`` are expanded, as a shell would."""


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats without a dot (``1e-05``).

    YAML 1.1 (PyYAML) reads ``1e-05`` as a string, but ``dvc exp run -S lr=1e-5``
    writes exactly that into params.yaml (and DVC itself reads it as a number).
    """


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def read_params_file(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """The whole params file as a mapping; a parse error names the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StageError(f"{path}: file not found (run from the repository root)") from None
    return parse_params(text, path)


def parse_params(text: str, path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    """A params file's text as a mapping; errors name ``path`` (where the text came from) and the line."""
    try:
        data = yaml.load(text, Loader=_ParamsLoader)  # _ParamsLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StageError(f"{path}:{where}: invalid YAML: {problem}") from None
    except ValueError as exc:  # e.g. an unquoted impossible date such as 2015-13-01
        raise StageError(f"{path}: invalid value: {exc}") from None
    if not isinstance(data, dict):
        raise StageError(f"{path}: expected a mapping of sections at the top level")
    return data


# What this process read from params.yaml (key -> value; "" the whole file), so that a stage can
# tell, before it publishes outputs, that the file changed under it: `dvc exp run -S` writes
# params.yaml before it takes DVC's lock, and a running `dvc repro` would then record the new
# values in dvc.lock for outputs made with the old ones.
_read: dict[str, Any] = {}


def remember(key: str, value: Any) -> None:
    """Record that this process acts on ``params.yaml``'s ``key`` (dotted; "" the whole file) = ``value``."""
    _read.setdefault(key, value if value is MISSING else copy.deepcopy(value))


MISSING = object()  # a key absent from params.yaml


def _lookup(data: Any, key: str) -> Any:
    for part in key.split(".") if key else []:
        data = data.get(part, MISSING) if isinstance(data, dict) else MISSING
    return data


def check_params_unchanged() -> None:
    """Fail if a value this process read from params.yaml differs from the file on disk now.

    Called by stages.common.outputs before outputs are put in place.
    """
    if not _read:
        return
    try:
        now = read_params_file()
    except StageError as exc:
        raise StageError(f"{exc} (changed while the stage ran; outputs not written)") from None
    changed = [key or "(the file)" for key, value in _read.items() if _lookup(now, key) != value]
    if changed:
        raise StageError(
            f"{PARAMS_FILE}: {', '.join(changed)} changed while the stage ran (by `dvc exp run -S`?); "
            "outputs not written, since they were made with the values read at the start: run the stage again"
        )


def _describe(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing key"
    message = error["msg"]
    if kind == "value_error":  # a model's own check: its message says it all
        return message.removeprefix("Value error, ")
    message = message[0].lower() + message[1:] if message else message
    message = message.replace("input should be", "must be")
    return f"{message} (got {error['input']!r})"


def validate(model: type[M], data: Any, where: str, path: Path = PARAMS_FILE) -> M:
    """Validate ``data`` against ``model``; errors name ``where`` + the key path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join([where, *(str(part) for part in error["loc"])])
            problems.append(f"{key}: {_describe(error)}")
        raise StageError(f"{path}: " + "; ".join(problems)) from None


def load_params(section: str, model: type[M], path: Path = PARAMS_FILE) -> tuple[int, M]:
    """Return ``(seed, params)`` for one stage: the global seed and its validated section."""
    data = read_params_file(path)
    if "seed" not in data:
        raise StageError(f"{path}: seed: missing key (one integer seed for every stage)")
    seed = data["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise StageError(f"{path}: seed: must be an integer in [0, 2**31) (got {seed!r})")
    node: Any = data
    walked: list[str] = []
    for part in section.split("."):  # "metrics_demo.wine" names a nested section
        walked.append(part)
        if not isinstance(node, dict) or part not in node:
            raise StageError(f"{path}: {'.'.join(walked)}: missing section")
        node = node[part]
    if path == PARAMS_FILE:
        remember("seed", seed)
        remember(section, node)
    return seed, validate(model, node, section, path)
