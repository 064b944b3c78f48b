"""Search across runs: embeddings kept from scoring, the store-wide index, queries by text and by image.

Runs here are committed straight through the engine (random-pixel images, the tiny scoring CLIPs on
the CPU), on a local folder and on a real SeaweedFS bucket; one batch flow run checks the hook.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.helpers.scorers import SCORER_A, SCORER_B, cpu_scorer
from vqclip.cli.main import app
from vqclip.engine.generate import GenerationResult
from vqclip.engine.score import embed_images
from vqclip.items import GenerationSettings, WorkItem
from vqclip.media.png import decode_image
from vqclip.models.presets import models_for_preset
from vqclip.run import layout
from vqclip.run.embeddings import load_embeddings
from vqclip.run.scoring import score_run
from vqclip.run.state import RunStore
from vqclip.search import index as embedding_index
from vqclip.search.index import EmbeddingIndex, add_run
from vqclip.search.query import search
from vqclip.storage import open_store

LOG = logging.getLogger("tests.search")


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> str:
    return request.getfixturevalue("s3_bucket") if request.param == "s3" else str(tmp_path / "store")


def make_run(store, run_id: str, scorer: str = SCORER_B, count: int = 4, seed: int = 0) -> dict:
    """A run of `count` random-pixel images in two prompts, scored (and embedded) by `scorer`."""
    rng = np.random.default_rng(seed)
    settings = GenerationSettings(width=32, height=32, steps=2, cutouts=2)
    models = models_for_preset("tiny").model_copy(update={"scorer": scorer})
    items = [
        WorkItem(prompt_id=prompt, index=n, prompt=f"a {prompt}", seed=seed * 100 + n, settings=settings, models=models)
        for prompt in ("fox", "sea")
        for n in range(count // 2)
    ]
    for item in items:
        image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        RunStore(store, run_id).commit(item, GenerationResult(item=item, image=image, loss=0.5, similarity={}, first_similarity={}, seconds=0.1), "cpu")
    return score_run(store, run_id, {item.item_id: scorer for item in items}, cpu_scorer, LOG)


def index_rows(groups) -> dict:
    """Every row of a loaded index, per scorer: (run, item, prompt id, prompt, image key, score, vector), in a fixed order."""
    return {
        scorer: sorted(
            (s.run_id, str(s.item_ids[row]), str(s.prompt_ids[row]), str(s.prompts[row]), str(s.image_keys[row]), float(s.scores[row]), tuple(s.vectors[row].tolist()))
            for s in group.segments
            for row in range(len(s.item_ids))
        )
        for scorer, group in groups.items()
    }


def test_an_image_query_finds_that_image_first_with_its_own_embedding(storage):
    store = open_store(storage)
    records = make_run(store, "run-1", count=6)
    stored = load_embeddings(store, "run-1", SCORER_B)  # kept by scoring itself
    assert sorted(stored.item_ids) == sorted(records)
    add_run(store, "run-1", cpu_scorer)
    target = sorted(records.values(), key=lambda r: r.item_id)[3]
    image = decode_image(store.get_bytes(target.image_key))

    own = embed_images([image], cpu_scorer(SCORER_B))[0]
    np.testing.assert_allclose(stored.vectors[stored.rows()[target.item_id]].astype(np.float32), own, atol=2e-3)

    result = search(store, cpu_scorer, image=image, top=3)
    [group] = result.groups
    assert (group.scorer, group.model, group.pretrained, group.searched) == (SCORER_B, "tiny-clip-b", "random", 6)
    best = group.hits[0]
    assert (best.run_id, best.item_id, best.prompt, best.score) == ("run-1", target.item_id, target.prompt, target.score)
    assert best.similarity == pytest.approx(1.0, abs=2e-3)
    assert best.image_url == store.url(target.image_key)
    assert [h.similarity for h in group.hits] == sorted((h.similarity for h in group.hits), reverse=True)


def test_the_index_after_an_incremental_update_equals_one_built_from_scratch(storage, monkeypatch):
    monkeypatch.setattr(embedding_index, "COMPACT_AT", 2)  # two runs are stacked into one block, as thousands are
    store = open_store(storage)
    make_run(store, "run-1", seed=1)
    add_run(store, "run-1", cpu_scorer)
    live = EmbeddingIndex(store)
    assert live.refresh()[SCORER_B].size() == 4
    make_run(store, "run-2", seed=2)
    add_run(store, "run-2", cpu_scorer)
    incremental = live.refresh()

    for key in store.list(layout.INDEX):
        store.delete(key)
    for run_id in ("run-2", "run-1"):
        add_run(store, run_id, cpu_scorer)
    scratch = EmbeddingIndex(store).refresh()
    assert index_rows(incremental) == index_rows(scratch)
    assert [len(block.segments) for block in scratch[SCORER_B].blocks] == [2]

    records = {**RunStore(store, "run-1").done_records(), **RunStore(store, "run-2").done_records()}
    target = max(records.values(), key=lambda r: (r.image_key.startswith("runs/run-2/"), r.item_id))
    image = decode_image(store.get_bytes(target.image_key))
    for index in (live, EmbeddingIndex(store)):
        best = search(store, cpu_scorer, image=image, top=8, index=index).groups[0].hits
        assert (best[0].run_id, best[0].item_id) == ("run-2", target.item_id) and len(best) == 8
    rows = index_rows(scratch)[SCORER_B]
    assert sorted(row[1] for row in rows) == sorted(records)
    for run_id, item_id, prompt_id, prompt, image_key, score, _ in rows:
        record = records[item_id]
        assert (record.prompt_id, record.prompt, record.image_key) == (prompt_id, prompt, image_key)
        assert score == pytest.approx(record.score)


def test_adding_a_run_again_replaces_its_rows(storage):
    store = open_store(storage)
    make_run(store, "run-1")
    index = EmbeddingIndex(store)
    add_run(store, "run-1", cpu_scorer)
    first = index_rows(index.refresh())
    add_run(store, "run-1", cpu_scorer)
    assert index_rows(index.refresh()) == first
    assert len(first[SCORER_B]) == 4
    assert len(store.list(layout.index_run_prefix(SCORER_B, "run-1"))) == 1


def test_runs_scored_by_different_models_are_searched_apart_grouped_by_model(storage):
    store = open_store(storage)
    make_run(store, "run-a", scorer=SCORER_A, seed=1)
    make_run(store, "run-b", scorer=SCORER_B, seed=2)
    # Named runs not indexed yet are added by the search itself.
    runner = CliRunner()
    out = runner.invoke(app, ["search", "a red fox", "--runs", "run-a", "--runs", "run-b", "--top", "3", "--json", "--storage", storage])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert [g["scorer"] for g in result["groups"]] == [SCORER_A, SCORER_B]
    assert {h["run_id"] for h in result["groups"][0]["hits"]} == {"run-a"}
    assert {h["run_id"] for h in result["groups"][1]["hits"]} == {"run-b"}
    assert all(len(g["hits"]) == 3 and g["searched"] == 4 for g in result["groups"])
    assert "searched separately" in result["note"]

    only_b = search(store, cpu_scorer, text="a red fox", runs=["run-b"], top=10)
    assert [g.scorer for g in only_b.groups] == [SCORER_B]


def test_a_run_scored_before_embeddings_were_kept_is_embedded_on_demand(tmp_path, monkeypatch):
    store = open_store(str(tmp_path / "store"))
    make_run(store, "old", count=6)
    kept = load_embeddings(store, "old", SCORER_B)
    store.delete(layout.embeddings_key("old", SCORER_B))

    from vqclip.run import embeddings

    encoded: list[int] = []
    real = embeddings.embed_images

    def stops_after_one_batch(images, model, batch_size):
        if encoded:
            raise RuntimeError("worker lost")
        encoded.append(len(images))
        return real(images, model, batch_size)

    monkeypatch.setattr(embeddings, "embed_images", stops_after_one_batch)
    with pytest.raises(RuntimeError):
        add_run(store, "old", cpu_scorer, batch_size=4)
    monkeypatch.setattr(embeddings, "embed_images", lambda images, model, batch_size: encoded.append(len(images)) or real(images, model, batch_size))
    add_run(store, "old", cpu_scorer, batch_size=4)
    assert encoded == [4, 2]  # the second try encoded only what the first left

    again = load_embeddings(store, "old", SCORER_B)
    rows = again.rows()
    for item_id, row in kept.rows().items():
        np.testing.assert_allclose(again.vectors[rows[item_id]].astype(np.float32), kept.vectors[row].astype(np.float32), atol=2e-3)
    assert EmbeddingIndex(store).refresh()[SCORER_B].size() == 6


def test_bad_queries_say_what_to_do(tmp_path):
    storage = str(tmp_path / "store")
    runner = CliRunner()
    missing = runner.invoke(app, ["search", "fox", "--runs", "nope", "--storage", storage])
    assert missing.exit_code == 1 and "no run 'nope'" in missing.output
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    bad = runner.invoke(app, ["search", "--image", str(not_image), "--storage", storage])
    assert bad.exit_code == 1 and "not an image file" in bad.output
    both = runner.invoke(app, ["search", "--storage", storage])
    assert both.exit_code == 1 and "exactly one query" in both.output


def test_a_finished_batch_run_is_searchable_and_the_search_flow_publishes_a_table(tmp_path, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.batch import batch_generate
    from flows.search import search_images

    manifest = tmp_path / "batch.yaml"
    manifest.write_text("defaults: {preset: tiny, width: 32, height: 32, steps: 2, cutouts: 2, n: 2}\nprompts: [a red fox]\n")
    storage = str(tmp_path / "store")
    assert batch_generate(manifest=str(manifest), storage=storage, run_id="batch-1", return_state=True).is_completed()
    store = open_store(storage)
    records = RunStore(store, "batch-1").done_records()
    assert sorted(row[1] for row in index_rows(EmbeddingIndex(store).refresh())[SCORER_B]) == sorted(records)

    target = next(iter(records.values()))
    state = search_images(image_key=target.image_key, storage=storage, top=2, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["groups"][0]["hits"][0]["item_id"] == target.item_id
    with get_client(sync_client=True) as client:
        [table] = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert len(rows) == 2 and rows[0]["rank"] == 1 and rows[0]["scorer"].replace("\\", "") == SCORER_B
    assert rows[0]["thumbnail"].startswith("![") and "data:image/jpeg;base64," in rows[0]["thumbnail"]


def test_the_search_benchmark_runs_at_a_small_size(tmp_path):
    from benchmarks.search import measure

    figures = measure(open_store(str(tmp_path / "store")), images=200, runs=4, dim=16, queries=3)
    assert figures["images"] == 250 and figures["runs"] == 5 and figures["query_all_ms_median"] > 0
