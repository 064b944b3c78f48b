"""The shard flow: one shard of a planned run, generated on a GPU worker."""

from __future__ import annotations

from prefect import flow
from prefect.exceptions import TerminationSignal

from tasks.generation import generate_shard
from vqclip import shutdown
from vqclip.errors import Interrupted
from vqclip.run import layout
from vqclip.run.records import PlanRecord, ShardOutcome
from vqclip.run.state import put_json
from vqclip.storage import open_store


@flow(name="generate-shard", persist_result=False)
def generate_shard_flow(storage: str, run_id: str, shard: int) -> ShardOutcome:
    """Generate shard `shard` of run `run_id` (read from its plan.json) and record the outcome in storage.

    SIGTERM or SIGINT (a worker being stopped) ends the run at the next optimisation step, its finished
    images stored, as Prefect ends a signalled flow run: Crashed (so the batch flow dispatches the shard
    again), then the process dies by the signal.
    """
    store = open_store(storage)
    plan = PlanRecord.model_validate_json(store.get_bytes(layout.plan_key(run_id)))
    try:
        outcome = generate_shard(plan.shards[shard], storage, run_id, shard)
    except Interrupted as exc:
        # Prefect's SIGTERM bridge was set aside while generating so the signal could wait for a step boundary.
        raise TerminationSignal(signal=shutdown.first_signal()) from exc
    put_json(store, layout.shard_outcome_key(run_id, shard), outcome)
    return outcome
