"""A run's state in the store: what is done, committing results, and the index and ranking.

The commit rule: an image's PNG is written first, then its frames and video, and its sidecar JSON
last, so an item is done exactly when its sidecar exists and names an image that exists. Everything here is idempotent, so
a retried task or a resumed run writes nothing twice and loses nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from pydantic import ValidationError

from vqclip.errors import StorageError, VqclipError
from vqclip.items import WorkItem
from vqclip.media.png import decode_image, encode_png
from vqclip.prompts import final_prompt, scoring_text
from vqclip.run import layout
from vqclip.run.records import (
    IndexEntry,
    ItemRecord,
    PromptRanking,
    RankedImage,
    Ranking,
    RunIndex,
    engine_label,
    item_settings,
    prompt_parts,
    synthetic_label,
)
from vqclip.storage import ObjectStore

if TYPE_CHECKING:
    from vqclip.engine.generate import GenerationResult

log = logging.getLogger(__name__)


def new_run_id(manifest_name: str, manifest_bytes: bytes) -> str:
    """A fresh run id: the manifest's name, the time and a hash of its content."""
    # Run ids are ASCII key segments that start with a letter or digit (layout.check_run_id): "café.yaml"
    # gives caf-..., "テスト.yaml" or "-x.yaml" give run-... and x-...
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "-" for c in Path(manifest_name).stem)
    stem = safe.strip("-_")[:40].rstrip("-_") or "run"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stem}-{stamp}-{hashlib.sha256(manifest_bytes).hexdigest()[:6]}"


@dataclass(frozen=True)
class RunStore:
    """One run in an object store: its staged inputs, its items' records and commits, and its index."""

    store: ObjectStore
    run_id: str

    def stage_inputs(self, items: list[WorkItem], read: Callable[[str], bytes]) -> None:
        """Copy every image input of the run into the store by digest, so any worker can read it."""
        for prompt in {p.digest: p for item in items for p in item.inputs}.values():
            key = layout.input_key(self.run_id, prompt.digest)
            if not self.store.exists(key):
                self.store.put_bytes(key, read(prompt.source))

    def read_inputs(self, items: list[WorkItem]) -> dict[str, Image.Image]:
        """The staged image inputs of `items`, by source, as the engine takes them."""
        return {
            prompt.source: decode_image(self.store.get_bytes(layout.input_key(self.run_id, prompt.digest)))
            for item in items
            for prompt in item.inputs
        }

    def record(self, item_id: str) -> ItemRecord | None:
        """The item's sidecar if the item is done (sidecar readable and its image present), else None."""
        try:
            record = ItemRecord.model_validate_json(self.store.get_bytes(layout.sidecar_key(self.run_id, item_id)))
        except (StorageError, ValidationError, ValueError):
            return None
        return record if self.store.exists(record.image_key) else None

    def done_records(self) -> dict[str, ItemRecord]:
        """Every done item of the run, by item id."""
        records = {}
        for key in self.store.list(layout.items_prefix(self.run_id)):
            if key.endswith(".json"):
                item_id = key.rsplit("/", 1)[-1][: -len(".json")]
                record = self.record(item_id)
                if record is not None:
                    records[item_id] = record
        return records

    def pending(self, items: list[WorkItem]) -> list[WorkItem]:
        """The items that still need generating (reads only these items' sidecars, not the whole run's)."""
        return [item for item in items if self.record(item.item_id) is None]

    def commit(self, item: WorkItem, result: GenerationResult, device: str, attempt: int = 1) -> ItemRecord:
        """Write an item's PNG, its frames and video, then its sidecar (the commit marker). `item` is the item as planned."""
        image_key = layout.image_key(self.run_id, item.item_id)
        settings = item_settings(item)
        settings["lr_used"] = result.item.settings.lr
        self.store.put_bytes(image_key, encode_png(result.image, settings), content_type="image/png")
        frame_keys = []
        for number, frame in enumerate(result.frames, start=1):
            step = number * item.settings.save_every
            frame_keys.append(layout.frame_key(self.run_id, item.item_id, step))
            self.store.put_bytes(frame_keys[-1], encode_png(frame, {**settings, "frame_step": step}), content_type="image/png")
        video_key = None
        if item.settings.video is not None:
            from vqclip.media.video import encode_mp4  # PyAV, only for runs with videos

            video_key = layout.video_key(self.run_id, item.item_id)
            video = encode_mp4([*result.frames, result.image], item.settings.video.fps)
            self.store.put_bytes(video_key, video, content_type="video/mp4")
        record = item_record(item, result, device, attempt, image_key, frame_keys, video_key)
        self.write_record(record)
        return record

    def write_record(self, record: ItemRecord) -> ItemRecord:
        """Write (or rewrite, e.g. with a score) an item's sidecar; return it."""
        put_json(self.store, layout.sidecar_key(self.run_id, record.item_id), record)
        return record

    def load_index(self) -> RunIndex:
        """The run's index, or a clear error when the run does not exist in this store."""
        try:
            return RunIndex.model_validate_json(self.store.get_bytes(layout.index_key(self.run_id)))
        except StorageError:
            raise VqclipError(f"no run {self.run_id!r} in {self.store.uri} (no {layout.index_key(self.run_id)})") from None


def item_record(
    item: WorkItem,
    result: GenerationResult,
    device: str,
    attempt: int,
    image_key: str,
    frame_keys: list[str],
    video_key: str | None,
) -> ItemRecord:
    """The sidecar of `item` (as planned), made as `result` says, whose outputs are stored under these keys."""
    return ItemRecord(
        item_id=item.item_id,
        prompt_id=item.prompt_id,
        index=item.index,
        prompt=item.prompt,
        parts=prompt_parts(item),
        seed=item.seed,
        engine=engine_label(),
        synthetic=synthetic_label(item),
        settings=item.settings,
        models=item.models,
        image_prompts=list(item.image_prompts),
        init_image=item.init_image,
        noise_prompts=list(item.noise_prompts),
        image_key=image_key,
        frame_keys=frame_keys,
        video_key=video_key,
        loss=result.loss,
        guide_similarity=result.similarity,
        first_guide_similarity=result.first_similarity,
        seconds=round(result.seconds, 3),
        device=device,
        attempt=attempt,
        lr_used=result.item.settings.lr,
    )


def build_ranking(run_id: str, records: dict[str, ItemRecord]) -> Ranking:
    """Per prompt, its scored images best first, with the scorer that scored them; images the filter marked are left out."""
    from vqclip.engine.score import Scored, rank  # imports torch: kept off the path of `vqclip show` and `validate`

    prompts = {r.prompt_id: r.prompt for r in records.values()}
    scored = [r for r in records.values() if r.score is not None and not r.filtered]
    scorers = {r.prompt_id: r.scorer for r in scored}
    ranked = rank([Scored(r.prompt_id, r.item_id, r.score) for r in scored])
    return Ranking(
        run_id=run_id,
        prompts=[
            PromptRanking(
                prompt_id=prompt_id,
                prompt=prompts[prompt_id],
                scorer=scorers[prompt_id],
                images=[
                    RankedImage(rank=i + 1, item_id=e.item_id, score=round(e.score, 4), image_key=records[e.item_id].image_key)
                    for i, e in enumerate(group)
                ],
            )
            for prompt_id, group in ranked.items()
        ],
    )


def build_index(
    run_id: str,
    manifest: str,
    items: list[WorkItem],
    records: dict[str, ItemRecord],
    ranking: Ranking,
    failures: dict[str, str],
) -> RunIndex:
    """Every planned item with its state, keys, score and rank."""
    ranks = {img.item_id: img.rank for p in ranking.prompts for img in p.images}
    entries = []
    for item in items:
        record = records.get(item.item_id)
        state = "done" if record else ("failed" if item.item_id in failures else "pending")
        entries.append(
            IndexEntry(
                item_id=item.item_id,
                prompt_id=item.prompt_id,
                index=item.index,
                seed=item.seed,
                state=state,
                image_key=record.image_key if record else None,
                sidecar_key=layout.sidecar_key(run_id, item.item_id) if record else None,
                score=record.score if record else None,
                rank=ranks.get(item.item_id),
                error=failures.get(item.item_id) if not record else None,
                filtered=record.filtered if record else False,
            )
        )
    counts = {state: sum(e.state == state for e in entries) for state in ("done", "failed", "pending")}
    return RunIndex(
        run_id=run_id, manifest=manifest, complete=counts["done"] == len(entries), counts=counts, items=entries
    )


def put_json(store: ObjectStore, key: str, model) -> None:
    """Write a pydantic model as indented JSON."""
    store.put_bytes(key, model.model_dump_json(indent=2).encode(), content_type="application/json")


def scoring_prompt(record: ItemRecord) -> str:
    """The text an item is scored against."""
    return scoring_text(final_prompt(record.prompt, record.settings.turns, record.settings.change_every))
