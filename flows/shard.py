"""The shard flow: one shard of a planned run, generated on a GPU worker."""

from __future__ import annotations

from prefect import flow

from tasks.generation import generate_shard
from vqclip import layout
from vqclip.records import PlanRecord, ShardOutcome
from vqclip.runs import put_json
from vqclip.storage import open_store


@flow(name="generate-shard", persist_result=False)
def generate_shard_flow(storage: str, run_id: str, shard: int) -> ShardOutcome:
    """Generate shard `shard` of run `run_id` (read from its plan.json) and record the outcome in storage."""
    store = open_store(storage)
    plan = PlanRecord.model_validate_json(store.get_bytes(layout.plan_key(run_id)))
    outcome = generate_shard(plan.shards[shard], storage, run_id)
    put_json(store, layout.shard_outcome_key(run_id, shard), outcome)
    return outcome
