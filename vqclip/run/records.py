"""The metadata records a run writes: image sidecars, the run index and the ranking."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, Field

from vqclip import __version__
from vqclip.filter_spec import FilterLabel
from vqclip.items import GenerationSettings, ImagePrompt, NoisePrompt, WorkItem
from vqclip.models.spec import ModelSpec

SYNTHETIC_LABEL = "synthetic: untrained random weights (test/smoke preset), not a real generation"


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def engine_label() -> str:
    """The engine and version that made an image, as its PNG and sidecar name it."""
    return f"vqclip {__version__}"


def synthetic_label(item: WorkItem) -> str | None:
    """SYNTHETIC_LABEL for an item made with untrained random weights, else None."""
    return SYNTHETIC_LABEL if item.models.synthetic else None


def prompt_parts(item: WorkItem) -> list[dict]:
    """The item's parsed prompt parts as plain JSON; `stop` is None for a part without one."""
    return [{"text": p.text, "weight": p.weight, "stop": p.stop if p.stop != float("-inf") else None} for p in item.parts]


def item_settings(item: WorkItem) -> dict:
    """Everything that made an item's pixels, as plain JSON: the text chunks of its PNG."""
    return {
        "item_id": item.item_id,
        "prompt_id": item.prompt_id,
        "index": item.index,
        "prompt": item.prompt,
        "parts": prompt_parts(item),
        "seed": item.seed,
        "width": item.settings.width,
        "height": item.settings.height,
        "steps": item.settings.steps,
        "settings": item.settings.model_dump(mode="json"),
        "models": item.models.model_dump(mode="json"),
        "image_prompts": [p.model_dump(mode="json") for p in item.image_prompts],
        "init_image": item.init_image.model_dump(mode="json") if item.init_image else None,
        "noise_prompts": [p.model_dump(mode="json") for p in item.noise_prompts],
        "engine": engine_label(),
        "synthetic": synthetic_label(item),
    }


class PromptPart(BaseModel):
    """One parsed part of an item's prompt; `stop` is None when the part has none."""

    text: str
    weight: float
    stop: float | None = None


class ItemRecord(BaseModel):
    """The sidecar of one image: written after the PNG, it marks the item done."""

    item_id: str
    prompt_id: str
    index: int
    prompt: str
    parts: list[PromptPart] = []
    seed: int
    settings: GenerationSettings
    models: ModelSpec
    image_prompts: list[ImagePrompt] = []
    init_image: ImagePrompt | None = None
    noise_prompts: list[NoisePrompt] = []
    image_key: str
    frame_keys: list[str] = []
    """The intermediate images (every `save_every` steps), or every frame of a zoom video, oldest first."""
    video_key: str | None = None
    """The MP4 of the frames and the final image, or of a zoom video's frames, when the settings ask for one."""
    engine: str = f"vqclip {__version__}"
    synthetic: str | None = None
    loss: float
    guide_similarity: dict[str, float]
    first_guide_similarity: dict[str, float]
    seconds: float
    device: str
    attempt: int = 1
    lr_used: float
    score: float | None = None
    scorer: str | None = None
    filter: FilterLabel | None = None
    """The zero-shot filter's label (vqclip.run.filtering); a filtered image stays stored but is left out of every published output."""
    created_at: str = Field(default_factory=utc_now)

    @property
    def filtered(self) -> bool:
        """Whether the zero-shot filter keeps this image out of the ranking, sheets, gallery and artifacts."""
        return self.filter is not None and self.filter.filtered


ItemState = Literal["done", "failed", "pending"]


class IndexEntry(BaseModel):
    """One item's line in the run index."""

    item_id: str
    prompt_id: str
    index: int
    seed: int
    state: ItemState
    image_key: str | None = None
    sidecar_key: str | None = None
    score: float | None = None
    rank: int | None = None
    error: str | None = None
    filtered: bool = False
    """Kept in storage but left out of the ranking, sheets, gallery and artifacts by the zero-shot filter."""


class RunIndex(BaseModel):
    """`runs/<run-id>/index.json`: every item of the run and its state."""

    run_id: str
    manifest: str
    created_at: str = Field(default_factory=utc_now)
    complete: bool
    counts: dict[str, int]
    items: list[IndexEntry]


class RankedImage(BaseModel):
    """An image in the ranking of its prompt."""

    rank: int
    item_id: str
    score: float
    image_key: str


class PromptRanking(BaseModel):
    """The images of one prompt, best first."""

    prompt_id: str
    prompt: str
    scorer: str | None = None
    """The CLIP model that scored these images (None in rankings from before each prompt named its own)."""
    images: list[RankedImage]


class Ranking(BaseModel):
    """`runs/<run-id>/ranking.json`."""

    run_id: str
    prompts: list[PromptRanking]


class PlanRecord(BaseModel):
    """`runs/<run-id>/plan.json`: the run's work items, grouped into shards."""

    run_id: str
    shards: list[list[WorkItem]]


class ShardOutcome(BaseModel):
    """What became of a shard's items."""

    done: list[str] = []
    failed: dict[str, str] = {}
