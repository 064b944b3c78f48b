"""One shard start to finish: its items not yet stored are generated and committed, with every recovery rule.

Recovery: a batch that runs out of memory is halved; a single item that still does not fit runs
again with the decoder's activations recomputed (checkpointing: about half the memory at 512 px);
an item whose loss became non-finite restarts once from its seed at half the learning rate, then
fails alone with the reason. Finished images are stored on background threads while the next batch
computes, each commit tried again on transient faults (vqclip.retry), so a storage outage costs no
GPU work; the shard is left, however it ends, only once the queued commits are done. A stop request
(vqclip.shutdown) ends it at the next optimisation step with Interrupted. Zoom items (vqclip.run.zoom) run
one at a time after the others, each frame stored before the next starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from vqclip import shutdown
from vqclip.config import Config
from vqclip.engine import generate as engine
from vqclip.engine.batching import batches, engine_batch_size
from vqclip.engine.generate import GenerationResult, ProgressCallback
from vqclip.items import WorkItem
from vqclip.models.loader import Models
from vqclip.models.spec import ModelSpec
from vqclip.retry import retry_transient
from vqclip.run import zoom
from vqclip.run.progress import Listener, ShardTracker
from vqclip.run.records import ShardOutcome
from vqclip.run.state import RunStore
from vqclip.run.uploads import BackgroundUploader

Log = logging.Logger | logging.LoggerAdapter


def run_shard(
    items: list[WorkItem],
    run: RunStore,
    models: Callable[[ModelSpec], Models],
    config: Config,
    log: Log,
    progress: Listener | None = None,
) -> ShardOutcome:
    """Generate the items of `items` not yet stored in `run` and commit each (PNG first, sidecar last).

    `models` gives the loaded models for the shard's spec; it is called only when an item is pending,
    so a finished shard loads nothing. `progress` hears the shard's steps and stored images as they change.
    """
    shutdown.check()
    todo = run.pending(items)
    tracker = ShardTracker(items, progress) if progress else None
    if tracker:
        pending = {item.item_id for item in todo}
        tracker.done_before([item for item in items if item.item_id not in pending])
    if not todo:
        log.info("all %d items already done", len(items))
        return ShardOutcome(done=[i.item_id for i in items], failed={})
    started = time.perf_counter()
    loaded = models(todo[0].models)
    shutdown.check()
    log.info(
        "models ready in %.1f s; generating %d of %d items on %s",
        time.perf_counter() - started,
        len(todo),
        len(items),
        loaded.device,
    )
    size = engine_batch_size(loaded, todo, config)
    if size < len(todo):
        log.info("%d items in batches of %d (what fits in the device's free memory)", len(todo), size)
    failed: dict[str, str] = {}
    with BackgroundUploader(config.upload_queue) as uploads:
        shard = _Shard(run, loaded, log, uploads, tracker)
        for batch in batches([item for item in todo if item.settings.zoom is None], size):
            failed |= shard.run_batch(batch, config)
        for item in todo:
            if item.settings.zoom is not None:  # one at a time: each frame starts from the one before
                failed |= shard.zoom_video(item, config)
    return ShardOutcome(done=[i.item_id for i in items if i.item_id not in failed], failed=failed)


class _Shard:
    """What every batch of one shard shares: where results go, the models, the log and the upload threads."""

    def __init__(
        self, run: RunStore, models: Models, log: Log, uploads: BackgroundUploader, tracker: ShardTracker | None
    ) -> None:
        self.run, self.models, self.log, self.uploads, self.tracker = run, models, log, uploads, tracker

    def run_batch(self, items: list[WorkItem], config: Config) -> dict[str, str]:
        """Generate `items` as one batch and queue each finished image's commit; return failed items' errors."""
        try:
            results = self._generate(items, config)
        except Exception as error:
            if not _is_out_of_memory(error):
                raise
            if self.models.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(items) > 1:
                half = len(items) // 2
                self.log.warning("out of memory with %d items; retrying as %d + %d", len(items), half, len(items) - half)
                return self.run_batch(items[:half], config) | self.run_batch(items[half:], config)
            side = max(items[0].settings.width, items[0].settings.height)
            if 0 < config.checkpoint_side <= side:
                raise
            self.log.warning("out of memory with one %d px item; retrying with decoder checkpointing", side)
            return self.run_batch(items, config.model_copy(update={"checkpoint_side": side}))
        failed = {}
        for item, result in zip(items, results):
            attempt = 1
            if not result.ok:
                slower = item.settings.model_copy(update={"lr": item.settings.lr / 2})
                self.log.warning("item %s: %s; restarting it from its seed at lr %g", item.item_id, result.error, slower.lr)
                (result,) = self._generate([item.model_copy(update={"settings": slower})], config, counted=[item])
                attempt = 2
            if result.ok:
                self.uploads.submit(self._commit, item, result, attempt)
            else:
                failed[item.item_id] = f"{result.error} (after a restart at half the learning rate)"
        return failed

    def zoom_video(self, item: WorkItem, config: Config) -> dict[str, str]:
        """Make one item's zoom video frame by frame and commit it (vqclip.run.zoom); return its error if it failed."""

        def frame(work: WorkItem, images, progress: ProgressCallback | None) -> GenerationResult:
            return engine.generate([work], self.models, config, images=images, progress=progress)[0]

        error = zoom.make_video(item, self.run, frame, str(self.models.device), self.log, self._heard([item]))
        if error:
            return {item.item_id: error}
        if self.tracker:
            self.tracker.stored(item)
        return {}

    def _generate(self, items: list[WorkItem], config: Config, counted: list[WorkItem] | None = None) -> list[GenerationResult]:
        """Generate `items` as one batch; their steps count as those of `counted` (the planned items; default `items`)."""
        images = self.run.read_inputs(items)
        return engine.generate(items, self.models, config, images=images, progress=self._heard(counted or items))

    def _heard(self, items: list[WorkItem]) -> ProgressCallback | None:
        """The engine's step callback for a batch of `items`, counting into the shard's tracker."""
        tracker = self.tracker
        return (lambda step, _total: tracker.steps(items, step)) if tracker else None

    def _commit(self, item: WorkItem, result: GenerationResult, attempt: int) -> None:
        # Runs on an upload thread, not as a Prefect task: task runs per image were two thirds of a
        # run's task runs, and the API server's work for them took CPU time from generation.
        retry_transient(
            lambda: self.run.commit(item, result, str(self.models.device), attempt),
            f"storing item {item.item_id}",
            self.log,
        )
        if self.tracker:
            self.tracker.stored(item)


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()
