"""The scoring task: score every done image of a run that has no score from its own prompt's scorer yet."""

from __future__ import annotations

from collections import defaultdict

from prefect import get_run_logger, task

from tasks.retry import retried
from vqclip.images import decode_image
from vqclip.models.loader import load_scorer
from vqclip.records import ItemRecord
from vqclip.runs import done_records, scoring_prompt, write_record
from vqclip.score import score
from vqclip.storage import open_store


@task(**retried("score-images"))
def score_images(storage: str, run_id: str, scorers: dict[str, str], batch_size: int = 32) -> dict[str, ItemRecord]:
    """Score each image in `scorers` (item id to scorer) not yet scored by its scorer, rewrite its sidecar; return every done record."""
    logger = get_run_logger()
    store = open_store(storage)
    records = done_records(store, run_id)
    todo: dict[str, list[ItemRecord]] = defaultdict(list)
    for record in records.values():
        scorer = scorers.get(record.item_id)
        if scorer is not None and (record.score is None or record.scorer != scorer):
            todo[scorer].append(record)
    for scorer, group in todo.items():
        model = load_scorer(scorer)
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            images = [decode_image(store.get_bytes(r.image_key)) for r in batch]
            values = score(images, [scoring_prompt(r) for r in batch], model, batch_size)
            for record, value in zip(batch, values):
                # The item id leaves the scorer out, so a resumed run may score with a scorer the sidecar's models do not name yet.
                models = record.models.model_copy(update={"scorer": scorer})
                updated = record.model_copy(update={"score": round(value, 4), "scorer": scorer, "models": models})
                write_record(store, run_id, updated)
                records[record.item_id] = updated
        logger.info("scored %d images with %s", len(group), scorer)
    return records
