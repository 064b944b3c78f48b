"""Live progress of a run: optimisation steps and stored images, per shard, carried through the run's store.

A shard's progress is a small record, `runs/<run>/progress/<shard>.json`, written atomically by a
background thread at most every RECORD_SECONDS (never from the optimisation loop), so any process
that reads the store follows shards running anywhere: the CLI, and the batch flow waiting on GPU
workers. Within the process that runs a shard, readers also see each step at once, without waiting
for the record. Steps count over items: a batch of 4 items at step 10 has done 40 of its steps.

The store, not Prefect's API, carries it: every worker already writes there, the engine stays free
of Prefect, readers need no API server, and the API server that schedules the work gets no extra load.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from pydantic import BaseModel, ValidationError

from vqclip.errors import VqclipError
from vqclip.items import WorkItem
from vqclip.run import layout
from vqclip.storage import ObjectStore

RECORD_SECONDS = 2.0
"""How often a running shard's record is written to the store, at most."""


class Progress(BaseModel):
    """Optimisation steps done and images stored, out of their totals, at time `updated` (Unix seconds)."""

    steps_done: int = 0
    steps_total: int = 0
    images_done: int = 0
    images_total: int = 0
    updated: float = 0.0

    @property
    def fraction(self) -> float:
        """Steps done as a share of all steps (1.0 when there are none)."""
        return self.steps_done / self.steps_total if self.steps_total else 1.0

    @property
    def finished(self) -> bool:
        """Every step done and every image stored."""
        return self.steps_done >= self.steps_total and self.images_done >= self.images_total


Listener = Callable[[Progress], None]

# The latest progress of each shard run in this process, by (store URI, run id, shard): what readers
# in the same process show between two writes of the shard's record. One small entry per shard run.
_LIVE: dict[tuple[str, str, int], Progress] = {}


class ShardTracker:
    """Counts one shard's steps per item and its stored images, and hands every new count to `listener`.

    `steps` is called from the optimisation loop and `stored` from upload threads. An item that starts
    again (a smaller batch after running out of memory, a restart after a non-finite loss) counts
    from 0 again.
    """

    def __init__(self, items: list[WorkItem], listener: Listener) -> None:
        self._totals = {item.item_id: item.settings.total_steps for item in items}
        self._steps = dict.fromkeys(self._totals, 0)
        self._stored: set[str] = set()
        self._listener = listener
        self._lock = threading.Lock()

    def done_before(self, items: list[WorkItem]) -> None:
        """`items` were stored by an earlier attempt: all their steps and images count as done."""
        with self._lock:
            for item in items:
                self._steps[item.item_id] = self._totals[item.item_id]
                self._stored.add(item.item_id)
            self._report()

    def steps(self, batch: list[WorkItem], step: int) -> None:
        """Every item of `batch` has done `step` steps."""
        with self._lock:
            for item in batch:
                self._steps[item.item_id] = step
            self._report()

    def stored(self, item: WorkItem) -> None:
        """`item`'s image and sidecar are committed."""
        with self._lock:
            self._stored.add(item.item_id)
            self._report()

    def _report(self) -> None:
        self._listener(
            Progress(
                steps_done=sum(min(done, self._totals[i]) for i, done in self._steps.items()),
                steps_total=sum(self._totals.values()),
                images_done=len(self._stored),
                images_total=len(self._totals),
                updated=time.time(),
            )
        )


class ProgressRecorder:
    """A `Listener` that keeps shard `shard`'s latest progress for readers: at once in this process, in the store every `every` seconds.

    Use it as a context manager: a background thread writes the record when it changed, and leaving
    the block writes the last one. A failed write is logged and tried again later; it never fails the shard.
    """

    def __init__(
        self, store: ObjectStore, run_id: str, shard: int, log: logging.Logger | logging.LoggerAdapter, every: float | None = None
    ) -> None:
        self._store, self._key, self._log = store, layout.progress_key(run_id, shard), log
        self._live = (store.uri, run_id, shard)
        self._every = RECORD_SECONDS if every is None else every
        self._latest: Progress | None = None
        self._written: Progress | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._write_periodically,), name="vqclip-progress", daemon=True)
        self._warned = False

    def __call__(self, progress: Progress) -> None:
        with self._lock:
            self._latest = _LIVE[self._live] = progress

    def __enter__(self) -> ProgressRecorder:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._write()

    def _write_periodically(self) -> None:
        while not self._stop.wait(self._every):
            self._write()

    def _write(self) -> None:
        with self._lock:
            latest = self._latest
        if latest is None or latest is self._written:
            return
        try:
            self._store.put_bytes(self._key, latest.model_dump_json().encode(), content_type="application/json")
        except VqclipError as exc:
            if not self._warned:
                self._log.warning("could not record progress in %s (%s); generation goes on", self._key, exc)
                self._warned = True
            return
        self._written = latest


class RunProgress:
    """Sums a run's progress over its shards, as `batches` plans them, from every process that runs them.

    Per shard it takes the newest of: this process's live count, the shard's record in the store
    (re-read at most every `every` seconds, and no more once finished), or, for a shard with neither,
    its items already stored when the reader was made.
    """

    def __init__(self, store: ObjectStore, run_id: str, batches: list[list[WorkItem]], every: float | None = None) -> None:
        self._store, self._run_id = store, run_id
        self._every = RECORD_SECONDS if every is None else every
        self._totals = [(sum(item.settings.total_steps for item in batch), len(batch)) for batch in batches]
        try:
            stored = set(store.list(layout.items_prefix(run_id)))
        except VqclipError:
            stored = set()
        self._shards = [
            Progress(
                steps_done=sum(i.settings.total_steps for i in batch if layout.sidecar_key(run_id, i.item_id) in stored),
                images_done=sum(layout.sidecar_key(run_id, i.item_id) in stored for i in batch),
            )
            for batch in batches
        ]
        self._read_at = float("-inf")

    def read(self, fresh: bool = False) -> Progress:
        """The run's progress now: steps and images done over all shards, out of the plan's totals.

        With `fresh`, the store's records are read again however recently they were.
        """
        if fresh or time.monotonic() - self._read_at >= self._every:
            self._read_records()
        steps = images = 0
        for shard, (record, (steps_total, images_total)) in enumerate(zip(self._shards, self._totals)):
            live = _LIVE.get((self._store.uri, self._run_id, shard))
            if live is not None and live.updated >= record.updated:
                record = live
            steps += min(record.steps_done, steps_total)
            images += min(record.images_done, images_total)
        return Progress(
            steps_done=steps,
            steps_total=sum(t for t, _ in self._totals),
            images_done=images,
            images_total=sum(n for _, n in self._totals),
            updated=time.time(),
        )

    def _read_records(self) -> None:
        self._read_at = time.monotonic()
        try:
            keys = set(self._store.list(layout.progress_prefix(self._run_id)))
        except VqclipError:
            return
        for shard, known in enumerate(self._shards):
            key = layout.progress_key(self._run_id, shard)
            if key not in keys or (known.updated and known.finished):
                continue
            try:
                record = Progress.model_validate_json(self._store.get_bytes(key))
            except (VqclipError, ValidationError):
                continue
            if record.updated >= known.updated:
                self._shards[shard] = record


def recently_moving_shards(store: ObjectStore, run_id: str, within: float) -> dict[int, float]:
    """The shards of `run_id` whose record is unfinished and less than `within` seconds old, with its age: work still running somewhere."""
    now, moving = time.time(), {}
    for key in store.list(layout.progress_prefix(run_id)):
        try:
            record = Progress.model_validate_json(store.get_bytes(key))
        except (VqclipError, ValidationError):
            continue
        if not record.finished and now - record.updated < within:
            moving[int(key.rsplit("/", 1)[-1].removesuffix(".json"))] = max(now - record.updated, 0.0)
    return moving
