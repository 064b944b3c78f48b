"""Prompt manifests: the schema, loaders for YAML, JSON, JSONL and CSV, validation, and expansion into work items.

A manifest is a mapping (or, as shorthand, just its list of prompts)::

    version: 1
    name: lighthouses
    defaults: {preset: default, width: 256, height: 256, steps: 300, n: 2, shard_size: 4, seed: 7}
    prompts:
      - "a lighthouse at dawn:1 | blurry:-0.5"              # shorthand for {text: ...}
      - {id: storm, text: a lighthouse in a storm, n: 3, steps: 500}
      - {text: a red fox, seeds: [1, 2], image_prompts: ["fox.png:0.5", "store:inputs/fox.png"]}

The format follows the file extension:

- ``.yaml``/``.yml`` and ``.json``: the mapping or list above.
- ``.jsonl``: one prompt per line (an object, or a string of prompt text). The first line is instead a
  header of run-level fields when it holds ``version``, ``name`` or ``defaults``.
- ``.csv``: a header row, then one prompt per row. Columns are the prompt fields: ``text`` (required),
  ``id``, ``n``, ``seed``, ``seeds`` (separated by spaces or ``;``), ``image_prompts`` (``path:weight;path``),
  ``init_image``, ``noise_prompts`` (``seed:weight;seed``), and any override: ``preset``, ``vqgan``,
  ``guides`` (separated by ``;``), ``scorer`` and the generation settings (``width``, ``steps``, ...). An empty cell means "the default". CSV has no run level:
  defaults are the built-in ones and the preset given to the loader.

Models: the defaults, then the prompt, may each name a ``preset`` (replacing the models chosen so far) and
explicit ``vqgan``, ``guides``, ``scorer`` (replacing those parts); the start is the ``default`` preset. A
``preset`` passed to `load_manifest` replaces every model choice in the manifest, so any manifest can run
on, say, the tiny test models.

Seeds: a prompt's explicit ``seeds`` are used as given; otherwise image ``i`` of prompt ``P`` gets
``derive_seed(base, P.id, i)`` with ``base`` the prompt's or the defaults' ``seed`` (else 0). Default prompt
ids are ``p001``, ``p002``... by position, so reordering prompts without ids changes their seeds.

Image paths are relative to the manifest's folder and must exist there, or name an object store key as
``store:KEY``; a ``store:`` image is read, and its digest taken, by `Manifest.plan` through `read_source`.
Every image must decode: local ones are decoded at validation, ``store:`` ones when `Manifest.plan` reads them.

Admission: beyond the per-field limits, a manifest's total work (width x height x steps, summed over its
images) must stay within ``Config.max_megapixel_steps``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Callable, Literal, NoReturn, TypedDict

import yaml
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

from vqclip.config import Config, get_config
from vqclip.errors import ManifestError, ModelError, ObjectNotFound, PromptError, StorageError
from vqclip.items import GenerationSettings, ImagePrompt, ModelSpec, NoisePrompt, Video, Weight, WorkItem, Zoom, models_for_preset
from vqclip.models.presets import RANDOM, TINY_CLIPS, get_preset, get_vqgan_spec, split_clip_name
from vqclip.models.weights import PRESET_WEIGHT_LOCATIONS, open_clip_models
from vqclip.prompts import parse_schedule
from vqclip.storage.base import ObjectStore, validate_key

FORMATS = (".yaml", ".yml", ".json", ".jsonl", ".csv")
STORE_PREFIX = "store:"
DEFAULT_PRESET = "default"
MAX_REPORTED_ERRORS = 50
"""Errors listed in one ManifestError; a manifest that is wrong on every line needs no more to be fixed."""

FieldPath = tuple[str | int, ...]
SourceReader = Callable[[str], bytes]


def store_reader(store: ObjectStore) -> SourceReader:
    """A SourceReader of ``store:KEY`` image sources from `store`."""
    return lambda source: store.get_bytes(source[len(STORE_PREFIX) :])

_SLUG = re.compile(r"[a-z0-9_-]{1,64}")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_RUN_KEYS = ("version", "name", "defaults")
_MODEL_KEYS = ("vqgan", "guides", "scorer")
_SETTINGS_KEYS = tuple(GenerationSettings.model_fields)
_MODEL_CHOICE_KEYS = frozenset({"preset", "vqgan"})
_STAND_INS = {"text": "-"}
"""Valid values for required fields that are wrong, so that a prompt's other fields are still checked."""


# --- schema -------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    # Unknown fields are typos until proven otherwise; non-finite numbers are never meant.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _as_value_error(check: Callable[[str], object], value: str) -> str:
    try:
        check(value)
    except (ModelError, PromptError) as exc:
        raise ValueError(str(exc)) from None
    return value


def check_clip_name(name: str) -> None:
    """Raise ModelError unless `name` is a known open_clip model with a known pretrained tag (or 'random')."""
    model, tag = split_clip_name(name)
    if model in TINY_CLIPS:
        if tag != RANDOM:
            raise ModelError(f"{model} has no trained weights; write it as '{model}/{RANDOM}'")
        return
    if model not in open_clip_models():
        raise ModelError(
            f"unknown CLIP model {model!r}; use one of `open_clip.list_models()` (e.g. ViT-B-32) "
            f"or {', '.join(TINY_CLIPS)}"
        )
    if tag == RANDOM or name in PRESET_WEIGHT_LOCATIONS:
        return
    import open_clip  # only for tags the presets do not use: it imports torch

    # Local weight files are not accepted: a manifest must not point a worker at arbitrary files on its disk.
    if not open_clip.get_pretrained_cfg(model, tag):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ModelError(
            f"{tag!r} is not a pretrained tag of {model}; known tags: {tags}; or '{RANDOM}' for random weights"
        )


class GuideEntry(_Strict):
    """One guiding CLIP model and its weight; a bare "MODEL/PRETRAINED" string means weight 1."""

    clip: str
    weight: float = Field(1.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"clip": data} if isinstance(data, str) else data

    @field_validator("clip")
    @classmethod
    def _known(cls, value: str) -> str:
        return _as_value_error(check_clip_name, value)


class ImageEntry(_Strict):
    """An image prompt: a path under the manifest's folder or ``store:KEY``; "path:weight" and "path:weight:stop" strings allowed."""

    path: str = Field(min_length=1)
    weight: Weight = 1.0
    stop: float | None = Field(None, description="Where the image stops pulling, as a text part's stop (none by default).")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        pieces = data.split(":")
        numbers: list[str] = []
        # Up to two trailing numbers are the weight and the stop; a trailing ":word" belongs to the path
        # (as in "store:inputs/cat.png").
        while len(pieces) > 1 and len(numbers) < 2 and _is_number(pieces[-1]):
            numbers.insert(0, pieces.pop())
        return {"path": ":".join(pieces), **dict(zip(("weight", "stop"), numbers))}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _Shared(_Strict):
    """Fields that the defaults and each prompt may set (a prompt's value wins)."""

    n: int | None = Field(None, ge=1, description="Images per prompt.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Base of the derived seeds.")
    preset: str | None = None
    vqgan: str | None = None
    guides: Annotated[list[GuideEntry], Field(min_length=1)] | None = None
    scorer: str | None = None
    noise_prompts: list[NoisePrompt] | None = Field(
        None, description='Random embeddings that guide like prompts, as "seed:weight" (weight 1 if left out).'
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        return value if value is None else _as_value_error(get_preset, value)

    @field_validator("vqgan")
    @classmethod
    def _known_vqgan(cls, value: str | None) -> str | None:
        return value if value is None else _as_value_error(get_vqgan_spec, value)

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, value: str | None) -> str | None:
        return value if value is None else _as_value_error(check_clip_name, value)


def _optional(info: FieldInfo) -> tuple[Any, Any]:
    annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return annotation | None, Field(None, description=info.description)


# Built from GenerationSettings so that every setting, with its bounds, can be overridden and none is forgotten.
_Overrides = create_model(
    "_Overrides",
    __base__=_Shared,
    **{name: _optional(info) for name, info in GenerationSettings.model_fields.items()},
)


class Defaults(_Overrides):
    """Run-level defaults: models, generation settings, images per prompt, shard size, base seed."""

    shard_size: int = Field(4, ge=1, description="Work items per shard (the unit a worker runs).")

    @model_validator(mode="before")
    @classmethod
    def _old_shard_size_name(cls, data: Any) -> Any:
        """Accept `batch_size`, the former name of `shard_size`, unless both are given."""
        if isinstance(data, dict) and "batch_size" in data:
            if "shard_size" in data:
                raise ValueError("give shard_size or its former name batch_size, not both; keep shard_size")
            data = {("shard_size" if key == "batch_size" else key): value for key, value in data.items()}
        return data


class PromptEntry(_Overrides):
    """One prompt as written: its text, id, seeds, image inputs and overrides of the defaults."""

    id: str | None = None
    text: str
    seeds: Annotated[list[Annotated[int, Field(ge=0, lt=2**63)]], Field(min_length=1)] | None = None
    image_prompts: list[ImageEntry] = []
    init_image: str | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"text": data}
        if not isinstance(data, dict):
            raise ValueError(f"a prompt is a string or a mapping with a 'text' field, not {type(data).__name__}")
        return data

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str | None) -> str | None:
        if value is not None and not _SLUG.fullmatch(value):
            raise ValueError(f"id {value!r} is not allowed; use 1 to 64 of a-z, 0-9, '_' and '-', e.g. 'red-fox'")
        return value

    @field_validator("text")
    @classmethod
    def _weighted(cls, value: str) -> str:
        return _as_value_error(lambda text: parse_schedule(text, check_tokens=True), value)


class _Header(_Strict):
    """The run level. Defaults and each prompt are validated on their own, so that one bad prompt
    does not hide the problems of the others."""

    version: Literal[1] = 1
    name: str | None = None
    defaults: Any = None
    prompts: Annotated[list[Any], Field(min_length=1)]


# --- the validated manifest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestPrompt:
    """One prompt after validation: everything needed to make its images except image digests."""

    id: str
    text: str
    seeds: tuple[int, ...]
    settings: GenerationSettings
    models: ModelSpec
    image_prompts: tuple[tuple[str, float, float | None], ...] = ()
    init_image: str | None = None
    noise_prompts: tuple[NoisePrompt, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """A fully validated manifest, ready to expand into work items with `plan`."""

    file: str
    name: str | None
    shard_size: int
    prompts: tuple[ManifestPrompt, ...]
    base_dir: Path | None = None
    origins: dict[str, FieldPath] = field(default_factory=dict, compare=False, repr=False)
    """The field that first names each image source, for errors found while planning."""

    def sources(self) -> list[str]:
        """Every image source the prompts name (local paths and ``store:`` keys), each once, in order."""
        found: dict[str, None] = {}
        for prompt in self.prompts:
            found.update((source, None) for source, _, _ in prompt.image_prompts)
            if prompt.init_image:
                found[prompt.init_image] = None
        return list(found)

    def plan(self, read_source: SourceReader | None = None) -> list[WorkItem]:
        """One work item per (prompt, image); `read_source` reads ``store:`` images, local ones come from base_dir."""
        digests, errors = {}, []
        for source in self.sources():
            where = f"{self.file}: {_format_path(self.origins[source])}" if source in self.origins else self.file
            try:
                data = self.read_bytes(source, read_source)
            except ManifestError as exc:
                errors.append(f"{where}: {exc}")
                continue
            problem = _image_problem(source, data)
            if problem:
                errors.append(f"{where}: {problem}")
            digests[source] = hashlib.sha256(data).hexdigest()
        if errors:
            raise ManifestError(_join(self.file, errors))
        items = []
        for prompt in self.prompts:
            images = tuple(
                ImagePrompt(source=s, digest=digests[s], weight=w, stop=stop) for s, w, stop in prompt.image_prompts
            )
            init = None
            if prompt.init_image:
                init = ImagePrompt(source=prompt.init_image, digest=digests[prompt.init_image])
            items += [
                WorkItem(
                    prompt_id=prompt.id,
                    index=index,
                    prompt=prompt.text,
                    seed=seed,
                    settings=prompt.settings,
                    models=prompt.models,
                    image_prompts=images,
                    init_image=init,
                    noise_prompts=prompt.noise_prompts,
                )
                for index, seed in enumerate(prompt.seeds)
            ]
        _check_distinct(self.file, items)
        return items

    def read_bytes(self, source: str, read_source: SourceReader | None = None) -> bytes:
        """The bytes of an image source: a local file under base_dir, or a ``store:`` object via `read_source`."""
        if source.startswith(STORE_PREFIX):
            if read_source is None:
                raise ManifestError(f"{source} is in the object store, but no store was given to read it from")
            try:
                return read_source(source)
            except ObjectNotFound:
                raise ManifestError(f"{source}: no such object in the store; upload it or fix the key") from None
        try:
            return (self.base_dir / source).read_bytes()
        except OSError as exc:
            raise ManifestError(f"{source} cannot be read ({exc}); it must stay beside the manifest") from None


def _image_problem(source: str, data: bytes) -> str | None:
    """Why the bytes of an image source are not an image the engine can decode, or None when they are."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except UnidentifiedImageError:
        reason = "is not an image (Pillow recognises no image format in it)"
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, DecompressionBombError...) for bad files
        reason = f"is not a usable image ({exc})"
    else:
        return None
    fix = "upload a PNG or JPEG under that key or name another one" if source.startswith(STORE_PREFIX) else (
        "replace it with a PNG or JPEG"
    )
    return f"{source} {reason}; {fix}"


def _check_distinct(file: str, items: list[WorkItem]) -> None:
    # Two items with one id would overwrite each other's image: only explicit equal seeds can do that.
    seen: dict[str, WorkItem] = {}
    errors = []
    for item in items:
        other = seen.setdefault(item.item_id, item)
        if other is not item:
            errors.append(
                f"prompt {item.prompt_id!r} image {item.index} would be identical to prompt {other.prompt_id!r} "
                f"image {other.index} (same text, seed, settings and models); change a seed or remove one"
            )
    if errors:
        raise ManifestError(_join(file, errors))


def derive_seed(base: int, prompt_id: str, index: int) -> int:
    """The seed of image `index` of a prompt without explicit seeds: a stable hash in [0, 2**32)."""
    digest = hashlib.sha256(f"{base}/{prompt_id}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def shards(items: list[WorkItem], shard_size: int) -> list[list[WorkItem]]:
    """Group items that can share a batch (equal shard keys), in first-seen order, at most shard_size each."""
    groups: dict[tuple[str, str], list[WorkItem]] = {}
    for item in items:
        groups.setdefault(item.shard_key, []).append(item)
    return [group[i : i + shard_size] for group in groups.values() for i in range(0, len(group), shard_size)]


class PromptSummary(TypedDict):
    """One row of a plan summary."""

    prompt_id: str
    prompt: str
    images: int
    size: str
    steps: int
    models: str


class PlanSummary(TypedDict):
    """What a plan will do, for a CLI to print."""

    prompts: list[PromptSummary]
    images: int
    shards: int
    steps: int


def describe_plan(items: list[WorkItem], shard_size: int) -> PlanSummary:
    """Per prompt: images, size, steps and models; in all: images, shards and optimisation steps."""
    rows: dict[str, PromptSummary] = {}
    for item in items:
        row = rows.get(item.prompt_id)
        if row is None:
            guides = " + ".join(name if weight == 1 else f"{name} x{weight:g}" for name, weight in item.models.guides)
            row = rows[item.prompt_id] = PromptSummary(
                prompt_id=item.prompt_id,
                prompt=item.prompt,
                images=0,
                size=f"{item.settings.width}x{item.settings.height}",
                steps=item.settings.steps,
                models=f"{item.models.vqgan} / {guides}",
            )
        row["images"] += 1
    return PlanSummary(
        prompts=list(rows.values()),
        images=len(items),
        shards=len(shards(items, shard_size)),
        steps=sum(item.settings.total_steps for item in items),
    )


# --- problems and how they are reported -------------------------------------------------------------


@dataclass
class _Problem:
    message: str
    path: FieldPath = ()
    line: int | None = None


def _format_path(path: FieldPath) -> str:
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


def _locate(file: str, problem: _Problem) -> str:
    where = f"{file}:{problem.line}" if problem.line is not None else file
    field_path = f" {_format_path(problem.path)}:" if problem.path else ""
    return f"{where}:{field_path} {problem.message}"


def _join(file: str, errors: list[str]) -> str:
    if len(errors) == 1:
        return errors[0]
    shown = errors[:MAX_REPORTED_ERRORS]
    more = [f"... and {len(errors) - len(shown)} more"] if len(errors) > len(shown) else []
    return f"{file}: {len(errors)} errors, nothing was run:\n  " + "\n  ".join(shown + more)


def _raise(file: str, problems: list[_Problem], lines: dict[FieldPath, int]) -> NoReturn:
    for problem in problems:
        if problem.line is None:
            problem.line = _line_of(problem.path, lines)
    ordered = sorted(problems, key=lambda p: math.inf if p.line is None else p.line)
    raise ManifestError(_join(file, [_locate(file, p) for p in ordered]))


def _pydantic_message(error: dict, root: type[BaseModel]) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "missing":
        return "missing; this field is required"
    if kind == "extra_forbidden":
        nested = {"guides": GuideEntry, "image_prompts": ImageEntry, "noise_prompts": NoisePrompt}
        model = nested[loc[-3]] if len(loc) >= 3 and loc[-3] in nested else root
        if len(loc) >= 2 and loc[-2] in ("video", "zoom"):
            model = Video if loc[-2] == "video" else Zoom
        return f"unknown field; allowed fields: {', '.join(sorted(model.model_fields))}"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if kind != "value_error" and isinstance(value, (str, int, float, bool)):
        shown = repr(value)
        message += f" (got {shown[:40] + '...' if len(shown) > 40 else shown})"
    return message


def _parse(model: type[BaseModel], data: Any, path: FieldPath, problems: list[_Problem]) -> tuple[Any, frozenset[str]]:
    """The model and the names of its fields dropped for their errors (recorded in `problems`); None if nothing is left."""
    # Validating again without the wrong fields lets the checks that follow (limits, sizes, the work cap) see the
    # rest in the same pass, instead of after the user has fixed the schema errors.
    try:
        return model.model_validate(data), frozenset()
    except ValidationError as exc:
        errors = exc.errors()
    problems.extend(_Problem(_pydantic_message(e, model), path + tuple(e["loc"])) for e in errors)
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


# --- reading the four formats -------------------------------------------------------------------------


@dataclass
class _Document:
    data: Any
    lines: Callable[[], dict[FieldPath, int]]
    problems: list[_Problem] = field(default_factory=list)


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


def _yaml_lines(node: yaml.Node) -> tuple[dict[FieldPath, int], list[_Problem]]:
    lines: dict[FieldPath, int] = {}
    problems: list[_Problem] = []
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
                    problems.append(_Problem(f"key {name!r} appears twice in one mapping; keep one", line=line))
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


def _read_yaml(text: str, file: str) -> _Document:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ManifestError(f"{file}: the manifest has only comments; list prompts, e.g. 'prompts: [a red fox]'")
        lines, problems = _yaml_lines(node)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(file, exc) from None
    except RecursionError:
        raise ManifestError(f"{file}: nested too deeply to be a manifest") from None
    finally:
        loader.dispose()
    return _Document(data, lambda: lines, problems)


def _json_lines(text: str) -> dict[FieldPath, int]:
    # JSON is (nearly) YAML: composing it finds each field's line. Only done when there is an error to place;
    # where PyYAML cannot read the JSON, errors name the field path alone. Valid JSON has tabs only between
    # tokens, where PyYAML may refuse them, so they become spaces.
    try:
        node = yaml.compose(text.replace("\t", " "), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return {}
    return _yaml_lines(node)[0] if node is not None else {}


def _read_json(text: str, file: str) -> _Document:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{file}:{exc.lineno}: JSON syntax error: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise ManifestError(f"{file}: nested too deeply to be a manifest") from None
    return _Document(data, cache(lambda: _json_lines(text)))


def _read_jsonl(text: str, file: str) -> _Document:
    header: dict[str, Any] = {}
    prompts: list[Any] = []
    lines: dict[FieldPath, int] = {}
    problems: list[_Problem] = []
    first = True
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            reason = f"not valid JSON: {exc.msg} (column {exc.colno}); each line holds one JSON object or string"
            problems.append(_Problem(reason, line=number))
            first = False
            continue
        except RecursionError:
            raise ManifestError(f"{file}:{number}: nested too deeply to be a manifest") from None
        if first and isinstance(value, dict) and any(key in value for key in _RUN_KEYS):
            if "prompts" in value:
                problems.append(_Problem("the header cannot hold prompts; put each on a line of its own", line=number))
            header = {key: item for key, item in value.items() if key != "prompts"}
            lines.update(((key,), number) for key in header)
        else:
            lines[("prompts", len(prompts))] = number
            prompts.append(value)
        first = False
    lines.setdefault(("prompts",), 1)
    return _Document({**header, "prompts": prompts}, lambda: lines, problems)


_SEMICOLONS = re.compile(r"\s*;\s*")
_CSV_LISTS = {
    "seeds": re.compile(r"[\s;]+"),
    "image_prompts": _SEMICOLONS,
    "guides": _SEMICOLONS,
    "noise_prompts": _SEMICOLONS,
    "augments": re.compile(r"[\s;]+"),
}
"""CSV columns that hold lists, and what separates their items."""


def _read_csv(text: str, file: str) -> _Document:
    reader = csv.reader(io.StringIO(text), strict=True)
    allowed = sorted(PromptEntry.model_fields)
    header: list[str] | None = None
    prompts: list[dict[str, Any]] = []
    lines: dict[FieldPath, int] = {("prompts",): 1}
    problems: list[_Problem] = []
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
                problems.append(_Problem(message, line=line))
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
    return _Document({"prompts": prompts}, lambda: lines, problems)


def _check_csv_header(header: list[str], allowed: list[str], line: int, file: str) -> None:
    errors = []
    listing = f"allowed columns (separated by commas): {', '.join(allowed)}"
    for column in header:
        if column not in allowed:
            errors.append(f"{file}:{line}: unknown column {column!r}; {listing}")
        elif header.count(column) > 1:
            errors.append(f"{file}:{line}: column {column!r} appears more than once; keep one")
    if "text" not in header:
        errors.append(f"{file}:{line}: the header row has no 'text' column; it is required; {listing}")
    if errors:
        raise ManifestError(_join(file, list(dict.fromkeys(errors))))


_READERS: dict[str, Callable[[str, str], _Document]] = {
    ".yaml": _read_yaml,
    ".yml": _read_yaml,
    ".json": _read_json,
    ".jsonl": _read_jsonl,
    ".csv": _read_csv,
}


# --- validation ---------------------------------------------------------------------------------------


def load_manifest(
    data: bytes,
    name: str,
    config: Config | None = None,
    base_dir: Path | None = None,
    preset: str | None = None,
) -> Manifest:
    """Parse and fully validate a manifest (format from `name`'s extension); all errors in one ManifestError."""
    config = config or get_config()
    suffix = PurePosixPath(name).suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        raise ManifestError(
            f"{name}: unknown manifest format {suffix or '(no extension)'!r}; use one of {', '.join(FORMATS)}"
        )
    document = reader(_decode(data, name, config), name)
    return _Validator(name, config, base_dir, preset, document).run()


def load_manifest_file(path: str | Path, config: Config | None = None, preset: str | None = None) -> Manifest:
    """Load and validate the manifest at a local path; its image paths are relative to its folder."""
    path = Path(path)
    config = config or get_config()
    try:
        # Refuse before reading, so a huge file costs nothing.
        check_size(path.stat().st_size, str(path), config)
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    return load_manifest(data, str(path), config, base_dir=path.parent.resolve(), preset=preset)


def _source_problem(source: str, base_dir: Path | None, file: str) -> str | None:
    """Why an image source cannot be used, or None when it can."""
    if source.startswith(STORE_PREFIX):
        try:
            validate_key(source[len(STORE_PREFIX) :])
        except StorageError as exc:
            return f"{source!r} is not a usable store key ({exc}); write store:FOLDER/FILE"
        return None
    if _URL.match(source) or source.lower().startswith(("http:", "https:", "file:")):
        return (
            f"{source!r} is a URL, and images are not downloaded; "
            f"put the file beside the manifest, or in the object store as store:KEY"
        )
    windows = PureWindowsPath(source)
    if windows.drive or windows.root:
        return f"{source!r} is an absolute path; write it relative to the manifest's folder, or use store:KEY"
    if ".." in windows.parts:
        return f"{source!r} leaves the manifest's folder; only files under it can be used (or store:KEY)"
    if base_dir is None:
        return f"{source!r} is a local path, but {file} is not in a local folder; use store:KEY"
    folder = base_dir.resolve()
    resolved = (folder / source).resolve()
    if not resolved.is_relative_to(folder):
        return f"{source!r} links outside the manifest's folder; only files under it can be used (or store:KEY)"
    if not resolved.is_file():
        return f"{source!r}: no such file in {folder}; paths are relative to the manifest's folder"
    try:
        data = resolved.read_bytes()
    except OSError as exc:
        return f"{source!r} cannot be read ({exc.strerror or exc}); make it readable"
    return _image_problem(source, data)


def _over_limit(value: int, what: str, limit: int, variable: str) -> str:
    return f"{value} {what}, more than the {limit} allowed (VQCLIP_{variable}); use at most {limit}"


def _pick(key: str, *levels: BaseModel | None) -> Any:
    """The value of `key` at the most specific level that sets it (levels are listed most specific first)."""
    for level in levels:
        value = getattr(level, key, None) if level is not None else None
        if value is not None:
            return value
    return None


class _Validator:
    """Checks a parsed document against the schema and the limits, collecting every problem."""

    def __init__(self, file: str, config: Config, base_dir: Path | None, preset: str | None, document: _Document):
        self.file, self.settings, self.base_dir, self.preset = file, config, base_dir, preset
        self.document, self.lines = document, document.lines
        self.problems: list[_Problem] = list(document.problems)
        self.origins: dict[str, FieldPath] = {}
        self.ids: dict[str, int] = {}
        self.defaults_dropped: frozenset[str] = frozenset()

    def add(self, message: str, *path: str | int) -> None:
        """Record a problem at a field path."""
        if not any(p.path == path and p.message == message for p in self.problems):
            self.problems.append(_Problem(message, path))

    def run(self) -> Manifest:
        """Validate everything, then build the Manifest or raise one ManifestError listing every problem."""
        raw = self.document.data
        if isinstance(raw, list):
            raw, listed = {"prompts": raw}, self.lines
            self.lines = lambda: {("prompts", *path): line for path, line in listed().items()}
        if not isinstance(raw, dict):
            kind = type(raw).__name__
            raise ManifestError(f"{self.file}: the top level is a {kind}; make it a mapping with 'prompts' or a list")
        if self.preset is not None:
            try:
                get_preset(self.preset)
            except ModelError as exc:
                raise ManifestError(f"{self.file}: preset override: {exc}") from None
        header, _ = _parse(_Header, raw, (), self.problems)
        # An empty `defaults:` in YAML reads as null: treat it as no defaults.
        given = raw.get("defaults")
        defaults, self.defaults_dropped = _parse(Defaults, {} if given is None else given, ("defaults",), self.problems)
        self._check_limits(defaults, ("defaults",))
        entries = raw.get("prompts") if isinstance(raw.get("prompts"), list) else []
        if len(entries) > self.settings.max_prompts:
            self.add(_over_limit(len(entries), "prompts", self.settings.max_prompts, "MAX_PROMPTS"), "prompts")
            entries = []  # not worth checking one by one
        prompts = [self._prompt(index, entry, defaults) for index, entry in enumerate(entries)]
        self._check_total_work([p for p in prompts if p is not None])
        if not self.problems:
            return Manifest(
                file=self.file,
                name=header.name,
                shard_size=defaults.shard_size,
                prompts=tuple(p for p in prompts if p is not None),
                base_dir=self.base_dir,
                origins=self.origins,
            )
        _raise(self.file, self.problems, self.lines())

    def _prompt(self, index: int, raw: Any, defaults: Defaults | None) -> ManifestPrompt | None:
        path: FieldPath = ("prompts", index)
        entry, dropped = _parse(PromptEntry, raw, path, self.problems)
        if entry is None:
            return None
        self._check_limits(entry, path)
        prompt_id = entry.id or f"p{index + 1:03d}"
        if "id" not in dropped:  # a wrong id is reported already; its stand-in, the default id, could clash falsely
            self._check_id(prompt_id, entry.id is not None, index)
        seeds = self._seeds(entry, defaults, prompt_id, path)
        for position, image in enumerate(entry.image_prompts):
            self._check_source(image.path, *path, "image_prompts", position, "path")
        if entry.init_image:
            self._check_source(entry.init_image, *path, "init_image")
        if defaults is None:
            return None  # the defaults are broken: what this prompt inherits from them cannot be checked
        models = self._models(entry, defaults)
        settings = GenerationSettings(
            **{
                **self._preset_settings(entry, defaults),
                **{key: value for key in _SETTINGS_KEYS if (value := _pick(key, entry, defaults)) is not None},
            }
        )
        self._check_factor(settings, models, entry, path, dropped | self.defaults_dropped)
        self._check_outputs_and_schedule(settings, entry, path)
        return ManifestPrompt(
            id=prompt_id,
            text=entry.text,
            seeds=seeds,
            settings=settings,
            models=models,
            image_prompts=tuple((image.path, image.weight, image.stop) for image in entry.image_prompts),
            init_image=entry.init_image,
            noise_prompts=tuple(_pick("noise_prompts", entry, defaults) or ()),
        )

    def _seeds(self, entry: PromptEntry, defaults: Defaults | None, prompt_id: str, path: FieldPath) -> tuple[int, ...]:
        if entry.seeds is not None:
            repeated = sorted({seed for seed in entry.seeds if entry.seeds.count(seed) > 1})
            if repeated:
                self.add(f"seed {repeated[0]} appears more than once; a prompt's seeds must differ", *path, "seeds")
            if entry.n is not None and entry.n != len(entry.seeds):
                count = len(entry.seeds)
                self.add(f"n is {entry.n} but {count} seeds are given; drop n or give {entry.n} seeds", *path, "n")
            if len(entry.seeds) > self.settings.max_images_per_prompt:
                self.add(self._too_many_images(len(entry.seeds)), *path, "seeds")
            return tuple(entry.seeds)
        base = _pick("seed", entry, defaults) or 0
        return tuple(derive_seed(base, prompt_id, i) for i in range(_pick("n", entry, defaults) or 1))

    def _too_many_images(self, n: int) -> str:
        return _over_limit(n, "images per prompt", self.settings.max_images_per_prompt, "MAX_IMAGES_PER_PROMPT")

    def _check_limits(self, level: Defaults | PromptEntry | None, path: FieldPath) -> None:
        if level is None:
            return
        settings = self.settings
        if level.n is not None and level.n > settings.max_images_per_prompt:
            self.add(self._too_many_images(level.n), *path, "n")
        for side in ("width", "height"):
            value = getattr(level, side)
            if value is not None and value > settings.max_side:
                self.add(_over_limit(value, "pixels", settings.max_side, "MAX_SIDE"), *path, side)
        if level.steps is not None and level.steps > settings.max_steps:
            self.add(_over_limit(level.steps, "steps", settings.max_steps, "MAX_STEPS"), *path, "steps")

    def _preset_settings(self, entry: PromptEntry, defaults: Defaults) -> dict[str, Any]:
        """The generation settings the presets imply: the manifest's own preset's, then the override's on top.

        So a manifest written for the `reference` preset keeps its recipe when run on the tiny models.
        """
        named = _pick("preset", entry, defaults) or DEFAULT_PRESET
        return {**get_preset(named).settings, **(get_preset(self.preset).settings if self.preset else {})}

    def _models(self, entry: PromptEntry, defaults: Defaults) -> ModelSpec:
        if self.preset is not None:
            return models_for_preset(self.preset)
        spec = models_for_preset(DEFAULT_PRESET)
        for level in (defaults, entry):
            if level.preset is not None:
                spec = models_for_preset(level.preset)
            explicit = {key: getattr(level, key) for key in _MODEL_KEYS if getattr(level, key) is not None}
            if "guides" in explicit:
                explicit["guides"] = tuple((guide.clip, guide.weight) for guide in explicit["guides"])
            if explicit:
                spec = ModelSpec(**{**spec.model_dump(), **explicit})
        return spec

    def _check_factor(
        self,
        settings: GenerationSettings,
        models: ModelSpec,
        entry: PromptEntry,
        path: FieldPath,
        dropped: frozenset[str],
    ) -> None:
        # Fields dropped for their own errors leave stand-ins: checking those would report what nobody wrote.
        if self.preset is None and dropped & _MODEL_CHOICE_KEYS:
            return
        factor = models.factor
        for side in ("width", "height"):
            value = getattr(settings, side)
            if getattr(entry, side) is None and side in dropped:
                continue
            if value % factor:
                where = (*path, side) if getattr(entry, side) is not None else ("defaults", side)
                low, high = value // factor * factor, (value // factor + 1) * factor
                suggestion = f"{low} or {high}" if low else str(high)
                cell = f"the pixels per latent cell of VQGAN {models.vqgan}"
                self.add(f"{value} is not a multiple of {factor}, {cell}; use e.g. {suggestion}", *where)

    def _check_outputs_and_schedule(self, settings: GenerationSettings, entry: PromptEntry, path: FieldPath) -> None:
        def where(key: str) -> FieldPath:
            return (*path, key) if getattr(entry, key) is not None else ("defaults", key)

        if settings.video is not None and not settings.save_every:
            self.add("video is made of the frames, and save_every is 0; set save_every, e.g. 10, or drop video", *where("video"))
        zoom = settings.zoom
        if zoom is not None:
            if settings.save_every or settings.video is not None:
                self.add(
                    "a zoom video stores every frame and makes its own MP4; drop save_every and video (zoom.fps sets its frame rate)",
                    *where("zoom"),
                )
            for axis, side, size in (("shift_x", "width", settings.width), ("shift_y", "height", settings.height)):
                shift = getattr(zoom, axis)
                if abs(shift) >= size:
                    self.add(f"{shift} pixels, not less than the {size} px {side}; use -{size - 1} to {size - 1}", *where("zoom"), axis)
        stages = len(parse_schedule(entry.text))
        if stages > 1 and not settings.change_every:
            self.add(
                f"the text is a schedule of {stages} prompts separated by '^', and change_every is 0; set change_every "
                "to the steps (in a zoom video, the frames) each prompt guides, e.g. 50 (or write a literal '^' as '\\^')",
                *path,
                "text",
            )
        elif stages > 1 and settings.change_every >= settings.turns:
            turns = "frames of the zoom video" if zoom else "steps"
            self.add(
                f"change_every is {settings.change_every}, not less than the {settings.turns} {turns}: only the first "
                f"of the {stages} scheduled prompts would guide; use a smaller change_every",
                *where("change_every"),
            )

    def _check_total_work(self, prompts: list[ManifestPrompt]) -> None:
        images = sum(len(p.seeds) for p in prompts)
        steps = sum(len(p.seeds) * p.settings.total_steps for p in prompts)
        pixel_steps = sum(len(p.seeds) * p.settings.width * p.settings.height * p.settings.total_steps for p in prompts)
        limit = self.settings.max_megapixel_steps
        if pixel_steps > limit * 1_000_000:
            self.add(
                f"{images:,} image{'s' if images != 1 else ''} of {steps:,} steps in all, "
                f"{math.ceil(pixel_steps / 1e6):,} megapixel-steps (width x height x steps, summed over the images), "
                f"more than the {limit:,} allowed (VQCLIP_MAX_MEGAPIXEL_STEPS); split the manifest or raise that limit",
                "prompts",
            )

    def _check_source(self, source: str, *path: str | int) -> None:
        problem = _source_problem(source, self.base_dir, self.file)
        if problem:
            self.add(problem, *path)
        else:
            self.origins.setdefault(source, path)

    def _check_id(self, prompt_id: str, explicit: bool, index: int) -> None:
        if prompt_id in self.ids:
            where = ("prompts", index, "id") if explicit else ("prompts", index)
            label = "id" if explicit else "default id (from its position)"
            first = self.ids[prompt_id]
            self.add(f"{label} {prompt_id!r} is already used by prompts[{first}]; prompt ids must be unique", *where)
        self.ids.setdefault(prompt_id, index)
