"""The batch flow on Prefect's ephemeral API into a local folder: outputs agree, re-runs resume, faults heal (run_shard's own rules: tests/run/test_shard.py)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.batch import batch_generate
from tasks import generation
from tests.helpers.runs import ITEMS, check_complete_run
from vqclip.media.png import read_png_metadata
from vqclip.run import layout, shard
from vqclip.run.records import ItemRecord, Ranking, RunIndex
from vqclip.run.state import RunStore
from vqclip.storage import open_store


def run(manifest: Path, storage: str, run_id: str):
    return batch_generate(manifest=str(manifest), storage=storage, run_id=run_id, return_state=True)


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


@pytest.mark.slow
def test_rerun_with_the_same_id_writes_nothing_new_and_loads_no_model(manifest, tmp_path, monkeypatch):
    storage = str(tmp_path / "out")
    assert run(manifest, storage, "again").is_completed()
    store = open_store(storage)
    before = {key: store.get_bytes(key) for key in store.list(layout.items_prefix("again")) if key.endswith(".png")}
    monkeypatch.setattr(generation, "load_models", lambda *a, **k: pytest.fail("a finished run must not load models"))
    assert run(manifest, storage, "again").is_completed()
    after = {key: store.get_bytes(key) for key in store.list(layout.items_prefix("again")) if key.endswith(".png")}
    assert after == before


@pytest.mark.slow
def test_storage_errors_on_the_first_writes_are_retried(manifest, tmp_path, monkeypatch, flaky_png_writes):
    failures = flaky_png_writes
    monkeypatch.setattr(shard.shutdown, "wait", lambda seconds: None)
    generated = []
    original_generate = shard.engine.generate
    monkeypatch.setattr(shard.engine, "generate", lambda items, *a, **k: generated.extend(items) or original_generate(items, *a, **k))
    storage = str(tmp_path / "out")
    assert run(manifest, storage, "flaky").is_completed()
    assert failures["left"] == 0
    assert len(generated) == ITEMS, "a failed write is retried on its own: no image is generated twice"
    check_complete_run(open_store(storage), "flaky", ITEMS)


@pytest.mark.slow
def test_a_nan_item_restarts_at_half_lr_then_fails_alone(manifest, tmp_path, monkeypatch):
    original, calls = shard.engine.generate, []

    def nan_for_fox_seed(items, *args, **kwargs):
        results = original(items, *args, **kwargs)
        calls.append([i.settings.lr for i in items])
        for result in results:
            if result.item.prompt_id == "fox" and result.item.index == 1:
                result.error, result.image = "loss became non-finite (nan) (injected)", None
        return results

    monkeypatch.setattr(shard.engine, "generate", nan_for_fox_seed)
    storage = str(tmp_path / "out")
    state = run(manifest, storage, "nan")
    assert state.is_failed()
    assert "1 of 5 items not done" in state.message and "--run-id nan" in state.message
    assert [0.05] in calls, "the failed item is restarted once at half the learning rate"
    index = RunIndex.model_validate_json(open_store(storage).get_bytes(layout.index_key("nan")))
    failed = [e for e in index.items if e.state == "failed"]
    assert len(failed) == 1 and "half the learning rate" in failed[0].error
    assert index.counts["done"] == ITEMS - 1


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
    assert "<a " not in page and page.count("<img") == page.count('<img src="data:image/jpeg;base64,') == 1, page  # the thumbnail only
    assert f"evil: {html.escape(INJECTION, quote=False)}</td>" in page  # the prompt as written, as text


def test_each_prompt_is_scored_and_ranked_by_its_own_scorer(tmp_path, prefect_api):
    from vqclip.engine.score import score
    from vqclip.media.png import decode_image
    from vqclip.models.loader import load_scorer
    from vqclip.run.state import scoring_prompt

    path = tmp_path / "scorers.yaml"
    path.write_text(
        "defaults: {preset: tiny, width: 64, height: 64, steps: 2, cutouts: 2, n: 2}\n"
        "prompts:\n"
        "  - {id: fox, text: a red fox, scorer: tiny-clip-a/random}\n"
        "  - {id: sea, text: a blue sea, scorer: tiny-clip-b/random}\n"
    )
    storage = str(tmp_path / "out")
    assert run(path, storage, "scorers").is_completed()
    store = open_store(storage)
    check_complete_run(store, "scorers", 4)
    expected = {"fox": "tiny-clip-a/random", "sea": "tiny-clip-b/random"}
    ranking = Ranking.model_validate_json(store.get_bytes(layout.ranking_key("scorers")))
    assert {p.prompt_id: p.scorer for p in ranking.prompts} == expected
    for entry in RunIndex.model_validate_json(store.get_bytes(layout.index_key("scorers"))).items:
        record = ItemRecord.model_validate_json(store.get_bytes(entry.sidecar_key))
        assert record.scorer == record.models.scorer == expected[record.prompt_id]
        image = decode_image(store.get_bytes(record.image_key))
        (value,) = score([image], [scoring_prompt(record)], load_scorer(record.scorer, device="cpu"))
        assert record.score == pytest.approx(value, abs=1e-3)
    gallery = store.get_bytes(layout.gallery_key("scorers")).decode()
    assert "Scored by tiny-clip-a/random" in gallery and "Scored by tiny-clip-b/random" in gallery


def test_the_sidecar_carries_the_parsed_prompt_as_the_png_does(tmp_path):
    from PIL import Image

    from vqclip.engine.generate import GenerationResult
    from vqclip.items import GenerationSettings, NoisePrompt, WorkItem
    from vqclip.models.presets import models_for_preset

    item = WorkItem(
        prompt_id="fox",
        prompt=r"a red fox:2:0.8 | blurry:-0.5 | ratio 1\:2",
        seed=1,
        settings=GenerationSettings(width=8, height=8, steps=1),
        models=models_for_preset("tiny"),
        noise_prompts=(NoisePrompt(seed=3, weight=0.5),),
    )
    result = GenerationResult(item=item, image=Image.new("RGB", (8, 8)), loss=0.0, similarity={}, first_similarity={}, seconds=0.1)
    store = open_store(str(tmp_path / "out"))
    record = RunStore(store, "parts").commit(item, result, "cpu")
    expected = [
        {"text": "a red fox", "weight": 2.0, "stop": 0.8},
        {"text": "blurry", "weight": -0.5, "stop": None},
        {"text": "ratio 1:2", "weight": 1.0, "stop": None},
    ]
    sidecar = json.loads(store.get_bytes(layout.sidecar_key("parts", item.item_id)))
    assert sidecar["parts"] == expected == read_png_metadata(store.get_bytes(record.image_key))["parts"]
    assert sidecar["noise_prompts"] == [{"seed": 3, "weight": 0.5}]


def test_frames_and_video_are_committed_before_the_sidecar_and_listed_in_it(tmp_path, tiny_models, monkeypatch):
    import io
    import logging

    import av

    from vqclip.config import Config
    from vqclip.items import GenerationSettings, WorkItem
    from vqclip.models.presets import models_for_preset

    settings = GenerationSettings(width=64, height=64, steps=6, cutouts=4, save_every=2, video={"fps": 4})
    item = WorkItem(prompt_id="fox", prompt="a red fox", seed=1, settings=settings, models=models_for_preset("tiny"))
    store = open_store(str(tmp_path / "out"))
    written = []
    put = type(store).put_bytes
    monkeypatch.setattr(type(store), "put_bytes", lambda self, key, *a, **k: written.append(key) or put(self, key, *a, **k))
    outcome = shard.run_shard([item], RunStore(store, "frames"), lambda _: tiny_models, Config(), logging.getLogger("test"))
    assert outcome.done == [item.item_id]
    record = ItemRecord.model_validate_json(store.get_bytes(layout.sidecar_key("frames", item.item_id)))
    frames = [layout.frame_key("frames", item.item_id, step) for step in (2, 4)]
    assert record.frame_keys == frames and frames[0].endswith(f"items/{item.item_id}/frames/00002.png")
    assert record.video_key == layout.video_key("frames", item.item_id)
    assert written == [record.image_key, *frames, record.video_key, layout.sidecar_key("frames", item.item_id)]
    with av.open(io.BytesIO(store.get_bytes(record.video_key))) as video:
        decoded = [frame.to_image() for frame in video.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].size == (64, 64)  # two frames and the final image
