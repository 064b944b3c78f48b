"""The reconciler on the ephemeral API: a crashed batch run is resumed by its run id, a bounded number of times, then failed."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed, Running

from flows.lineage import RESUMED_TAG, attempt_tag, run_tag
from flows.reconcile import reconcile_runs

PARAMETERS = {"manifest": "s3://bucket/manifests/claimed/r.yaml", "storage": "s3://bucket/out", "shard_deployment": "generate-shard/generate-shard"}


@pytest.fixture
def deployment(prefect_api):
    """A batch-generate deployment with no worker: the reconciler only creates and reads flow runs."""
    import uuid

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("batch-generate")
        yield client.create_deployment(flow_id=flow_id, name=f"reconcile-{uuid.uuid4().hex[:8]}")


def crashed_batch(deployment_id, run_id: str, tags: list[str] | None = None):
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id, parameters={**PARAMETERS, "run_id": run_id}, tags=tags or [])
        client.set_flow_run_state(run.id, Crashed(message="No heartbeat for 75 s"), force=True)
        return client.read_flow_run(run.id)


def runs_of(run_id: str):
    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[run_tag(run_id)])))
    return sorted(found, key=lambda r: r.created)


def test_a_crashed_batch_is_resumed_once_then_failed_with_the_resume_command(deployment):
    lost = crashed_batch(deployment, "r-heal", tags=[run_tag("r-heal")])
    report = reconcile_runs(max_attempts=2)
    assert list(report.resumed) == [lost.name] and not report.failed

    first, resumed = runs_of("r-heal")
    assert first.id == lost.id and RESUMED_TAG in first.tags and first.state.type == StateType.CRASHED
    assert resumed.deployment_id == deployment and resumed.idempotency_key == f"resume-{lost.id}"
    assert resumed.parameters == {**PARAMETERS, "run_id": "r-heal"} and attempt_tag(2) in resumed.tags
    assert resumed.state.type == StateType.SCHEDULED

    assert reconcile_runs(max_attempts=2).resumed == {}, "a handled crash is not resumed twice"

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(resumed.id, Crashed(message="No heartbeat for 75 s"), force=True)
    report = reconcile_runs(max_attempts=2)
    assert report.resumed == {} and list(report.failed) == [resumed.name]
    gave_up = runs_of("r-heal")[-1]
    assert gave_up.id == resumed.id and gave_up.state.type == StateType.FAILED
    message = gave_up.state.message
    assert "lost 2 times" in message and "No heartbeat" in message
    assert message.endswith("Resume with: vqclip run s3://bucket/manifests/claimed/r.yaml --storage s3://bucket/out --run-id r-heal")
    assert len(runs_of("r-heal")) == 2


def test_a_crash_is_left_alone_while_another_batch_run_of_the_same_run_is_in_flight(deployment):
    crashed_batch(deployment, "r-owned", tags=[run_tag("r-owned")])
    with get_client(sync_client=True) as client:
        other = client.create_flow_run_from_deployment(deployment, parameters={**PARAMETERS, "run_id": "r-owned"}, tags=[run_tag("r-owned")])
        client.set_flow_run_state(other.id, Running(), force=True)
    assert reconcile_runs().resumed == {}
    assert len(runs_of("r-owned")) == 2
