"""The inbox watcher: claim each uploaded manifest exactly once and start a batch run for it.

Each inbox object is handled on its own. One whose key the store refuses, that is too large, not a
manifest or an invalid one moves to `manifests/rejected/` under a safe name, with a `.errors.txt` beside
it that names the original key and the reason; the other objects go on in the same pass.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from datetime import datetime, timezone
from pathlib import PurePosixPath

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from pydantic import BaseModel

from vqclip.config import get_config
from vqclip.errors import ManifestError, ObjectNotFound, PromptError, StorageError
from vqclip.manifest import check_size, load_manifest, store_reader
from vqclip.run import layout
from vqclip.run.state import new_run_id
from vqclip.storage import ObjectStore, open_store, validate_key

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class InboxReport(BaseModel):
    """What the watcher did, by inbox object name: runs started, objects rejected, skipped and given up on."""

    started: dict[str, str] = {}
    rejected: list[str] = []
    skipped: list[str] = []
    """Taken by another watcher first."""
    failed: list[str] = []
    """Neither started nor moved aside (the store failed on them); left for the next flow run."""


def rejected_key(key: str) -> str:
    """A key in `manifests/rejected/` for the inbox object `key`: its name made safe, a hash of `key`, a random tag."""
    name = PurePosixPath(key.rpartition("/")[2])
    stem = _UNSAFE.sub("_", name.stem).strip("_")[:60] or "object"
    suffix = _UNSAFE.sub("", name.suffix[1:]).lower()[:10]
    # The hash keeps two bad keys with one safe name apart; the tag, two rejections of one key.
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{layout.REJECTED}{stem}-{digest}-{uuid.uuid4().hex[:6]}" + (f".{suffix}" if suffix else "")


@flow(name="watch-inbox", persist_result=False)
def watch_inbox(
    storage: str | None = None,
    batch_deployment: str = "batch-generate/batch-generate",
    shard_deployment: str | None = "generate-shard/generate-shard",
    poll_seconds: float = 2.0,
    duration_seconds: float = 0.0,
) -> InboxReport:
    """Claim new manifests in `manifests/inbox/`, move bad objects to `manifests/rejected/`, start runs for the rest.

    One pass when `duration_seconds` is 0; otherwise a pass every `poll_seconds` until `duration_seconds` after
    the run's scheduled start. The claim is the storage's own atomic move, so watchers running at once never
    start one manifest twice.
    """
    storage = storage or get_config().storage
    intake = _Intake(open_store(storage), storage, batch_deployment, shard_deployment, get_run_logger())
    # Counted from the scheduled start, not from now: a run that started late still ends before the next
    # scheduled one is due, which the deployment's CANCEL_NEW limit would otherwise cancel.
    deadline = flow_run.scheduled_start_time.timestamp() + duration_seconds
    while True:
        intake.sweep()
        if time.time() + poll_seconds >= deadline:
            return intake.report
        time.sleep(poll_seconds)


class _Intake:
    """One watcher's passes over the inbox, and what they did."""

    def __init__(
        self,
        store: ObjectStore,
        storage: str,
        batch_deployment: str,
        shard_deployment: str | None,
        logger: logging.Logger | logging.LoggerAdapter,
    ) -> None:
        self.store, self.storage, self.logger = store, storage, logger
        self.batch_deployment, self.shard_deployment = batch_deployment, shard_deployment
        self.report = InboxReport()
        self.given_up: set[str] = set()

    def sweep(self) -> None:
        """Take every inbox object once; one that fails is logged and left alone for the rest of this flow run."""
        for key in self.store.list(layout.INBOX):
            if key in self.given_up:
                continue
            try:
                self.take(key)
            except Exception as exc:  # no object, however hostile, may stop the others
                self.given_up.add(key)
                self.report.failed.append(_name(key))
                self.logger.error("could not take inbox object %r; leaving it for the next run: %s", key, exc)

    def take(self, key: str) -> None:
        """Start a run for the manifest at `key`, or move it aside with the reason it cannot run."""
        try:
            validate_key(key)
        except StorageError as exc:
            self.reject(key, f"{exc}; upload it again under a name of letters, digits, '.', '-' and '_'")
            return
        name = _name(key)
        try:
            check_size(self.store.size(key), name, get_config())
            data = self.store.get_bytes(key)
            parsed = load_manifest(data, name)
            parsed.plan(read_source=store_reader(self.store))
        except ObjectNotFound:  # another watcher claimed it since the listing
            return
        except (ManifestError, PromptError) as exc:
            self.reject(key, str(exc))
            return
        self.start(key, name, data)

    def start(self, key: str, name: str, data: bytes) -> None:
        """Claim a valid manifest as a new run and start batch-generate for it."""
        run_id = new_run_id(name, data)
        claimed = f"{layout.CLAIMED}{run_id}{PurePosixPath(name).suffix.lower()}"
        if not self.store.claim(key, claimed):
            self.report.skipped.append(name)
            return
        parameters = {
            "manifest": self.store.url(claimed),
            "storage": self.storage,
            "run_id": run_id,
            "shard_deployment": self.shard_deployment,
        }
        run_deployment(self.batch_deployment, parameters=parameters, idempotency_key=f"batch-{run_id}", timeout=0)
        self.report.started[name] = run_id
        self.logger.info("claimed %s as run %s", name, run_id)

    def reject(self, key: str, reason: str) -> None:
        """Move the object at `key` aside under a safe name, with its original key and `reason` beside it."""
        moved = rejected_key(key)
        if not self.store.evict(key, moved):
            self.report.skipped.append(_name(key))
            return
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        note = f"inbox object: {key!r}\nrejected at: {stamp}\n\n{reason}\n"
        self.store.put_bytes(f"{moved}.errors.txt", note.encode(), content_type="text/plain; charset=utf-8")
        self.report.rejected.append(_name(key))
        self.logger.warning("rejected inbox object %r, moved to %s: %s", key, moved, reason)


def _name(key: str) -> str:
    return key.rpartition("/")[2]
