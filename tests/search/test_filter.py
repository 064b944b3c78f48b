"""The zero-shot filter: labels match CLIP's own zero-shot classification, filtered images are published nowhere.

Runs are committed straight through the engine (random-pixel images, the tiny scoring CLIP on the
CPU), on a local folder and on a real SeaweedFS bucket; one batch flow run checks the flow and its
artifacts. Random weights give arbitrary labels, so each test picks the reject label and threshold
from probabilities it computes itself, with a wide margin, so that some images are filtered and
some kept.
"""

from __future__ import annotations

import io
import json
import logging
import time

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES
from PIL import Image
from typer.testing import CliRunner

from tests.helpers.manifests import case
from tests.helpers.scorers import SCORER_B, cpu_scorer
from vqclip.cli.main import app
from vqclip.config import Config
from vqclip.engine.generate import GenerationResult
from vqclip.errors import VqclipError
from vqclip.filter_spec import default_filter
from vqclip.items import GenerationSettings, WorkItem
from vqclip.manifest import load_manifest
from vqclip.media.png import decode_image
from vqclip.models.presets import models_for_preset
from vqclip.run import embeddings, layout
from vqclip.run.filtering import FilterReport
from vqclip.run.outputs import write_outputs
from vqclip.run.progress import Progress
from vqclip.run.records import ItemRecord, Ranking, RunIndex
from vqclip.run.scoring import score_run
from vqclip.run.state import RunStore, build_index, put_json
from vqclip.search.query import search
from vqclip.search.refilter import refilter_run
from vqclip.storage import open_store

LOG = logging.getLogger("tests.filter")
LABELS = ["a red fox", "the sea", "a blurry photo", "text"]
OTHER_LABELS = ["a painting", "a photograph", "noise"]


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> str:
    return request.getfixturevalue("s3_bucket") if request.param == "s3" else str(tmp_path / "store")


def finished_run(store, run_id: str, count: int = 6) -> list[WorkItem]:
    """A finished run of `count` random-pixel images in two prompts: committed, scored, ranked and indexed as the flow does."""
    rng = np.random.default_rng(3)
    settings = GenerationSettings(width=32, height=32, steps=2, cutouts=2)
    models = models_for_preset("tiny").model_copy(update={"scorer": SCORER_B})
    items = [
        WorkItem(prompt_id=prompt, index=n, prompt=f"a {prompt}", seed=n, settings=settings, models=models)
        for prompt in ("fox", "sea")
        for n in range(count // 2)
    ]
    for item in items:
        image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        RunStore(store, run_id).commit(item, GenerationResult(item=item, image=image, loss=0.5, similarity={}, first_similarity={}, seconds=0.1), "cpu")
    records = score_run(store, run_id, {item.item_id: SCORER_B for item in items}, cpu_scorer, LOG)
    ranking = write_outputs(store, run_id, records)
    put_json(store, layout.index_key(run_id), build_index(run_id, "m.yaml", items, records, ranking, {}))
    return items


@torch.no_grad()
def clip_probabilities(store, records: list[ItemRecord], labels: list[str]) -> np.ndarray:
    """CLIP zero-shot probabilities computed here from the PNGs: mean of normalised template embeddings, softmax of 100 x cosine."""
    scorer = cpu_scorer(SCORER_B)
    transform = open_clip.image_transform(scorer.image_size, is_train=False, mean=tuple(scorer.mean.tolist()), std=tuple(scorer.std.tolist()))
    pixels = torch.stack([transform(decode_image(store.get_bytes(r.image_key)).convert("RGB")) for r in records])
    images = F.normalize(scorer.model.encode_image(pixels).float(), dim=-1)
    classes = []
    for label in labels:
        texts = F.normalize(scorer.model.encode_text(scorer.tokenizer([t(label) for t in SIMPLE_IMAGENET_TEMPLATES])).float(), dim=-1)
        classes.append(F.normalize(texts.mean(0), dim=-1))
    return torch.softmax(100 * images @ torch.stack(classes).T, dim=-1).numpy()


def pick_filter(probs: np.ndarray, labels: list[str], avoid: set[frozenset[int]] = frozenset()) -> tuple[dict, set[int]]:
    """A filter (one reject label, a threshold in its widest gap) that filters some images and keeps others, and the rows it filters.

    The threshold sits at the geometric middle of the largest ratio between neighbouring reject
    probabilities, so float16 embeddings cannot move an image across it.
    """
    best = None
    for column, label in enumerate(labels):
        values = np.sort(probs[:, column])
        for k in range(len(values) - 1):
            threshold = float(np.sqrt(values[k] * values[k + 1]))
            top = probs.argmax(1)
            filtered = frozenset(int(i) for i in np.flatnonzero((probs[:, column] > threshold) | (top == column)))
            ratio = values[k + 1] / max(values[k], 1e-12)
            if 0 < len(filtered) < len(probs) and filtered not in avoid and (best is None or ratio > best[0]):
                best = (ratio, {"labels": labels, "reject": [label], "threshold": threshold}, set(filtered))
    assert best is not None and best[0] > 2, "no filter with a clear margin for these images"
    return best[1], best[2]


def published(store, run_id: str) -> dict:
    """Every image each published output shows: ranking, index ranks, gallery, sheet sizes, search (default and all)."""
    ranking = Ranking.model_validate_json(store.get_bytes(layout.ranking_key(run_id)))
    index = RunIndex.model_validate_json(store.get_bytes(layout.index_key(run_id)))
    gallery = store.get_bytes(layout.gallery_key(run_id)).decode()
    records = RunStore(store, run_id).done_records()
    hits = search(store, cpu_scorer, text="a fox", runs=[run_id], top=50).groups
    every = search(store, cpu_scorer, text="a fox", runs=[run_id], top=50, include_filtered=True).groups[0].hits
    return {
        "ranked": {image.item_id for prompt in ranking.prompts for image in prompt.images},
        "index_ranked": {e.item_id for e in index.items if e.rank is not None},
        "index_filtered": {e.item_id for e in index.items if e.filtered},
        "gallery": {item_id for item_id in records if item_id in gallery},
        "sheets": {
            key: Image.open(io.BytesIO(store.get_bytes(key))).width // 192 for key in store.list(layout.sheets_prefix(run_id))
        },
        "per_prompt": {p.prompt_id: len(p.images) for p in ranking.prompts},
        "search": {h.item_id for g in hits for h in g.hits},
        "search_all": {h.item_id: h.filtered for h in every},
    }


def check_published(store, run_id: str, kept: set[str], filtered: set[str]) -> None:
    """Filtered images appear in no output but the index's marks and a search that asks for them."""
    seen = published(store, run_id)
    assert seen["ranked"] == seen["index_ranked"] == seen["gallery"] == seen["search"] == kept
    assert seen["index_filtered"] == filtered
    assert seen["search_all"] == {**{i: False for i in kept}, **{i: True for i in filtered}}
    assert seen["sheets"] == {layout.sheet_key(run_id, p): min(4, n) for p, n in seen["per_prompt"].items()}


def test_filter_decisions_match_clip_zero_shot_and_filtered_images_are_published_nowhere(storage, monkeypatch):
    store = open_store(storage)
    finished_run(store, "run-1")
    records = sorted(RunStore(store, "run-1").done_records().values(), key=lambda r: r.item_id)
    ids = [r.item_id for r in records]
    pngs = {key: store.get_bytes(key) for key in store.list(layout.items_prefix("run-1")) if key.endswith(".png")}

    def no_encoding(*args, **kwargs):
        raise AssertionError("an image was encoded again")

    monkeypatch.setattr(embeddings, "embed_images", no_encoding)  # labels come from the embeddings scoring kept

    probs = clip_probabilities(store, records, LABELS)
    spec, rows = pick_filter(probs, LABELS)
    report, _ = refilter_run(store, "run-1", load_spec(spec), cpu_scorer, LOG, busy_within=75)
    labelled = {r.item_id: r.filter for r in RunStore(store, "run-1").done_records().values()}
    for row, item_id in enumerate(ids):
        label = labelled[item_id]
        assert label.label == LABELS[int(probs[row].argmax())]
        assert label.filtered == (row in rows)
        np.testing.assert_allclose([label.probabilities[name] for name in LABELS], probs[row], atol=0.02)
    filtered = {ids[row] for row in rows}
    check_published(store, "run-1", set(ids) - filtered, filtered)
    stored = FilterReport.model_validate_json(store.get_bytes(layout.filter_report_key("run-1")))
    assert {f.item_id for f in stored.filtered} == {f.item_id for f in report.filtered} == filtered
    markdown = store.get_bytes(layout.filter_markdown_key("run-1")).decode()
    assert all(item_id in markdown for item_id in filtered) and not any(item_id in markdown for item_id in set(ids) - filtered)

    # Filtering again with other labels, from the command line: new decisions, nothing generated or encoded.
    other = clip_probabilities(store, records, OTHER_LABELS)
    spec2, rows2 = pick_filter(other, OTHER_LABELS, avoid={frozenset(rows)})
    args = ["filter", "run-1", *[a for label in OTHER_LABELS for a in ("--labels", label)], "--reject", spec2["reject"][0],
            "--threshold", repr(spec2["threshold"]), "--json", "--storage", storage]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    filtered2 = {ids[row] for row in rows2}
    assert {f["item_id"] for f in json.loads(out.output)["filtered"]} == filtered2 != filtered
    check_published(store, "run-1", set(ids) - filtered2, filtered2)
    again = CliRunner().invoke(app, args)  # idempotent
    assert again.exit_code == 0 and json.loads(again.output)["filtered"] == json.loads(out.output)["filtered"]
    assert {k: store.get_bytes(k) for k in store.list(layout.items_prefix("run-1")) if k.endswith(".png")} == pngs

    cleared = CliRunner().invoke(app, ["filter", "run-1", "--clear", "--storage", storage])
    assert cleared.exit_code == 0, cleared.output
    check_published(store, "run-1", set(ids), set())
    assert not store.exists(layout.filter_report_key("run-1"))


def test_a_run_still_generating_is_not_filtered(tmp_path):
    store = open_store(str(tmp_path / "store"))
    finished_run(store, "run-1", count=2)
    before = {key: store.get_bytes(key) for key in store.list(layout.run_prefix("run-1"))}
    args = ["filter", "run-1", "--labels", "a fox", "--labels", "the sea", "--reject", "the sea", "--storage", str(tmp_path / "store")]
    # A resumed run's shard, somewhere, recorded its progress a moment ago and has steps to go.
    moving = Progress(steps_done=3, steps_total=8, images_done=0, images_total=2, updated=time.time() - 2)
    store.put_bytes(layout.progress_key("run-1", 1), moving.model_dump_json().encode())
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 1
    assert "run run-1 is still generating (shard 1 recorded progress 2 s ago); filter it once it has finished" in out.output
    assert {key: store.get_bytes(key) for key in store.list(layout.run_prefix("run-1")) if "progress/" not in key} == before

    # Once its record is older than the zombie window (its process is gone), or finished, the run is filtered.
    store.put_bytes(layout.progress_key("run-1", 1), moving.model_copy(update={"updated": time.time() - 80}).model_dump_json().encode())
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output


def load_spec(spec: dict):
    """`spec` validated as a manifest's filter section is."""
    manifest = load_manifest(json.dumps({"filter": spec, "prompts": ["x"]}).encode(), "m.json")
    return manifest.filter


def test_a_batch_run_with_a_filter_leaves_filtered_images_out_of_its_artifacts(tmp_path, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.batch import batch_generate

    manifest = tmp_path / "batch.json"
    body = {"defaults": {"preset": "tiny", "width": 32, "height": 32, "steps": 2, "cutouts": 2, "n": 3}, "prompts": ["a red fox", "the sea"]}
    manifest.write_text(json.dumps(body))
    storage = str(tmp_path / "store")
    assert batch_generate(manifest=str(manifest), storage=storage, run_id="batch-1", return_state=True).is_completed()
    store = open_store(storage)
    records = sorted(RunStore(store, "batch-1").done_records().values(), key=lambda r: r.item_id)
    spec, rows = pick_filter(clip_probabilities(store, records, LABELS), LABELS)
    filtered = {records[row].item_id for row in rows}

    # The same run again with the filter in its manifest: nothing left to generate or score, only to filter and publish.
    manifest.write_text(json.dumps({**body, "filter": spec}))
    state = batch_generate(manifest=str(manifest), storage=storage, run_id="batch-1", return_state=True)
    assert state.is_completed(), state.message
    assert {r.item_id for r in RunStore(store, "batch-1").done_records().values() if r.filtered} == filtered
    check_published(store, "batch-1", {r.item_id for r in records} - filtered, filtered)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    by_key = {a.key.split("-")[0]: a for a in artifacts if a.key}
    rows_data = by_key["ranking"].data
    table = json.loads(rows_data) if isinstance(rows_data, str) else rows_data
    assert {row["item_id"] for row in table} == {r.item_id for r in records} - filtered
    report = by_key["filter"].data
    assert all(item_id in report for item_id in filtered)
    assert "left out by the zero-shot filter" in by_key["summary"].data


BAD_FILTERS = [
    case("reject not a label", "filter: {labels: [cat, dog], reject: [dgo]}\nprompts: [x]\n",
         "m.yaml:1: filter: reject label(s) 'dgo' not among labels ['cat', 'dog']; add them to labels or fix the spelling"),
    case("one label", "filter: {labels: [cat], reject: [cat]}\nprompts: [x]\n", "filter.labels: List should have at least 2 items"),
    case("all rejected", "filter: {labels: [cat, dog], reject: [dog, cat]}\nprompts: [x]\n", "keep at least one label out of reject"),
    case("threshold", "filter:\n  labels: [cat, dog]\n  reject: [dog]\n  threshold: 1.5\nprompts: [x]\n", "m.yaml:4: filter.threshold: Input should be less than or equal to 1"),
    case("template", "filter: {labels: [cat, dog], reject: [dog], templates: ['a {0} photo']}\nprompts: [x]\n", "must hold '{}' exactly once"),
    case("unknown field", "filter: {labels: [cat, dog], reject: [dog], treshold: 0.3}\nprompts: [x]\n", "filter.treshold: unknown field; allowed fields: labels, reject, templates, threshold"),
    case("repeated", "filter: {labels: [cat, cat, dog], reject: [dog]}\nprompts: [x]\n", "'cat' given more than once"),
]


@pytest.mark.parametrize(("name", "content", "expected", "limits"), BAD_FILTERS)
def test_a_bad_filter_section_names_the_field_and_the_fix(name, content, expected, limits):
    with pytest.raises(VqclipError) as error:
        load_manifest(content.encode(), name, Config(**limits))
    assert expected in str(error.value)


def test_the_run_level_default_filter_comes_from_vqclip_filter(tmp_path):
    inline = Config(filter='{"labels": ["cat", "dog"], "reject": ["dog"], "threshold": 0.4}')
    assert load_manifest(b"prompts: [x]\n", "m.yaml", inline).filter.threshold == 0.4
    assert load_manifest(b"filter: false\nprompts: [x]\n", "m.yaml", inline).filter is None
    own = load_manifest(b"filter: {labels: [a, b], reject: [a]}\nprompts: [x]\n", "m.yaml", inline).filter
    assert own.reject == ["a"]
    path = tmp_path / "filter.yaml"
    path.write_text("filter:\n  labels: [photo, text]\n  reject: [text]\n")
    assert load_manifest(b"prompts: [x]\n", "m.yaml", Config(filter=str(path))).filter.labels == ["photo", "text"]
    with pytest.raises(VqclipError, match=r"VQCLIP_FILTER file .*filter.yaml: filter: reject label\(s\) 'txt' not among labels \['photo', 'text'\]"):
        path.write_text("labels: [photo, text]\nreject: [txt]\n")
        default_filter(str(path))
    with pytest.raises(VqclipError, match="VQCLIP_FILTER=/nowhere.yaml: cannot read it"):
        default_filter("/nowhere.yaml")
