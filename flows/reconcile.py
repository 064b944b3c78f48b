"""The reconciler: no batch run stays Crashed without an owner.

A batch run whose process or worker died is marked Crashed (by the zombie-run automation, or by
`vqclip up` for what a stopped stack left in flight). The reconciler resumes each such run by its
run id as a new flow run of the same deployment (the sidecar rule skips finished images, and the
new run adopts the shard runs still in flight), at most `batch_attempts` runs per vqclip run in
all; after that it marks the lost run Failed with the reason and the command to resume it by hand.
It runs when a flow run crashes (an automation) and on a schedule (deployments/prefect.yaml).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.states import Failed
from pydantic import BaseModel

from flows.lineage import ATTEMPT_TAG, RESUMED_TAG, RUN_TAG, attempt_tag, run_id_of, run_tag, tag_value
from vqclip.config import get_config
from vqclip.run.resume import resume_command

BATCH_FLOW = "batch-generate"


class ReconcileReport(BaseModel):
    """What one pass did: batch runs resumed (lost flow run -> new flow run) and given up."""

    resumed: dict[str, str] = {}
    failed: dict[str, str] = {}


@flow(name="reconcile-runs", persist_result=False)
def reconcile_runs(max_attempts: int | None = None, window_hours: float = 48.0) -> ReconcileReport:
    """Resume every crashed batch run of the last `window_hours`, or fail it once its run has had `max_attempts` runs."""
    logger = get_run_logger()
    limit = max_attempts or get_config().batch_attempts
    since = datetime.now(timezone.utc) - timedelta(hours=window_hours)
    report = ReconcileReport()
    with get_client(sync_client=True) as client:
        batches = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[BATCH_FLOW])),
            flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
        )
        owned = {run_id_of(r) for r in batches if r.state is not None and not r.state.is_final()}
        lost = [r for r in batches if r.state is not None and r.state.type == StateType.CRASHED and RESUMED_TAG not in r.tags]
        for flow_run in sorted(lost, key=lambda r: r.created):
            run_id = run_id_of(flow_run)
            attempt = int(tag_value(flow_run.tags, ATTEMPT_TAG) or 1)
            if run_id is not None and run_id in owned:
                logger.info("batch run %s (run %s) crashed, but another batch run of it is in flight", flow_run.name, run_id)
            elif attempt >= limit or flow_run.deployment_id is None:
                why = f"its process was lost {attempt} times" if flow_run.deployment_id else "it ran outside a deployment"
                message = (f"Crashed and not resumed automatically: {why} ({flow_run.state.message}). "
                           f"Resume with: {resume_command(flow_run.parameters.get('manifest'), flow_run.parameters.get('storage'), run_id)}")
                client.set_flow_run_state(flow_run.id, Failed(message=message), force=True)
                report.failed[flow_run.name] = message
                logger.warning("batch run %s: %s", flow_run.name, message)
                continue
            else:
                parameters = {**flow_run.parameters, **({"run_id": run_id} if run_id else {})}
                kept = [tag for tag in flow_run.tags if not tag.startswith((ATTEMPT_TAG, RUN_TAG))]
                tags = [*kept, attempt_tag(attempt + 1), *([run_tag(run_id)] if run_id else [])]
                resumed = run_deployment(flow_run.deployment_id, parameters=parameters, tags=tags,
                                         idempotency_key=f"resume-{flow_run.id}", timeout=0, as_subflow=False)
                if run_id:
                    owned.add(run_id)
                report.resumed[flow_run.name] = resumed.name
                logger.warning("batch run %s (run %s) was lost; resumed as %s, attempt %d of %d",
                               flow_run.name, run_id, resumed.name, attempt + 1, limit)
            client.update_flow_run(flow_run.id, tags=[*flow_run.tags, RESUMED_TAG])
    return report
