"""Reporting tasks: index, ranking, contact sheets and gallery in the store; artifacts in the Prefect UI."""

from __future__ import annotations

import io

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.retry import retried
from vqclip import layout
from vqclip.images import decode_image
from vqclip.items import WorkItem
from vqclip.records import IndexEntry, ItemRecord, Ranking, RunIndex
from vqclip.report import contact_sheet, gallery_html, markdown_text
from vqclip.runs import build_index, build_ranking, put_json
from vqclip.storage import ObjectStore, open_store


@task(**retried("write-reports"))
def write_reports(
    storage: str,
    run_id: str,
    manifest: str,
    items: list[WorkItem],
    records: dict[str, ItemRecord],
    failures: dict[str, str],
) -> tuple[RunIndex, Ranking]:
    """Write ranking.json, a contact sheet per prompt, gallery.html and, last, index.json."""
    store = open_store(storage)
    planned = {item.item_id for item in items}
    records = {k: v for k, v in records.items() if k in planned}
    ranking = build_ranking(run_id, records)
    put_json(store, layout.ranking_key(run_id), ranking)
    for prompt in ranking.prompts:
        thumbs = [
            (decode_image(store.get_bytes(image.image_key)), f"#{image.rank} {image.score:.1f} seed {records[image.item_id].seed}")
            for image in prompt.images
        ]
        buffer = io.BytesIO()
        contact_sheet(thumbs, f"{prompt.prompt_id}: {prompt.prompt}").save(buffer, format="PNG")
        store.put_bytes(layout.sheet_key(run_id, prompt.prompt_id), buffer.getvalue(), content_type="image/png")
    synthetic = any(item.models.synthetic for item in items)
    page = gallery_html(run_id, ranking, records, layout.run_prefix(run_id), synthetic)
    store.put_bytes(layout.gallery_key(run_id), page.encode(), content_type="text/html; charset=utf-8")
    index = build_index(run_id, manifest, items, records, ranking, failures)
    put_json(store, layout.index_key(run_id), index)
    return index, ranking


def _key_for(run_id: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in run_id.lower())[:80]


def _row(store: ObjectStore, entry: IndexEntry, record: ItemRecord | None) -> dict:
    """One image's line in the run's table artifact."""
    return {
        "prompt_id": entry.prompt_id,
        "prompt": record.prompt if record else "",
        "seed": entry.seed,
        "score": entry.score,
        "scorer": record.scorer if record else "",
        "rank": entry.rank,
        "state": entry.state,
        "image": store.url(entry.image_key) if entry.image_key else "",
        "video": store.url(record.video_key) if record and record.video_key else "",
        "item_id": entry.item_id,
    }


@task(name="publish-artifacts", cache_policy=NO_CACHE, persist_result=False)
def publish_artifacts(storage: str, run_id: str, index: RunIndex, ranking: Ranking, records: dict[str, ItemRecord]) -> None:
    """A table of every image (prompt, seed, score, rank, location) and a markdown summary of the best."""
    store = open_store(storage)
    rows = [_row(store, entry, records.get(entry.item_id)) for entry in index.items]
    create_table_artifact(rows, key=f"ranking-{_key_for(run_id)}", description=f"Every image of run {run_id} with its CLIP score, the scorer and its rank")
    md = markdown_text  # every string below may come from a manifest or a user: rendered as text, never markup
    lines = [f"# Run {md(run_id)}", "", f"{index.counts['done']} of {len(index.items)} images done.", ""]
    lines += ["| prompt | scorer | best image | score |", "|---|---|---|---|"]
    for prompt in ranking.prompts:
        best = prompt.images[0]
        scorer = md(prompt.scorer or "")
        lines.append(f"| {md(prompt.prompt_id)}: {md(prompt.prompt)} | {scorer} | {md(store.url(best.image_key))} | {best.score:.2f} |")
    lines += ["", f"Gallery: {md(store.url(layout.gallery_key(run_id)))}"]
    create_markdown_artifact("\n".join(lines), key=f"summary-{_key_for(run_id)}", description=f"Best image per prompt, run {run_id}")
