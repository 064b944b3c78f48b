"""Reading the four manifest formats (YAML, JSON, JSONL, CSV) with the line of every field."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import PurePosixPath
from typing import Any, Callable

import yaml

from vqclip.config import Config
from vqclip.errors import ManifestError
from vqclip.manifest.problems import FieldPath, Problem, join_errors
from vqclip.manifest.schema import PromptEntry

FORMATS = (".yaml", ".yml", ".json", ".jsonl", ".csv")
_RUN_KEYS = ("version", "name", "defaults", "filter")


@dataclass
class Document:
    """A manifest as read: its data, the line of each field (computed on demand) and the problems found reading it."""

    data: Any
    lines: Callable[[], dict[FieldPath, int]]
    problems: list[Problem] = field(default_factory=list)


def check_size(size: int, file: str, config: Config) -> None:
    """Raise ManifestError if a manifest of `size` bytes is over VQCLIP_MAX_MANIFEST_BYTES (check before reading it)."""
    if size > config.max_manifest_bytes:
        raise ManifestError(
            f"{file}: {size} bytes, more than the {config.max_manifest_bytes} allowed "
            f"(VQCLIP_MAX_MANIFEST_BYTES); split it into several manifests"
        )


def _decode(data: bytes, file: str, config: Config) -> str:
    check_size(len(data), file, config)
    if b"\0" in data:
        raise ManifestError(f"{file}: a binary file, not a text manifest; give a UTF-8 {'/'.join(FORMATS)} file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(
            f"{file}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the manifest as UTF-8"
        ) from None
    if not text.strip():
        raise ManifestError(f"{file}: the manifest is empty; list prompts, e.g. 'prompts: [a red fox]'")
    return text


def _yaml_lines(node: yaml.Node) -> tuple[dict[FieldPath, int], list[Problem]]:
    lines: dict[FieldPath, int] = {}
    problems: list[Problem] = []
    seen: set[int] = set()

    def walk(node: yaml.Node, path: FieldPath) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        # Aliases share nodes; visiting each once keeps a "billion laughs" file cheap.
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark)
                line = key.start_mark.line + 1
                if name in keys:
                    problems.append(Problem(f"key {name!r} appears twice in one mapping; keep one", line=line))
                keys.add(name)
                lines[path + (name,)] = line
                walk(value, path + (name,))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, path + (index,))

    walk(node, ())
    return lines, problems


def _yaml_error(file: str, exc: yaml.YAMLError) -> ManifestError:
    mark, opened = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    # A file that ends inside an unclosed quote or bracket is wrong where that opened, not on its last line.
    ended = mark is not None and mark.buffer is not None and mark.pointer >= len(mark.buffer) - 1
    if ended and opened is not None:
        mark = opened
    where = f"{file}:{mark.line + 1}" if mark is not None else file
    problem = ": ".join(filter(None, (getattr(exc, "context", None), getattr(exc, "problem", None)))) or str(exc)
    if isinstance(exc, yaml.constructor.ConstructorError):
        return ManifestError(f"{where}: {problem}; a manifest holds plain data only (mappings, lists, text, numbers)")
    return ManifestError(f"{where}: YAML syntax error: {problem}; check the indentation and quoting here")


# libyaml's parser (about 4x faster) reads first; PyYAML's own reads what libyaml refuses, so that an
# error names the offending character, and reads the few documents only it accepts.
_LOADERS = (yaml.CSafeLoader, yaml.SafeLoader) if yaml.__with_libyaml__ else (yaml.SafeLoader,)


def _parse_yaml(text: str, loader_class: type) -> tuple[yaml.Node | None, Any]:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        return node, None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _read_yaml(text: str, file: str) -> Document:
    for loader_class in _LOADERS:
        try:
            node, data = _parse_yaml(text, loader_class)
            break
        except yaml.YAMLError as exc:
            error = exc
    else:
        raise _yaml_error(file, error)
    if node is None:
        raise ManifestError(f"{file}: the manifest has only comments; list prompts, e.g. 'prompts: [a red fox]'")
    lines, problems = _yaml_lines(node)
    return Document(data, lambda: lines, problems)


def _json_lines(text: str) -> tuple[dict[FieldPath, int], list[Problem]]:
    # JSON is (nearly) YAML: composing it finds each field's line (and each repeated key's). Only done when
    # there is an error to place; where PyYAML cannot read the JSON, errors name the field path alone. Valid
    # JSON has tabs only between tokens, where PyYAML may refuse them, so they become spaces.
    try:
        node = yaml.compose(text.replace("\t", " "), Loader=_LOADERS[0])
    except (yaml.YAMLError, RecursionError):
        return {}, []
    return _yaml_lines(node) if node is not None else ({}, [])


class _RepeatedKeys(list):
    """An `object_pairs_hook` for json.loads that notes every key an object repeats (json keeps the last silently)."""

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        data = dict(pairs)
        if len(data) < len(pairs):
            self.extend(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        return data


def _repeated_key_problem(key: str, line: int | None = None) -> Problem:
    return Problem(f"key {key!r} appears twice in one mapping; keep one", line=line)


def _read_json(text: str, file: str) -> Document:
    repeated = _RepeatedKeys()
    try:
        data = json.loads(text, object_pairs_hook=repeated)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{file}:{exc.lineno}: JSON syntax error: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise ManifestError(f"{file}: nested too deeply to be a manifest") from None
    if repeated:
        lines, problems = _json_lines(text)
        return Document(data, lambda: lines, problems or [_repeated_key_problem(key) for key in repeated])
    return Document(data, cache(lambda: _json_lines(text)[0]))


def _read_jsonl(text: str, file: str) -> Document:
    header: dict[str, Any] = {}
    prompts: list[Any] = []
    lines: dict[FieldPath, int] = {}
    problems: list[Problem] = []
    first = True
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        repeated = _RepeatedKeys()
        try:
            value = json.loads(line, object_pairs_hook=repeated)
            problems.extend(_repeated_key_problem(key, number) for key in repeated)
        except json.JSONDecodeError as exc:
            reason = f"not valid JSON: {exc.msg} (column {exc.colno}); each line holds one JSON object or string"
            problems.append(Problem(reason, line=number))
            first = False
            continue
        except RecursionError:
            raise ManifestError(f"{file}:{number}: nested too deeply to be a manifest") from None
        if first and isinstance(value, dict) and any(key in value for key in _RUN_KEYS):
            if "prompts" in value:
                problems.append(Problem("the header cannot hold prompts; put each on a line of its own", line=number))
            header = {key: item for key, item in value.items() if key != "prompts"}
            lines.update(((key,), number) for key in header)
        else:
            lines[("prompts", len(prompts))] = number
            prompts.append(value)
        first = False
    lines.setdefault(("prompts",), 1)
    return Document({**header, "prompts": prompts}, lambda: lines, problems)


_SEMICOLONS = re.compile(r"\s*;\s*")
_CSV_LISTS = {
    "seeds": re.compile(r"[\s;]+"),
    "image_prompts": _SEMICOLONS,
    "guides": _SEMICOLONS,
    "noise_prompts": _SEMICOLONS,
    "augments": re.compile(r"[\s;]+"),
}
"""CSV columns that hold lists, and what separates their items."""


def _read_csv(text: str, file: str) -> Document:
    reader = csv.reader(io.StringIO(text), strict=True)
    allowed = sorted(PromptEntry.model_fields)
    header: list[str] | None = None
    prompts: list[dict[str, Any]] = []
    lines: dict[FieldPath, int] = {("prompts",): 1}
    problems: list[Problem] = []
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in row]
                _check_csv_header(header, allowed, line, file)
                continue
            if len(row) > len(header):
                message = f"{len(row)} cells but the header has {len(header)} columns; quote cells that contain commas"
                problems.append(Problem(message, line=line))
            cells = {column: cell.strip() for column, cell in zip(header, row) if cell.strip()}
            for column, pattern in _CSV_LISTS.items():
                if column in cells:
                    cells[column] = [part for part in pattern.split(cells[column]) if part]
            lines[("prompts", len(prompts))] = line
            prompts.append(cells)
    except csv.Error as exc:
        raise ManifestError(f"{file}:{start}: CSV error: {exc}; check the quoting of the row that starts here") from None
    if not prompts:
        raise ManifestError(f"{file}: no prompt rows under the header; add one row per prompt")
    return Document({"prompts": prompts}, lambda: lines, problems)


def _check_csv_header(header: list[str], allowed: list[str], line: int, file: str) -> None:
    errors = []
    counts = Counter(header)
    listing = f"allowed columns (separated by commas): {', '.join(allowed)}"
    for column in header:
        if column not in allowed:
            errors.append(f"{file}:{line}: unknown column {column!r}; {listing}")
        elif counts[column] > 1:
            errors.append(f"{file}:{line}: column {column!r} appears more than once; keep one")
    if "text" not in header:
        errors.append(f"{file}:{line}: the header row has no 'text' column; it is required; {listing}")
    if errors:
        raise ManifestError(join_errors(file, list(dict.fromkeys(errors))))


_READERS: dict[str, Callable[[str, str], Document]] = {
    ".yaml": _read_yaml,
    ".yml": _read_yaml,
    ".json": _read_json,
    ".jsonl": _read_jsonl,
    ".csv": _read_csv,
}


def read_document(data: bytes, name: str, config: Config) -> Document:
    """Decode and parse a manifest in the format `name`'s extension names, with the line of every field."""
    suffix = PurePosixPath(name).suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        raise ManifestError(
            f"{name}: unknown manifest format {suffix or '(no extension)'!r}; use one of {', '.join(FORMATS)}"
        )
    text = _decode(data, name, config)
    try:
        document = reader(text, name)
        document.data = _whole_characters(document.data, text, name)
    except RecursionError:
        raise ManifestError(f"{name}: nested too deeply to be a manifest") from None
    return document


_SURROGATE = re.compile("[\ud800-\udfff]")
# A \uXXXX escape of half a UTF-16 pair with no other half: it decodes to text no file or log can hold.
_LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _whole_characters(data: Any, text: str, file: str) -> Any:
    """`data` with each escaped UTF-16 pair as the character it stands for (PyYAML keeps the halves apart); an unpaired half is an error."""
    if "\\u" not in text and "\\U" not in text:
        return data  # decoded UTF-8 holds no surrogates: only a \u or \U escape makes one
    # YAML aliases share (and may nest) lists and mappings: each is rebuilt once, so a "billion laughs" file stays cheap.
    rebuilt: dict[int, Any] = {}

    def join(value: Any) -> Any:
        if isinstance(value, str):
            return value.encode("utf-16", "surrogatepass").decode("utf-16") if _SURROGATE.search(value) else value
        if not isinstance(value, (dict, list)):
            return value
        if id(value) not in rebuilt:
            if isinstance(value, dict):
                rebuilt[id(value)] = new = {}
                new.update((join(key), join(item)) for key, item in value.items())
            else:
                rebuilt[id(value)] = new = []
                new.extend(join(item) for item in value)
        return rebuilt[id(value)]

    try:
        return join(data)
    except UnicodeDecodeError:
        found = _LONE_SURROGATE.search(text)
        where = f"{file}:{text.count(chr(10), 0, found.start()) + 1}" if found else file
        escape = f" ({found.group()})" if found else ""
        raise ManifestError(
            f"{where}: an escape{escape} stands for half of a UTF-16 pair; write the character itself, or both halves"
        ) from None
