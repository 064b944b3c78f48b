"""Fan a run's shards out to a deployment (GPU workers) and wait for them, re-dispatching crashed ones."""

from __future__ import annotations

import time
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from vqclip import layout
from vqclip.errors import StorageError
from vqclip.items import WorkItem
from vqclip.records import ShardOutcome
from vqclip.settings import get_settings
from vqclip.storage import open_store

POLL_SECONDS = 5.0


def _start(deployment: str, storage: str, run_id: str, shard: int, attempt: int) -> UUID:
    """Create the shard's flow run; the idempotency key makes a retried parent find, not duplicate, it."""
    flow_run = run_deployment(
        deployment,
        parameters={"storage": storage, "run_id": run_id, "shard": shard},
        idempotency_key=f"{run_id}-shard-{shard}-attempt-{attempt}",
        timeout=0,
    )
    return flow_run.id


def dispatch_shards(deployment: str, storage: str, run_id: str, batches: list[list[WorkItem]], progress: UUID) -> dict[str, str]:
    """Run every shard as a flow run of `deployment`; return the failed items and why.

    A shard run that crashes or fails (its worker died, say) is dispatched again with the next
    attempt number in its idempotency key, up to `shard_attempts`; the sidecar rule makes the new
    run skip whatever the lost one committed. Waiting ends after `shard_timeout` with an error.
    """
    logger = get_run_logger()
    settings = get_settings()
    store = open_store(storage)
    attempts = {shard: 1 for shard in range(len(batches))}
    running = {shard: _start(deployment, storage, run_id, shard, 1) for shard in attempts}
    failures: dict[str, str] = {}
    deadline = time.monotonic() + settings.shard_timeout
    with get_client(sync_client=True) as client:
        while running:
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id}: shards {sorted(running)} not finished after {settings.shard_timeout:.0f} s")
            time.sleep(POLL_SECONDS)
            for shard, flow_run_id in list(running.items()):
                state = client.read_flow_run(flow_run_id).state
                if state is None or not state.is_final():
                    continue
                del running[shard]
                if state.is_completed():
                    try:
                        outcome = ShardOutcome.model_validate_json(store.get_bytes(layout.shard_outcome_key(run_id, shard)))
                    except StorageError:
                        outcome = ShardOutcome()
                    failures.update(outcome.failed)
                elif attempts[shard] < settings.shard_attempts:
                    attempts[shard] += 1
                    logger.warning("shard %d ended %s (%s); dispatching attempt %d", shard, state.name, state.message, attempts[shard])
                    running[shard] = _start(deployment, storage, run_id, shard, attempts[shard])
                else:
                    reason = f"shard {shard} ended {state.name} after {attempts[shard]} attempts: {state.message}"
                    failures.update({item.item_id: reason for item in batches[shard]})
            update_progress_artifact(progress, 100.0 * (len(batches) - len(running)) / len(batches))
    return failures
