"""The generation task: one shard of work items in, committed images and sidecars out."""

from __future__ import annotations

from functools import partial

from prefect import get_run_logger, task

from tasks.retry import retried
from vqclip import shutdown
from vqclip.config import get_config
from vqclip.items import WorkItem
from vqclip.models.loader import load_models
from vqclip.run.progress import ProgressRecorder
from vqclip.run.records import ShardOutcome
from vqclip.run.shard import run_shard
from vqclip.storage import open_store


@task(**retried("generate-shard"))
def generate_shard(items: list[WorkItem], storage: str, run_id: str, shard: int) -> ShardOutcome:
    """Generate the shard's items that are not done yet and commit each, with the engine's recovery rules.

    Models load once per worker process and stay for later shards. SIGTERM or SIGINT stops it at the
    next optimisation step with Interrupted, once every finished image is stored. Its steps and stored
    images go to shard number `shard`'s progress record (vqclip.run.progress) for the CLI and the batch flow.
    """
    store, log = open_store(storage), get_run_logger()
    with shutdown.stop_on_signals(), ProgressRecorder(store, run_id, shard, log) as progress:
        models = partial(load_models, include_scorer=False)
        return run_shard(items, run_id, store, models, get_config(), log, progress=progress)
