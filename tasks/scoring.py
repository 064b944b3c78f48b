"""The scoring tasks: score (and embed) every done image not yet scored by its own prompt's scorer; index the run for search."""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.retry import retried
from vqclip.models.loader import load_scorer
from vqclip.run.records import ItemRecord
from vqclip.run.scoring import score_run
from vqclip.search.index import add_run
from vqclip.storage import open_store


@task(**retried("score-images"))
def score_images(storage: str, run_id: str, scorers: dict[str, str], batch_size: int = 32) -> dict[str, ItemRecord]:
    """Score and embed each image in `scorers` (item id to scorer) not yet scored by its scorer; return every done record."""
    return score_run(open_store(storage), run_id, scorers, load_scorer, get_run_logger(), batch_size)


@task(**retried("index-embeddings"))
def index_embeddings(storage: str, run_id: str) -> int:
    """Add (or replace) the run's rows in the store-wide embedding index; return how many images it holds there."""
    indexed = sum(len(s.item_ids) for s in add_run(open_store(storage), run_id, load_scorer))
    get_run_logger().info("indexed %d images of run %s for search", indexed, run_id)
    return indexed
