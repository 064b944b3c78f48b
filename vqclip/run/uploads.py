"""Background uploads: finished images are stored while the next batch computes.

The queue is bounded, so a slow store makes generation wait instead of piling images up in memory.
Each upload still writes the image before its sidecar, so a process that dies with uploads queued
loses only work that a resumed run redoes: nothing is recorded done that is not stored.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any


class BackgroundUploader:
    """Runs upload calls on background threads; `submit` waits while `limit` of them are unfinished.

    Use it as a context manager: leaving the block waits for every upload and raises the first
    failure. Each call runs in a copy of the submitter's context (so Prefect's run context and
    logger follow it).
    """

    def __init__(self, limit: int, workers: int = 4) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vqclip-upload")
        self._slots = threading.BoundedSemaphore(limit)
        self._futures: list[Future] = []

    def submit(self, upload: Callable[..., Any], *args: Any) -> Future:
        """Queue `upload(*args)`; wait for a free slot first; raise at once if an earlier upload failed."""
        self.raise_first_failure(wait=False)
        self._slots.acquire()
        context = contextvars.copy_context()
        try:
            future = self._executor.submit(context.run, upload, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)
        return future

    def raise_first_failure(self, wait: bool = True) -> None:
        """Raise the first failed upload's exception; with `wait`, after every upload has finished."""
        for future in self._futures:
            if wait or future.done():
                error = future.exception()
                if error is not None:
                    raise error

    def __enter__(self) -> BackgroundUploader:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._executor.shutdown(wait=True)
        if kind is None:
            self.raise_first_failure()
