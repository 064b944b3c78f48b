"""Which failures a task retry can fix."""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE

from vqclip import shutdown
from vqclip.errors import GenerationError, ManifestError, ModelError, PermanentStorageError, PromptError

PERMANENT = (ManifestError, PromptError, ModelError, PermanentStorageError, GenerationError)


def transient_only(task, task_run, state) -> bool:
    """Retry unless no retry can fix the failure (bad input, missing weights, bad credentials) or the process is stopping."""
    if shutdown.requested():
        return False
    try:
        state.result()
    except PERMANENT:
        return False
    except Exception:
        return True
    return True


def retried(name: str, retries: int = 3, delays: list[int] | None = None) -> dict:
    """Task options shared by the pipeline's tasks: retries of transient faults only, no result caching.

    The store's sidecar rule, not Prefect's cache, decides what is already done.
    """
    return {
        "name": name,
        "retries": retries,
        "retry_delay_seconds": delays or [2, 5, 10],
        "retry_condition_fn": transient_only,
        "cache_policy": NO_CACHE,
        "persist_result": False,
    }
