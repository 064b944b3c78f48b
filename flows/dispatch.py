"""Fan a run's shards out to a deployment (GPU workers) and wait for them, re-dispatching crashed ones.

A batch run that resumes a lost one adopts the shard runs still in flight instead of starting
them twice, and skips the shards whose items are all done.
"""

from __future__ import annotations

import time
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

from flows.lineage import run_tag, shard_tag
from vqclip.config import get_config
from vqclip.errors import StorageError
from vqclip.items import WorkItem
from vqclip.run import layout
from vqclip.run.records import ShardOutcome
from vqclip.storage import open_store

POLL_SECONDS = 5.0


def _start(deployment: str, storage: str, run_id: str, shard: int, attempt: int) -> UUID:
    """Create the shard's flow run; the idempotency key makes a retried parent find, not duplicate, it."""
    flow_run = run_deployment(
        deployment,
        parameters={"storage": storage, "run_id": run_id, "shard": shard},
        idempotency_key=f"{run_id}-shard-{shard}-attempt-{attempt}",
        tags=[run_tag(run_id), shard_tag(shard)],
        timeout=0,
    )
    return flow_run.id


def _earlier_shard_runs(client: SyncPrefectClient, run_id: str) -> dict[int, list[FlowRun]]:
    """The shard flow runs already made for this vqclip run (by any batch run), by shard, oldest first."""
    found = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[run_tag(run_id)])))
    by_shard: dict[int, list[FlowRun]] = {}
    for flow_run in sorted(found, key=lambda r: r.created):
        if flow_run.parameters.get("shard") is not None:
            by_shard.setdefault(int(flow_run.parameters["shard"]), []).append(flow_run)
    return by_shard


def dispatch_shards(deployment: str, storage: str, run_id: str, batches: list[list[WorkItem]]) -> dict[str, str]:
    """Run every shard as a flow run of `deployment`; return the failed items and why.

    A shard run that crashes or fails (its worker died, say) is dispatched again with the next
    attempt number in its idempotency key, up to `shard_attempts` per batch run; the sidecar rule
    makes the new run skip whatever the lost one committed. Waiting ends after `shard_timeout`
    with an error.
    """
    logger = get_run_logger()
    config = get_config()
    store = open_store(storage)
    committed = set(store.list(layout.items_prefix(run_id)))
    attempts: dict[int, int] = {}
    running: dict[int, UUID] = {}
    failures: dict[str, str] = {}
    deadline = time.monotonic() + config.shard_timeout
    with get_client(sync_client=True) as client:
        earlier = _earlier_shard_runs(client, run_id)
        before = {shard: len(earlier.get(shard, [])) for shard in range(len(batches))}
        adopted = skipped = 0
        for shard, batch in enumerate(batches):
            attempts[shard] = before[shard]
            in_flight = [r for r in earlier.get(shard, []) if r.state is not None and not r.state.is_final()]
            if in_flight:
                running[shard] = in_flight[-1].id
                adopted += 1
                logger.info("shard %d: adopting flow run %s (%s), started by an earlier batch run", shard, in_flight[-1].name, in_flight[-1].state.name)
            elif all(layout.sidecar_key(run_id, item.item_id) in committed for item in batch):
                skipped += 1
            else:
                attempts[shard] += 1
                running[shard] = _start(deployment, storage, run_id, shard, attempts[shard])
        if adopted or skipped:
            logger.info("%d shards already done, %d adopted, %d started", skipped, adopted, len(running) - adopted)
        while running:
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id}: shards {sorted(running)} not finished after {config.shard_timeout:.0f} s")
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
                elif attempts[shard] - before[shard] < config.shard_attempts:
                    attempts[shard] += 1
                    logger.warning("shard %d ended %s (%s); dispatching attempt %d", shard, state.name, state.message, attempts[shard])
                    running[shard] = _start(deployment, storage, run_id, shard, attempts[shard])
                else:
                    reason = f"shard {shard} ended {state.name} after {attempts[shard]} attempts: {state.message}"
                    failures.update({item.item_id: reason for item in batches[shard]})
    return failures
