"""The validated manifest and its expansion into work items and shards, with a summary of the plan."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from PIL import Image, UnidentifiedImageError

from vqclip.errors import ManifestError, ObjectNotFound
from vqclip.filter_spec import FilterSpec
from vqclip.items import GenerationSettings, ImagePrompt, NoisePrompt, WorkItem
from vqclip.manifest.problems import FieldPath, format_path, join_errors
from vqclip.manifest.sources import STORE_PREFIX, SourceReader
from vqclip.models.spec import ModelSpec


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
    filter: FilterSpec | None = None
    """The zero-shot filter: the manifest's own, else VQCLIP_FILTER's default; None with `filter: false` or neither."""
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
            where = f"{self.file}: {format_path(self.origins[source])}" if source in self.origins else self.file
            try:
                data = self.read_bytes(source, read_source)
            except ManifestError as exc:
                errors.append(f"{where}: {exc}")
                continue
            problem = image_problem(source, data)
            if problem:
                errors.append(f"{where}: {problem}")
            digests[source] = hashlib.sha256(data).hexdigest()
        if errors:
            raise ManifestError(join_errors(self.file, errors))
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


def image_problem(source: str, data: bytes) -> str | None:
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
        raise ManifestError(join_errors(file, errors))


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
