"""Which Prefect flow runs belong to which vqclip run: tags on batch and shard runs, read back by dispatch and the reconciler."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

RUN_TAG = "vqclip-run:"
SHARD_TAG = "vqclip-shard:"
ATTEMPT_TAG = "vqclip-attempt:"  # which automatic run of a batch this is (1: the first)
RESUMED_TAG = "vqclip-resumed"  # on a crashed batch run the reconciler has handled


def run_tag(run_id: str) -> str:
    return f"{RUN_TAG}{run_id}"


def shard_tag(shard: int) -> str:
    return f"{SHARD_TAG}{shard}"


def attempt_tag(attempt: int) -> str:
    return f"{ATTEMPT_TAG}{attempt}"


def tag_value(tags: Iterable[str], prefix: str) -> str | None:
    """The value of the first tag that starts with `prefix`, or None."""
    return next((tag[len(prefix) :] for tag in tags if tag.startswith(prefix)), None)


def run_id_of(flow_run: Any) -> str | None:
    """The vqclip run a batch or shard flow run works on: its run_id parameter, else its run tag."""
    return flow_run.parameters.get("run_id") or tag_value(flow_run.tags, RUN_TAG)


def tag_current_flow_run(*tags: str) -> None:
    """Add `tags` to the flow run this code runs in, when it is a deployment's run on a Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.deployment_id is None:
        return
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(context.flow_run.id).tags
        if not set(tags) <= set(current):
            client.update_flow_run(context.flow_run.id, tags=[*current, *(t for t in tags if t not in current)])
