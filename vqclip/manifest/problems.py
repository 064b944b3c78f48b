"""Problems found in a manifest and how they are reported: file, line, field path, and the fix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from vqclip.errors import ManifestError
from vqclip.items import NoisePrompt, Video, Zoom
from vqclip.manifest.schema import ImageEntry
from vqclip.models.spec import Guide

MAX_REPORTED_ERRORS = 50
"""Errors listed in one ManifestError; a manifest that is wrong on every line needs no more to be fixed."""

FieldPath = tuple[str | int, ...]

_STAND_INS = {"text": "-"}
"""Valid values for required fields that are wrong, so that a prompt's other fields are still checked."""


@dataclass
class Problem:
    """One thing wrong in a manifest: what, at which field, and on which line once known."""

    message: str
    path: FieldPath = ()
    line: int | None = None


def format_path(path: FieldPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_of(path: FieldPath, lines: dict[FieldPath, int]) -> int | None:
    # A missing field has no line of its own: point at the nearest enclosing one that has.
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _locate(file: str, problem: Problem) -> str:
    where = f"{file}:{problem.line}" if problem.line is not None else file
    field_path = f" {format_path(problem.path)}:" if problem.path else ""
    return f"{where}:{field_path} {problem.message}"


def join_errors(file: str, errors: list[str]) -> str:
    if len(errors) == 1:
        return errors[0]
    shown = errors[:MAX_REPORTED_ERRORS]
    more = [f"... and {len(errors) - len(shown)} more"] if len(errors) > len(shown) else []
    return f"{file}: {len(errors)} errors, nothing was run:\n  " + "\n  ".join(shown + more)


def raise_problems(file: str, problems: list[Problem], lines: dict[FieldPath, int]) -> NoReturn:
    for problem in problems:
        if problem.line is None:
            problem.line = _line_of(problem.path, lines)
    ordered = sorted(problems, key=lambda p: math.inf if p.line is None else p.line)
    raise ManifestError(join_errors(file, [_locate(file, p) for p in ordered]))


def _pydantic_message(error: dict, root: type[BaseModel]) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "missing":
        return "missing; this field is required"
    if kind == "extra_forbidden":
        nested = {"guides": Guide, "image_prompts": ImageEntry, "noise_prompts": NoisePrompt}
        model = nested[loc[-3]] if len(loc) >= 3 and loc[-3] in nested else root
        if len(loc) >= 2 and loc[-2] in ("video", "zoom"):
            model = Video if loc[-2] == "video" else Zoom
        fields = model._fields if model is Guide else model.model_fields
        return f"unknown field; allowed fields: {', '.join(sorted(fields))}"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if kind != "value_error" and isinstance(value, (str, int, float, bool)):
        shown = repr(value)
        message += f" (got {shown[:40] + '...' if len(shown) > 40 else shown})"
    return message


def parse_model(model: type[BaseModel], data: Any, path: FieldPath, problems: list[Problem]) -> tuple[Any, frozenset[str]]:
    """The model and the names of its fields dropped for their errors (recorded in `problems`); None if nothing is left."""
    # Validating again without the wrong fields lets the checks that follow (limits, sizes, the work cap) see the
    # rest in the same pass, instead of after the user has fixed the schema errors.
    try:
        return model.model_validate(data), frozenset()
    except ValidationError as exc:
        errors = exc.errors()
    problems.extend(Problem(_pydantic_message(e, model), path + tuple(e["loc"])) for e in errors)
    dropped = frozenset(str(e["loc"][0]) for e in errors if e["loc"])
    if isinstance(data, str) and "text" in model.model_fields:  # a prompt's shorthand: all of it is its text
        data = {"text": data}
    if not isinstance(data, dict) or len(dropped) == 0:
        return None, dropped
    kept = {key: value for key, value in data.items() if key not in dropped}
    required = {key for key, info in model.model_fields.items() if info.is_required()}
    kept.update({key: value for key, value in _STAND_INS.items() if key in required and key not in kept})
    try:
        return model.model_validate(kept), dropped
    except ValidationError:
        return None, dropped
