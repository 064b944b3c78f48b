"""Runs for pipeline and CLI tests: small tiny-preset manifests, and checks on what a run wrote."""

from __future__ import annotations

from pathlib import Path

from vqclip.media.png import read_png_metadata
from vqclip.run import layout
from vqclip.run.records import ItemRecord, Ranking, RunIndex

TINY_RUN = """\
defaults:
  preset: tiny
  width: 64
  height: 64
  steps: {steps}
  cutouts: 4
  n: {n}
  shard_size: 1
prompts:
  - id: fox
    text: "a red fox:1 | blurry:-0.5"
"""

MANIFEST = """\
name: pipeline test
defaults:
  preset: tiny
  width: 64
  height: 64
  steps: 4
  cutouts: 4
  n: 2
  shard_size: 3
prompts:
  - id: fox
    text: "a red fox:1 | blurry:-0.5"
  - id: sea
    text: a blue sea
    n: 3
"""
ITEMS = 5


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def item_ids(store, run_id: str, suffix: str) -> list[str]:
    return sorted(k.rsplit("/", 1)[-1][: -len(suffix)] for k in store.list(layout.items_prefix(run_id)) if k.endswith(suffix))


def check_complete_run(store, run_id: str, expected_items: int) -> RunIndex:
    """Every planned item is done exactly once, and index, ranking, sheets and gallery agree."""
    pngs, sidecars = item_ids(store, run_id, ".png"), item_ids(store, run_id, ".json")
    assert len(pngs) == expected_items and pngs == sidecars
    index = RunIndex.model_validate_json(store.get_bytes(layout.index_key(run_id)))
    assert index.complete and index.counts["done"] == expected_items
    assert sorted(e.item_id for e in index.items) == pngs
    ranking = Ranking.model_validate_json(store.get_bytes(layout.ranking_key(run_id)))
    ranked = {img.item_id: (p.prompt_id, img.rank, img.score) for p in ranking.prompts for img in p.images}
    assert sorted(ranked) == pngs
    gallery = store.get_bytes(layout.gallery_key(run_id)).decode()
    for entry in index.items:
        record = ItemRecord.model_validate_json(store.get_bytes(entry.sidecar_key))
        assert record.score == entry.score == ranked[entry.item_id][2]
        assert entry.rank == ranked[entry.item_id][1] and record.prompt_id == ranked[entry.item_id][0]
        assert read_png_metadata(store.get_bytes(record.image_key))["item_id"] == entry.item_id
        assert record.image_key.rsplit("/", 1)[-1] in gallery
    for prompt in ranking.prompts:
        scores = [img.score for img in prompt.images]
        assert scores == sorted(scores, reverse=True)
        assert store.exists(layout.sheet_key(run_id, prompt.prompt_id))
    return index
