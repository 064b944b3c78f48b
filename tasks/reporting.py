"""Reporting tasks: index, ranking, contact sheets and gallery in the store; artifacts in the Prefect UI."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.retry import retried
from vqclip.browse import browse_link
from vqclip.config import get_config
from vqclip.items import WorkItem
from vqclip.media.png import decode_image
from vqclip.run import layout
from vqclip.run.outputs import write_outputs
from vqclip.run.records import IndexEntry, ItemRecord, Ranking, RunIndex
from vqclip.run.report import SCORE_MEANING, markdown_text, thumbnail_data_uri
from vqclip.run.state import build_index, put_json
from vqclip.storage import ObjectStore, open_store

ROW_THUMB = 64
BEST_THUMB = 128
THUMBNAIL_BUDGET = 3_000_000
"""Bytes of inline thumbnails one artifact may carry (1.4 to 3.7 KB a row: 800 to 2,000 rows); later rows get none."""


@task(**retried("write-reports"))
def write_reports(
    storage: str,
    run_id: str,
    manifest: str,
    items: list[WorkItem],
    records: dict[str, ItemRecord],
    failures: dict[str, str],
) -> tuple[RunIndex, Ranking]:
    """Write ranking.json, a contact sheet per prompt, gallery.html and, last, index.json; filtered images are left out."""
    store = open_store(storage)
    planned = {item.item_id for item in items}
    records = {k: v for k, v in records.items() if k in planned}
    ranking = write_outputs(store, run_id, records)
    index = build_index(run_id, manifest, items, records, ranking, failures)
    put_json(store, layout.index_key(run_id), index)
    return index, ranking


def artifact_key(run_id: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in run_id.lower())[:80]


class _Thumbnails:
    """Inline thumbnails of stored images, until an artifact's budget of bytes is spent."""

    def __init__(self, store: ObjectStore, side: int) -> None:
        self.store, self.side, self.left, self.skipped = store, side, THUMBNAIL_BUDGET, 0

    def markdown(self, key: str | None, alt: str) -> str:
        """`![alt](data:...)` for the image at `key`, or "" with none or with the budget spent."""
        if not key:
            return ""
        if self.left <= 0:
            self.skipped += 1
            return ""
        uri = thumbnail_data_uri(decode_image(self.store.get_bytes(key)), self.side)
        self.left -= len(uri)
        return f"![{markdown_text(alt)}]({uri})"


def _link(store: ObjectStore, key: str | None, text: str) -> str:
    """A link to `key` in `vqclip serve` when VQCLIP_BROWSE_URL names it, else the key's location as plain text."""
    if not key:
        return ""
    browse = get_config().browse_url
    return f"[{text}]({browse_link(browse, key)})" if browse else markdown_text(store.url(key))


def _row(store: ObjectStore, thumbnails: _Thumbnails, entry: IndexEntry, record: ItemRecord | None) -> dict:
    """One image's line in the run's table artifact; every string is markdown, user text escaped."""
    return {
        "thumbnail": thumbnails.markdown(entry.image_key if entry.state == "done" else None, f"{entry.prompt_id} #{entry.rank}"),
        "prompt_id": entry.prompt_id,
        "rank": entry.rank,
        "score": entry.score,
        "seed": entry.seed,
        "prompt": markdown_text(record.prompt) if record else "",
        "scorer": markdown_text(record.scorer or "") if record else "",
        "state": entry.state,
        "image": _link(store, entry.image_key, "image"),
        "sidecar": _link(store, entry.sidecar_key, "sidecar"),
        "video": _link(store, record.video_key if record else None, "video"),
        "item_id": entry.item_id,
    }


@task(name="publish-artifacts", cache_policy=NO_CACHE, persist_result=False)
def publish_artifacts(storage: str, run_id: str, index: RunIndex, ranking: Ranking, records: dict[str, ItemRecord]) -> None:
    """A table of every image (thumbnail, prompt, seed, score, rank, files) and a markdown summary of the best; filtered images left out.

    Thumbnails are small JPEGs inline as `data:` URIs: the UI draws them with no server and no expiring link.
    """
    store = open_store(storage)
    row_thumbs = _Thumbnails(store, ROW_THUMB)
    rows = [_row(store, row_thumbs, entry, records.get(entry.item_id)) for entry in index.items if not entry.filtered]
    more = f"; thumbnails of the first {len(rows) - row_thumbs.skipped} rows only" if row_thumbs.skipped else ""
    create_table_artifact(rows, key=f"ranking-{artifact_key(run_id)}", description=f"Every image of run {run_id} with its CLIP score, the scorer and its rank{more}")
    summary = _summary(store, run_id, index, ranking, get_config().browse_url)
    create_markdown_artifact(summary, key=f"summary-{artifact_key(run_id)}", description=f"Best image per prompt, run {run_id}")


def _summary(store: ObjectStore, run_id: str, index: RunIndex, ranking: Ranking, browse: str | None) -> str:
    """The summary artifact: the best image of every prompt, its score, and where the whole run is."""
    md = markdown_text  # every string below may come from a manifest or a user: rendered as text, never markup
    thumbnails = _Thumbnails(store, BEST_THUMB)
    filtered = sum(entry.filtered for entry in index.items)
    hidden = f" {filtered} left out by the zero-shot filter (its report: {md(store.url(layout.filter_markdown_key(run_id)))})." if filtered else ""
    lines = [f"# Run {md(run_id)}", "", f"{index.counts['done']} of {len(index.items)} images done.{hidden} {md(SCORE_MEANING)}", ""]
    header = ["best image", "score", *(["files"] if browse else []), "prompt", "scorer"]
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for prompt in ranking.prompts:
        best = prompt.images[0]
        cells = [thumbnails.markdown(best.image_key, f"{prompt.prompt_id} best"), f"{best.score:.2f}"]
        if browse:
            cells.append(f"{_link(store, best.image_key, 'image')} {_link(store, layout.sheet_key(run_id, prompt.prompt_id), 'contact sheet')}")
        cells += [f"{md(prompt.prompt_id)}: {md(prompt.prompt)}", md(prompt.scorer or "")]
        lines.append("| " + " | ".join(cells) + " |")
    if browse:
        lines += ["", f"[Gallery of the run]({browse_link(browse, layout.run_prefix(run_id))}): every image, sidecar and contact sheet."]
    else:
        lines += [
            "",
            f"Gallery: {md(store.url(layout.gallery_key(run_id)))}. `vqclip serve --storage STORE` shows it and every "
            "image in a browser; with VQCLIP_BROWSE_URL set to its address, this summary links there.",
        ]
    return "\n".join(lines)
