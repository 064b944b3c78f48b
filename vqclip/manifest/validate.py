"""Validating a manifest: schema, limits, image sources and models, every problem collected at once."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path, PureWindowsPath
from typing import Any

from pydantic import BaseModel

from vqclip.config import Config, get_config
from vqclip.errors import ManifestError, ModelError, StorageError
from vqclip.filter_spec import FilterSpec, default_filter
from vqclip.items import GenerationSettings
from vqclip.manifest.plan import Manifest, ManifestPrompt, derive_seed, image_problem
from vqclip.manifest.problems import FieldPath, Problem, parse_model, raise_problems
from vqclip.manifest.readers import Document, check_size, read_document
from vqclip.manifest.schema import Defaults, Header, PromptEntry
from vqclip.manifest.sources import STORE_PREFIX
from vqclip.models.presets import get_preset, models_for_preset
from vqclip.models.spec import ModelSpec
from vqclip.prompts import parse_schedule
from vqclip.storage.base import validate_key

DEFAULT_PRESET = "default"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

_MODEL_KEYS = ("vqgan", "guides", "scorer")
_SETTINGS_KEYS = tuple(GenerationSettings.model_fields)

_MODEL_CHOICE_KEYS = frozenset({"preset", "vqgan"})


def load_manifest(
    data: bytes,
    name: str,
    config: Config | None = None,
    base_dir: Path | None = None,
    preset: str | None = None,
) -> Manifest:
    """Parse and fully validate a manifest (format from `name`'s extension); all errors in one ManifestError."""
    config = config or get_config()
    return _Validator(name, config, base_dir, preset, read_document(data, name, config)).run()


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
    return image_problem(source, data)


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

    def __init__(self, file: str, config: Config, base_dir: Path | None, preset: str | None, document: Document):
        self.file, self.config, self.base_dir, self.preset = file, config, base_dir, preset
        self.document, self.lines = document, document.lines
        self.problems: list[Problem] = list(document.problems)
        self.origins: dict[str, FieldPath] = {}
        self.ids: dict[str, int] = {}
        self.defaults_dropped: frozenset[str] = frozenset()

    def add(self, message: str, *path: str | int) -> None:
        """Record a problem at a field path."""
        if not any(p.path == path and p.message == message for p in self.problems):
            self.problems.append(Problem(message, path))

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
        header, _ = parse_model(Header, raw, (), self.problems)
        # An empty `defaults:` in YAML reads as null: treat it as no defaults.
        given = raw.get("defaults")
        defaults, self.defaults_dropped = parse_model(Defaults, {} if given is None else given, ("defaults",), self.problems)
        self._check_limits(defaults, ("defaults",))
        entries = raw.get("prompts") if isinstance(raw.get("prompts"), list) else []
        if len(entries) > self.config.max_prompts:
            self.add(_over_limit(len(entries), "prompts", self.config.max_prompts, "MAX_PROMPTS"), "prompts")
            entries = []  # not worth checking one by one
        prompts = [self._prompt(index, entry, defaults) for index, entry in enumerate(entries)]
        self._check_total_work([p for p in prompts if p is not None])
        spec = self._filter(raw)
        if not self.problems:
            return Manifest(
                file=self.file,
                name=header.name,
                shard_size=defaults.shard_size,
                prompts=tuple(p for p in prompts if p is not None),
                base_dir=self.base_dir,
                origins=self.origins,
                filter=spec,
            )
        raise_problems(self.file, self.problems, self.lines())

    def _filter(self, raw: dict) -> FilterSpec | None:
        """The manifest's `filter:` section; `false` turns off the run-level default, leaving it out keeps it."""
        if "filter" not in raw:
            return default_filter(self.config.filter)
        if raw["filter"] is False:
            return None
        spec, _ = parse_model(FilterSpec, raw["filter"], ("filter",), self.problems)
        return spec

    def _prompt(self, index: int, raw: Any, defaults: Defaults | None) -> ManifestPrompt | None:
        path: FieldPath = ("prompts", index)
        entry, dropped = parse_model(PromptEntry, raw, path, self.problems)
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
            repeated = sorted(seed for seed, count in Counter(entry.seeds).items() if count > 1)
            if repeated:
                self.add(f"seed {repeated[0]} appears more than once; a prompt's seeds must differ", *path, "seeds")
            if entry.n is not None and entry.n != len(entry.seeds):
                count = len(entry.seeds)
                self.add(f"n is {entry.n} but {count} seeds are given; drop n or give {entry.n} seeds", *path, "n")
            if len(entry.seeds) > self.config.max_images_per_prompt:
                self.add(self._too_many_images(len(entry.seeds)), *path, "seeds")
            return tuple(entry.seeds)
        base = _pick("seed", entry, defaults) or 0
        # An n over the limit is already a problem (_check_limits): derive no more seeds than allowed.
        count = min(_pick("n", entry, defaults) or 1, self.config.max_images_per_prompt)
        return tuple(derive_seed(base, prompt_id, i) for i in range(count))

    def _too_many_images(self, n: int) -> str:
        return _over_limit(n, "images per prompt", self.config.max_images_per_prompt, "MAX_IMAGES_PER_PROMPT")

    def _check_limits(self, level: Defaults | PromptEntry | None, path: FieldPath) -> None:
        if level is None:
            return
        settings = self.config
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
        limit = self.config.max_megapixel_steps
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
