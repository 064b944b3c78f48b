"""The scoring task: score every done image of a run that has no score from this scorer yet."""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.retry import retried
from vqclip.images import decode_image
from vqclip.models.loader import load_scorer
from vqclip.records import ItemRecord
from vqclip.runs import done_records, scoring_prompt, write_record
from vqclip.score import score
from vqclip.storage import open_store


@task(**retried("score-images"))
def score_images(storage: str, run_id: str, scorer: str, batch_size: int = 32) -> dict[str, ItemRecord]:
    """Score unscored images with `scorer`, rewrite their sidecars, return every done record."""
    logger = get_run_logger()
    store = open_store(storage)
    records = done_records(store, run_id)
    todo = [r for r in records.values() if r.score is None or r.scorer != scorer]
    if todo:
        model = load_scorer(scorer)
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            images = [decode_image(store.get_bytes(r.image_key)) for r in batch]
            values = score(images, [scoring_prompt(r) for r in batch], model, batch_size)
            for record, value in zip(batch, values):
                updated = record.model_copy(update={"score": round(value, 4), "scorer": scorer})
                write_record(store, run_id, updated)
                records[record.item_id] = updated
        logger.info("scored %d images with %s", len(todo), scorer)
    return records
