"""Scoring a run: each done image not yet scored by its scorer gets its score and embedding, committed together."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from vqclip.engine.score import score_and_embed
from vqclip.media.png import decode_image
from vqclip.models.clip import ClipModel
from vqclip.run.embeddings import load_embeddings, save_embeddings
from vqclip.run.records import ItemRecord
from vqclip.run.state import done_records, scoring_prompt, write_record
from vqclip.storage import ObjectStore


def score_run(
    store: ObjectStore,
    run_id: str,
    scorers: dict[str, str],
    load_scorer: Callable[[str], ClipModel],
    log: logging.Logger | logging.LoggerAdapter,
    batch_size: int = 32,
) -> dict[str, ItemRecord]:
    """Score and embed each image in `scorers` (item id to scorer) not yet scored by its scorer; return every done record.

    Per batch, the embeddings file is written before the sidecars that carry the scores, so a
    scored sidecar always has its embedding stored and a stopped run resumes where it was.
    """
    records = done_records(store, run_id)
    todo: dict[str, list[ItemRecord]] = defaultdict(list)
    for record in records.values():
        scorer = scorers.get(record.item_id)
        if scorer is not None and (record.score is None or record.scorer != scorer):
            todo[scorer].append(record)
    for scorer, group in todo.items():
        model = load_scorer(scorer)
        embeddings = load_embeddings(store, run_id, scorer)
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            images = [decode_image(store.get_bytes(r.image_key)) for r in batch]
            values, vectors = score_and_embed(images, [scoring_prompt(r) for r in batch], model, batch_size)
            embeddings = embeddings.with_rows([r.item_id for r in batch], vectors)
            save_embeddings(store, run_id, embeddings)
            for record, value in zip(batch, values):
                # The item id leaves the scorer out, so a resumed run may score with a scorer the sidecar's models do not name yet.
                models = record.models.model_copy(update={"scorer": scorer})
                updated = record.model_copy(update={"score": round(value, 4), "scorer": scorer, "models": models})
                write_record(store, run_id, updated)
                records[record.item_id] = updated
        log.info("scored and embedded %d images with %s", len(group), scorer)
    return records
