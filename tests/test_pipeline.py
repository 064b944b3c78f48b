"""The batch flow on Prefect's ephemeral API into a local folder: outputs agree, re-runs resume, faults heal."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.batch import batch_generate
from tasks import generation
from vqclip import layout
from vqclip.images import read_png_metadata
from vqclip.records import ItemRecord, Ranking, RunIndex
from vqclip.storage import open_store

MANIFEST = """\
name: pipeline test
defaults:
  preset: tiny
  width: 64
  height: 64
  steps: 4
  cutouts: 4
  n: 2
  batch_size: 3
prompts:
  - id: fox
    text: "a red fox:1 | blurry:-0.5"
  - id: sea
    text: a blue sea
    n: 3
"""
ITEMS = 5


@pytest.fixture
def manifest(tmp_path, prefect_api) -> Path:
    path = tmp_path / "batch.yaml"
    path.write_text(MANIFEST)
    return path


def run(manifest: Path, storage: str, run_id: str):
    return batch_generate(manifest=str(manifest), storage=storage, run_id=run_id, return_state=True)


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


def test_end_to_end_into_a_local_folder(manifest, tmp_path):
    storage = str(tmp_path / "out")
    state = run(manifest, storage, "e2e")
    assert state.is_completed(), state.message
    store = open_store(storage)
    check_complete_run(store, "e2e", ITEMS)
    assert store.get_bytes(layout.manifest_key("e2e", ".yaml")) == manifest.read_bytes()

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    by_type = {a.type: a for a in artifacts}
    assert {"table", "markdown", "progress"} <= set(by_type)
    table = json.loads(by_type["table"].data) if isinstance(by_type["table"].data, str) else by_type["table"].data
    assert len(table) == ITEMS and {"prompt", "seed", "score", "rank"} <= set(table[0])


def test_rerun_with_the_same_id_writes_nothing_new_and_loads_no_model(manifest, tmp_path, monkeypatch):
    storage = str(tmp_path / "out")
    assert run(manifest, storage, "again").is_completed()
    store = open_store(storage)
    before = {key: store.get_bytes(key) for key in store.list(layout.items_prefix("again")) if key.endswith(".png")}
    monkeypatch.setattr(generation, "load_models", lambda *a, **k: pytest.fail("a finished run must not load models"))
    assert run(manifest, storage, "again").is_completed()
    after = {key: store.get_bytes(key) for key in store.list(layout.items_prefix("again")) if key.endswith(".png")}
    assert after == before


def test_storage_errors_on_the_first_writes_are_retried(manifest, tmp_path, monkeypatch):
    from vqclip.errors import StorageError
    from vqclip.storage.local import LocalStore

    original, failures = LocalStore.put_bytes, {"left": 3}

    def flaky(self, key, data, content_type=None):
        if key.endswith(".png") and failures["left"]:
            failures["left"] -= 1
            raise StorageError("injected: connection reset")
        return original(self, key, data, content_type)

    monkeypatch.setattr(LocalStore, "put_bytes", flaky)
    monkeypatch.setattr(generation, "COMMIT_RETRY_DELAYS", (0,) * 5)
    generated = []
    original_generate = generation.engine.generate
    monkeypatch.setattr(generation.engine, "generate", lambda items, *a, **k: generated.extend(items) or original_generate(items, *a, **k))
    storage = str(tmp_path / "out")
    assert run(manifest, storage, "flaky").is_completed()
    assert failures["left"] == 0
    assert len(generated) == ITEMS, "a failed write is retried on its own: no image is generated twice"
    check_complete_run(open_store(storage), "flaky", ITEMS)


def test_out_of_memory_splits_the_shard(manifest, tmp_path, monkeypatch):
    original, sizes = generation.engine.generate, []

    def tight_memory(items, *args, **kwargs):
        sizes.append(len(items))
        if len(items) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return original(items, *args, **kwargs)

    monkeypatch.setattr(generation.engine, "generate", tight_memory)
    storage = str(tmp_path / "out")
    assert run(manifest, storage, "oom").is_completed()
    assert sizes[:3] == [3, 1, 2] and sizes.count(1) == ITEMS
    check_complete_run(open_store(storage), "oom", ITEMS)


def test_a_single_item_out_of_memory_runs_again_with_decoder_checkpointing(manifest, tmp_path, monkeypatch):
    original, calls = generation.engine.generate, []

    def memory_for_checkpointed_only(items, models, settings, *args, **kwargs):
        calls.append((len(items), settings.checkpoint_side))
        if not 0 < settings.checkpoint_side <= items[0].settings.width:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return original(items, models, settings, *args, **kwargs)

    monkeypatch.setattr(generation.engine, "generate", memory_for_checkpointed_only)
    storage = str(tmp_path / "out")
    assert run(manifest, storage, "oom-checkpoint").is_completed()
    assert (1, 0) in calls and (1, 64) in calls, "a lone item that does not fit is retried with checkpointing"
    check_complete_run(open_store(storage), "oom-checkpoint", ITEMS)


def test_a_nan_item_restarts_at_half_lr_then_fails_alone(manifest, tmp_path, monkeypatch):
    original, calls = generation.engine.generate, []

    def nan_for_fox_seed(items, *args, **kwargs):
        results = original(items, *args, **kwargs)
        calls.append([i.settings.lr for i in items])
        for result in results:
            if result.item.prompt_id == "fox" and result.item.index == 1:
                result.error, result.image = "loss became non-finite (nan) (injected)", None
        return results

    monkeypatch.setattr(generation.engine, "generate", nan_for_fox_seed)
    storage = str(tmp_path / "out")
    state = run(manifest, storage, "nan")
    assert state.is_failed()
    assert "1 of 5 items not done" in state.message and "--run-id nan" in state.message
    assert [0.05] in calls, "the failed item is restarted once at half the learning rate"
    index = RunIndex.model_validate_json(open_store(storage).get_bytes(layout.index_key("nan")))
    failed = [e for e in index.items if e.state == "failed"]
    assert len(failed) == 1 and "half the learning rate" in failed[0].error
    assert index.counts["done"] == ITEMS - 1


def test_a_shard_larger_than_the_device_fits_runs_in_batches_while_uploads_continue(manifest, tmp_path, monkeypatch):
    import threading

    original_generate, original_commit = generation.engine.generate, generation.commit_result
    sizes, committing_threads = [], set()

    def record_batch(items, *args, **kwargs):
        sizes.append(len(items))
        return original_generate(items, *args, **kwargs)

    def record_commit(*args, **kwargs):
        committing_threads.add(threading.current_thread().name)
        return original_commit(*args, **kwargs)

    monkeypatch.setattr(generation, "batch_size", lambda models, items, runtime: 2)
    monkeypatch.setattr(generation.engine, "generate", record_batch)
    monkeypatch.setattr(generation, "commit_result", record_commit)
    storage = str(tmp_path / "out")
    assert run(manifest, storage, "batched").is_completed()
    assert sorted(sizes) == [1, 2, 2], "the shards of 3 and 2 items are cut into batches of at most 2"
    assert committing_threads and all(name.startswith("vqclip-upload") for name in committing_threads)
    check_complete_run(open_store(storage), "batched", ITEMS)


INJECTION = r"![x](http\://127.0.0.1\:9/p.png) [click](javascript\:alert(1)) <img src=x onerror=alert(1)>"


def test_prompt_text_in_the_summary_artifact_renders_as_text(tmp_path, prefect_api):
    from markdown_it import MarkdownIt

    path = tmp_path / "inject.yaml"
    path.write_text(
        "defaults: {preset: tiny, width: 64, height: 64, steps: 2, cutouts: 2}\n"
        f"prompts:\n  - {{id: evil, text: {json.dumps(INJECTION)}}}\n"
    )
    state = run(path, str(tmp_path / "out"), "inject")
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    (summary,) = [a for a in artifacts if a.type == "markdown"]
    page = MarkdownIt("commonmark").enable("table").render(summary.data)
    assert "<img" not in page and "<a " not in page, page
    assert f"evil: {html.escape(INJECTION, quote=False)}</td>" in page  # the prompt as written, as text
