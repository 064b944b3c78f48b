"""The batch flow: manifest -> plan -> generate shards -> score and rank -> reports and artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.states import Completed, Failed, State
from pydantic import BaseModel

from flows.dispatch import dispatch_shards
from tasks.generation import generate_shard
from tasks.retry import PERMANENT
from tasks.reporting import publish_artifacts, write_reports
from tasks.scoring import score_images
from vqclip import layout
from vqclip.manifest import load_manifest, shards
from vqclip.records import PlanRecord
from vqclip.runs import new_run_id, put_json, read_manifest_source, stage_inputs
from vqclip.settings import get_settings
from vqclip.storage import open_store


class RunSummary(BaseModel):
    """What a batch run did, returned by the flow and printed by the CLI."""

    run_id: str
    storage: str
    items: int
    done: int
    failed: dict[str, str]
    index: str
    gallery: str


@flow(name="batch-generate", retries=1, retry_delay_seconds=10, persist_result=False)
def batch_generate(
    manifest: str,
    storage: str | None = None,
    run_id: str | None = None,
    preset: str | None = None,
    shard_deployment: str | None = None,
):
    """Generate, score and rank every image a manifest asks for; re-running with the same run id resumes.

    Transient faults fail the attempt and Prefect retries the flow, which resumes; faults no retry can
    fix (bad manifest, missing weights, refused credentials) end the run Failed at once. With
    `shard_deployment`, shards run as flow runs of that deployment (GPU workers) instead of here.
    """
    try:
        return _run_batch(manifest, storage, run_id, preset, shard_deployment)
    except PERMANENT as exc:
        return _fail_without_retry(f"{type(exc).__name__}: {exc}")


def _fail_without_retry(message: str) -> State:
    """A Failed state that ends the run now. Prefect's server turns any Failed into AwaitingRetry while a
    flow has retries left (flows ignore `retriable`), so first mark this run as having no retries left."""
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None:
        policy = context.flow_run.empirical_policy.model_copy(update={"retries": 0})
        with get_client(sync_client=True) as client:
            client.update_flow_run(context.flow_run.id, empirical_policy=policy)
    return Failed(message=message)


def _run_batch(manifest: str, storage: str | None, run_id: str | None, preset: str | None, shard_deployment: str | None):
    logger = get_run_logger()
    storage = storage or get_settings().storage
    store = open_store(storage)
    data, name, base_dir = read_manifest_source(manifest)
    parsed = load_manifest(data, name, base_dir=base_dir, preset=preset)
    read_store = lambda source: store.get_bytes(source[len("store:") :])  # noqa: E731
    items = parsed.plan(read_source=read_store)
    run_id = layout.check_run_id(run_id or new_run_id(name, data))
    store.put_bytes(layout.manifest_key(run_id, Path(name).suffix.lower()), data)
    stage_inputs(store, run_id, items, lambda source: parsed.read_bytes(source, read_store))
    batches = shards(items, parsed.batch_size)
    logger.info("run %s: %d items in %d shards into %s", run_id, len(items), len(batches), store.url(layout.run_prefix(run_id)))

    progress = create_progress_artifact(0.0, description=f"Shards finished, run {run_id}")
    failures: dict[str, str] = {}
    if shard_deployment:
        put_json(store, layout.plan_key(run_id), PlanRecord(run_id=run_id, shards=batches))
        failures = dispatch_shards(shard_deployment, storage, run_id, batches, progress)
    else:
        for number, batch in enumerate(batches, start=1):
            outcome = generate_shard(batch, storage, run_id)
            failures.update(outcome.failed)
            update_progress_artifact(progress, 100.0 * number / len(batches))

    scorer = items[0].models.scorer
    records = score_images(storage, run_id, scorer)
    index, ranking = write_reports(storage, run_id, name, items, records, failures, scorer)
    publish_artifacts(storage, run_id, index, ranking, records)
    summary = RunSummary(
        run_id=run_id,
        storage=storage,
        items=len(items),
        done=index.counts["done"],
        failed={e.item_id: e.error or e.state for e in index.items if e.state != "done"},
        index=store.url(layout.index_key(run_id)),
        gallery=store.url(layout.gallery_key(run_id)),
    )
    if summary.failed:
        listing = "; ".join(f"{item_id}: {why}" for item_id, why in summary.failed.items())
        return Failed(
            message=f"{len(summary.failed)} of {len(items)} items not done ({listing}). "
            f"Resume with: vqclip run {manifest} --storage {storage} --run-id {run_id}",
            data=summary,
        )
    return Completed(message=f"all {len(items)} items done", data=summary)
