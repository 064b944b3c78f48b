"""The generation task: one shard of work items in, committed images and sidecars out."""

from __future__ import annotations

import time

import torch
from prefect import get_run_logger, task

from tasks.retry import PERMANENT, retried
from vqclip import generate as engine
from vqclip import shutdown
from vqclip.batching import batch_size, batches
from vqclip.generate import GenerationResult
from vqclip.items import WorkItem
from vqclip.models.loader import load_models
from vqclip.records import ShardOutcome
from vqclip.runs import commit_result, pending_items, read_inputs
from vqclip.settings import Settings, get_settings
from vqclip.storage import ObjectStore, open_store
from vqclip.uploader import BackgroundUploader


COMMIT_RETRY_DELAYS = (1, 2, 4, 8, 16)


def commit_image(
    store: ObjectStore, run_id: str, item: WorkItem, result: GenerationResult, device: str, attempt: int, logger
) -> None:
    """Store one finished image and its sidecar, retrying transient faults so a storage outage costs no GPU work.

    A function on the upload threads, not a Prefect task: task runs per image were two thirds of a
    run's task runs, and the API server's work for them took CPU time from generation.
    """
    for delay in (*COMMIT_RETRY_DELAYS, None):
        try:
            return commit_result(store, run_id, item, result, device, attempt)
        except PERMANENT:
            raise
        except Exception as exc:
            if delay is None or shutdown.requested():
                raise
            logger.warning("storing item %s failed (%s); retrying in %g s", item.item_id, exc, delay)
            # A stopping process must exit within seconds: the wait ends early and a resumed run redoes the item.
            shutdown.wait(delay)


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_items(
    items: list[WorkItem], models, store, run_id: str, logger, uploads: BackgroundUploader, runtime: Settings
) -> dict[str, str]:
    """Generate `items` as one batch and queue each finished image's commit; return failed items' errors.

    On out-of-memory, halves the batch; a single item that still does not fit runs again with the
    decoder's activations recomputed (checkpointing: about half the memory at 512 px). Restarts an
    item whose loss became non-finite once at half lr.
    """
    try:
        results = engine.generate(items, models, runtime, images=read_inputs(store, run_id, items))
    except Exception as exc:
        if not _is_out_of_memory(exc):
            raise
        if models.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(items) > 1:
            half = len(items) // 2
            logger.warning("out of memory with %d items; retrying as %d + %d", len(items), half, len(items) - half)
            first = run_items(items[:half], models, store, run_id, logger, uploads, runtime)
            return first | run_items(items[half:], models, store, run_id, logger, uploads, runtime)
        side = max(items[0].settings.width, items[0].settings.height)
        if 0 < runtime.checkpoint_side <= side:
            raise
        logger.warning("out of memory with one %d px item; retrying with decoder checkpointing", side)
        checkpointed = runtime.model_copy(update={"checkpoint_side": side})
        return run_items(items, models, store, run_id, logger, uploads, checkpointed)
    failed = {}
    for item, result in zip(items, results):
        attempt = 1
        if not result.ok:
            slower = item.settings.model_copy(update={"lr": item.settings.lr / 2})
            logger.warning("item %s: %s; restarting it from its seed at lr %g", item.item_id, result.error, slower.lr)
            restarted = item.model_copy(update={"settings": slower})
            (result,) = engine.generate([restarted], models, runtime, images=read_inputs(store, run_id, [item]))
            attempt = 2
        if result.ok:
            uploads.submit(commit_image, store, run_id, item, result, str(models.device), attempt, logger)
        else:
            failed[item.item_id] = f"{result.error} (after a restart at half the learning rate)"
    return failed


@task(**retried("generate-shard"))
def generate_shard(items: list[WorkItem], storage: str, run_id: str) -> ShardOutcome:
    """Generate the shard's items that are not done yet and commit each (PNG first, sidecar last).

    Items go through the engine in batches that fit the device; a batch's images are uploaded in the
    background while the next batch computes. SIGTERM or SIGINT stops it at the next optimisation
    step with Interrupted, once every finished image is stored.
    """
    with shutdown.stop_on_signals():
        return _generate_pending(items, storage, run_id)


def _generate_pending(items: list[WorkItem], storage: str, run_id: str) -> ShardOutcome:
    logger = get_run_logger()
    shutdown.check()
    store = open_store(storage)
    todo = pending_items(store, run_id, items)
    if not todo:
        logger.info("all %d items already done", len(items))
        return ShardOutcome(done=[i.item_id for i in items], failed={})
    runtime = get_settings()
    started = time.perf_counter()
    models = load_models(todo[0].models, include_scorer=False)
    shutdown.check()
    logger.info(
        "models ready in %.1f s (kept for later shards in this process); generating %d of %d items on %s",
        time.perf_counter() - started,
        len(todo),
        len(items),
        models.device,
    )
    size = batch_size(models, todo, runtime)
    if size < len(todo):
        logger.info("%d items in batches of %d (what fits in the device's free memory)", len(todo), size)
    failed: dict[str, str] = {}
    with BackgroundUploader(runtime.upload_queue) as uploads:
        for batch in batches(todo, size):
            failed |= run_items(batch, models, store, run_id, logger, uploads, runtime)
    return ShardOutcome(done=[i.item_id for i in items if i.item_id not in failed], failed=failed)
