"""Prefect's side of the retry policy in vqclip.retry: task options that retry transient faults only."""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE

from vqclip import shutdown
from vqclip.retry import TASK_DELAYS, is_transient


def transient_only(task, task_run, state) -> bool:
    """Retry a failure only if vqclip.retry calls it transient and the process is not stopping."""
    if shutdown.requested():
        return False
    try:
        state.result()
    except Exception as error:
        return is_transient(error)
    return True


def retried(name: str, retries: int = len(TASK_DELAYS), delays: list[int] | None = None) -> dict:
    """Task options shared by the pipeline's tasks: retries of transient faults only, no result caching.

    The store's sidecar rule, not Prefect's cache, decides what is already done.
    """
    return {
        "name": name,
        "retries": retries,
        "retry_delay_seconds": delays or list(TASK_DELAYS),
        "retry_condition_fn": transient_only,
        "cache_policy": NO_CACHE,
        "persist_result": False,
    }
