"""The inbox watcher: claim each uploaded manifest exactly once and start a batch run for it."""

from __future__ import annotations

from pathlib import PurePosixPath

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from pydantic import BaseModel

from vqclip import layout
from vqclip.errors import ManifestError, ObjectNotFound, PromptError
from vqclip.manifest import load_manifest
from vqclip.runs import new_run_id
from vqclip.settings import get_settings
from vqclip.storage import open_store


class InboxReport(BaseModel):
    """What one pass over the inbox did."""

    started: dict[str, str] = {}
    rejected: list[str] = []
    skipped: list[str] = []


def _validate(store, key: str, data: bytes) -> str | None:
    """The manifest's errors, or None when it is valid (store images are checked too)."""
    try:
        parsed = load_manifest(data, PurePosixPath(key).name)
        parsed.plan(read_source=lambda source: store.get_bytes(source[len("store:") :]))
    except (ManifestError, PromptError) as exc:
        return str(exc)
    return None


@flow(name="watch-inbox", persist_result=False)
def watch_inbox(
    storage: str | None = None,
    batch_deployment: str = "batch-generate/batch-generate",
    shard_deployment: str | None = "generate-shard/generate-shard",
) -> InboxReport:
    """Claim new manifests in `manifests/inbox/`, move bad ones to `manifests/rejected/`, start runs for the rest.

    The claim is the storage's own atomic move, so watchers running at once never start one manifest twice.
    """
    logger = get_run_logger()
    storage = storage or get_settings().storage
    store = open_store(storage)
    report = InboxReport()
    for key in store.list(layout.INBOX):
        name = PurePosixPath(key).name
        try:
            data = store.get_bytes(key)
        except ObjectNotFound:  # another watcher claimed it since the listing
            continue
        errors = _validate(store, key, data)
        if errors:
            rejected = f"{layout.REJECTED}{name}"
            if store.claim(key, rejected):
                store.put_bytes(f"{rejected}.errors.txt", errors.encode(), content_type="text/plain; charset=utf-8")
                report.rejected.append(name)
                logger.warning("rejected %s: %s", name, errors)
            continue
        run_id = new_run_id(name, data)
        claimed = f"{layout.CLAIMED}{run_id}{PurePosixPath(name).suffix.lower()}"
        if not store.claim(key, claimed):
            report.skipped.append(name)
            continue
        run_deployment(
            batch_deployment,
            parameters={"manifest": store.url(claimed), "storage": storage, "run_id": run_id, "shard_deployment": shard_deployment},
            idempotency_key=f"batch-{run_id}",
            timeout=0,
        )
        report.started[name] = run_id
        logger.info("claimed %s as run %s", name, run_id)
    return report
