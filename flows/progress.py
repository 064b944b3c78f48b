"""The batch run's progress artifact, moved by its shards' optimisation steps wherever they run (vqclip.run.progress)."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from vqclip.items import WorkItem
from vqclip.run.progress import Progress, RunProgress
from vqclip.storage import ObjectStore

ARTIFACT_SECONDS = 3.0
"""How often the artifact is updated while shards run, at most."""


def describe(progress: Progress, run_id: str) -> str:
    """The artifact's description: steps and images, done and in all."""
    return (
        f"{progress.steps_done:,} of {progress.steps_total:,} optimisation steps done, "
        f"{progress.images_done} of {progress.images_total} images stored (run {run_id})"
    )


@contextmanager
def progress_artifact(store: ObjectStore, run_id: str, batches: list[list[WorkItem]]) -> Iterator[None]:
    """Publish the run's progress artifact and update it every ARTIFACT_SECONDS while the block runs, and at its end.

    The updates come from a background thread, so neither the shards run here nor the wait for
    remote ones is held up by the API; a failed update is logged and the next one tries again.
    """
    logger = get_run_logger()
    reader = RunProgress(store, run_id, batches)
    shown = reader.read(fresh=True)
    artifact = create_progress_artifact(100.0 * shown.fraction, description=describe(shown, run_id))
    stop = threading.Event()

    def publish(fresh: bool = False) -> None:
        nonlocal shown
        now = reader.read(fresh)
        if (now.steps_done, now.images_done) == (shown.steps_done, shown.images_done):
            return
        try:
            update_progress_artifact(artifact, 100.0 * now.fraction, description=describe(now, run_id))
        except Exception as exc:  # noqa: BLE001 - the artifact is a view of the run; the run goes on without it
            logger.warning("could not update the progress artifact: %s", exc)
            return
        shown = now

    def publish_periodically() -> None:
        while not stop.wait(ARTIFACT_SECONDS):
            publish()

    thread = threading.Thread(target=contextvars.copy_context().run, args=(publish_periodically,), name="vqclip-artifact", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        publish(fresh=True)
