"""The zero-shot filter over a run: label every scored image from its kept embedding, mark the rejected ones, report.

Labelling reads the embeddings scoring kept (vqclip.run.embeddings; older runs get theirs on demand)
and encodes only the label texts, so filtering, and filtering a finished run again with other
labels, never regenerates or re-encodes an image. The order of writes makes it crash-safe and
idempotent: each changed sidecar is rewritten (one atomic object each), then the report, then
the outputs derived from the sidecars (ranking, sheets, gallery, index.json and the search
index's segment, itself a new version that replaces the old); running it again finishes the job.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from pydantic import BaseModel, Field

from vqclip.engine.zero_shot import decide, label_embeddings, probabilities
from vqclip.filter_spec import FilterSpec
from vqclip.models.clip import ClipModel
from vqclip.run import layout
from vqclip.run.embeddings import embed_missing
from vqclip.run.records import ItemRecord, Ranking, RunIndex, utc_now
from vqclip.run.report import markdown_text
from vqclip.run.state import RunStore, put_json
from vqclip.storage import ObjectStore


class FilteredImage(BaseModel):
    """An image the filter left out, with why."""

    item_id: str
    prompt_id: str
    prompt: str
    label: str
    probability: float
    reject_probability: float
    image_key: str


class FilterReport(BaseModel):
    """`runs/<run-id>/filter.json`: the filter that labelled the run and the images it left out."""

    run_id: str
    filter: FilterSpec
    labels_version: str
    labelled: int
    label_counts: dict[str, int]
    filtered: list[FilteredImage]
    created_at: str = Field(default_factory=utc_now)

    def markdown(self) -> str:
        """The report for people (filter.md and the flow's artifact); user text escaped."""
        md = markdown_text
        spec = self.filter
        threshold = f", or whose reject labels sum over {spec.threshold:g}" if spec.threshold is not None else ""
        lines = [
            f"# Zero-shot filter of run {md(self.run_id)}",
            "",
            f"Labels: {md(', '.join(spec.labels))}. Left out: images whose top label is {md(' or '.join(spec.reject))}{threshold}.",
            f"{len(self.filtered)} of {self.labelled} labelled images filtered out (still stored; not ranked, "
            f"not in the sheets, gallery or artifacts). Labels: "
            + ", ".join(f"{md(label)} {count}" for label, count in sorted(self.label_counts.items())),
            "",
        ]
        if self.filtered:
            lines += ["| image | prompt | label | probability | reject probability |", "|---|---|---|---|---|"]
            lines += [
                f"| {md(f.item_id)} | {md(f.prompt_id)}: {md(f.prompt)} | {md(f.label)} | {f.probability:.3f} | {f.reject_probability:.3f} |"
                for f in self.filtered
            ]
        return "\n".join(lines)


def label_run(
    store: ObjectStore,
    run_id: str,
    spec: FilterSpec | None,
    records: dict[str, ItemRecord],
    load_scorer: Callable[[str], ClipModel],
    log: logging.Logger | logging.LoggerAdapter,
) -> tuple[dict[str, ItemRecord], FilterReport | None]:
    """Label each scored image of `records` by `spec` (None: clear every label) and write the report; return the records as now stored."""
    run, updated = RunStore(store, run_id), dict(records)
    by_scorer: dict[str, list[ItemRecord]] = defaultdict(list)
    for record in records.values():
        if spec is not None and record.scorer is not None and record.score is not None:
            by_scorer[record.scorer].append(record)
        elif record.filter is not None:  # no filter now, or an image no scorer can label: no mark from an older filter
            updated[record.item_id] = run.write_record(record.model_copy(update={"filter": None}))
    if spec is None:
        store.delete(layout.filter_report_key(run_id))
        store.delete(layout.filter_markdown_key(run_id))
        return updated, None
    scored = {r.item_id: r for group in by_scorer.values() for r in group}
    embeddings = embed_missing(store, run_id, scored, load_scorer)
    for scorer, group in sorted(by_scorer.items()):
        kept = embeddings[scorer]
        rows = kept.rows()
        probs = probabilities(kept.vectors[[rows[r.item_id] for r in group]], label_embeddings(spec, load_scorer(scorer)))
        for record, row in zip(group, probs):
            label = decide(spec, row)
            if record.filter != label:
                updated[record.item_id] = run.write_record(record.model_copy(update={"filter": label}))
    labelled = [r for r in updated.values() if r.filter is not None and r.filter.labels_version == spec.version]
    counts: dict[str, int] = defaultdict(int)
    for record in labelled:
        counts[record.filter.label] += 1
    report = FilterReport(
        run_id=run_id,
        filter=spec,
        labels_version=spec.version,
        labelled=len(labelled),
        label_counts=dict(counts),
        filtered=[
            FilteredImage(
                item_id=r.item_id,
                prompt_id=r.prompt_id,
                prompt=r.prompt,
                label=r.filter.label,
                probability=r.filter.probability,
                reject_probability=r.filter.reject_probability,
                image_key=r.image_key,
            )
            for r in sorted(labelled, key=lambda r: (r.prompt_id, r.item_id))
            if r.filter.filtered
        ],
    )
    put_json(store, layout.filter_report_key(run_id), report)
    store.put_bytes(layout.filter_markdown_key(run_id), report.markdown().encode(), content_type="text/markdown; charset=utf-8")
    log.info("run %s: %d of %d images filtered out by zero-shot labels", run_id, len(report.filtered), len(labelled))
    return updated, report


def relabelled_index(index: RunIndex, records: dict[str, ItemRecord], ranking: Ranking) -> RunIndex:
    """`index` with each done item's score, rank and filter mark taken from `records` and `ranking`."""
    ranks = {image.item_id: image.rank for prompt in ranking.prompts for image in prompt.images}
    entries = []
    for entry in index.items:
        record = records.get(entry.item_id)
        update = {"rank": ranks.get(entry.item_id), "filtered": record.filtered if record else False}
        if record is not None:
            update["score"] = record.score
        entries.append(entry.model_copy(update=update))
    return index.model_copy(update={"items": entries})
