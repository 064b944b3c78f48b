"""The batch flow: manifest -> plan -> generate shards -> score -> zero-shot filter -> rank -> reports and artifacts."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed
from pydantic import BaseModel

from flows.dispatch import dispatch_shards
from flows.lineage import run_tag, tag_current_flow_run
from flows.progress import progress_artifact
from tasks.filtering import filter_images
from tasks.generation import generate_shard
from tasks.planning import prepare_run
from tasks.reporting import publish_artifacts, write_reports
from tasks.scoring import index_embeddings, score_images
from vqclip.config import get_config
from vqclip.errors import ManifestError, VqclipError
from vqclip.manifest import shards
from vqclip.retry import is_permanent
from vqclip.run import layout
from vqclip.run.records import PlanRecord
from vqclip.run.resume import resume_command
from vqclip.run.state import put_json
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


@flow(name="batch-generate", persist_result=False)
def batch_generate(
    manifest: str,
    storage: str | None = None,
    run_id: str | None = None,
    preset: str | None = None,
    shard_deployment: str | None = None,
):
    """Generate, score and rank every image a manifest asks for; re-running with the same run id resumes.

    Transient faults are retried by the tasks; faults no retry can fix (bad manifest, missing weights,
    refused credentials) end the run Failed at once. With `shard_deployment`, shards run as flow runs
    of that deployment (GPU workers) instead of here.
    """
    try:
        _check_manifest_source(manifest)
        return _run_batch(manifest, storage or get_config().storage, run_id, preset, shard_deployment)
    except VqclipError as exc:
        if not is_permanent(exc):
            raise
        return Failed(message=f"{type(exc).__name__}: {exc}", data=exc)  # the CLI leaves the resume hint out for it (vqclip.retry.is_permanent)


def _check_manifest_source(manifest: str) -> None:
    """A deployment's run reads its manifest from object storage only, never a file on the worker that runs it."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    remote = context is not None and context.flow_run is not None and context.flow_run.deployment_id is not None
    if remote and not manifest.startswith(("s3://", "store:")):
        raise ManifestError(
            f"manifest {manifest!r}: a deployment run reads manifests from the object store only, as s3://BUCKET/KEY "
            "or store:KEY; upload it with `vqclip submit` (local paths are for `vqclip run` on your own machine)"
        )


def _run_batch(manifest: str, storage: str, run_id: str | None, preset: str | None, shard_deployment: str | None):
    logger = get_run_logger()
    store = open_store(storage)
    run = prepare_run(manifest, storage, run_id, preset)
    run_id, items = run.run_id, run.items
    tag_current_flow_run(run_tag(run_id))  # how the reconciler finds this run's id if the run is lost
    batches = shards(items, run.shard_size)
    logger.info("run %s: %d items in %d shards into %s", run_id, len(items), len(batches), store.url(layout.run_prefix(run_id)))

    failures: dict[str, str] = {}
    with progress_artifact(store, run_id, batches):
        if shard_deployment:
            put_json(store, layout.plan_key(run_id), PlanRecord(run_id=run_id, shards=batches))
            failures = dispatch_shards(shard_deployment, storage, run_id, batches)
        else:
            for number, batch in enumerate(batches):
                failures.update(generate_shard(batch, storage, run_id, number).failed)

    records = score_images(storage, run_id, {item.item_id: item.models.scorer for item in items})
    if run.filter is not None:
        records = filter_images(storage, run_id, run.filter, records)  # rejected images stay stored but are published nowhere
    index_embeddings(storage, run_id)  # the run's images become searchable (`vqclip search`)
    index, ranking = write_reports(storage, run_id, run.manifest_name, items, records, failures)
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
            f"Resume with: {resume_command(manifest, storage, run_id)}",
            data=summary,
        )
    return Completed(message=f"all {len(items)} items done", data=summary)
