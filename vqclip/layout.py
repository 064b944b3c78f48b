"""Object keys of the storage layout. Keys come only from ids the code makes, never from a manifest."""

from __future__ import annotations

import re

from vqclip.errors import VqclipError

INBOX = "manifests/inbox/"
CLAIMED = "manifests/claimed/"
REJECTED = "manifests/rejected/"

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_ITEM_OR_PROMPT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_run_id(run_id: str) -> str:
    """Return `run_id` if it is a safe key segment, else raise with the allowed form."""
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise VqclipError(f"run id {run_id!r} is not allowed; use letters, digits, '_', '-' and '.', at most 100")
    return run_id


def _id(value: str) -> str:
    if not _ITEM_OR_PROMPT_ID.match(value):
        raise VqclipError(f"id {value!r} is not a safe key segment")
    return value


def run_prefix(run_id: str) -> str:
    return f"runs/{check_run_id(run_id)}/"


def items_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}items/"


def image_key(run_id: str, item_id: str) -> str:
    return f"{items_prefix(run_id)}{_id(item_id)}.png"


def frame_key(run_id: str, item_id: str, step: int) -> str:
    """An intermediate image of an item, named by the optimisation step it shows."""
    return f"{items_prefix(run_id)}{_id(item_id)}/frames/{int(step):05d}.png"


def video_key(run_id: str, item_id: str) -> str:
    """The MP4 of an item's frames and final image."""
    return f"{items_prefix(run_id)}{_id(item_id)}/video.mp4"


def sidecar_key(run_id: str, item_id: str) -> str:
    return f"{items_prefix(run_id)}{_id(item_id)}.json"


def plan_key(run_id: str) -> str:
    """The run's work items grouped into shards, read by shard flows on remote workers."""
    return f"{run_prefix(run_id)}plan.json"


def shard_outcome_key(run_id: str, shard: int) -> str:
    """What a remote shard run did: its done and failed items."""
    return f"{run_prefix(run_id)}shards/{int(shard):05d}.json"


def input_key(run_id: str, digest: str) -> str:
    """An image prompt or init image, stored by the sha256 of its bytes so every worker can read it."""
    return f"{run_prefix(run_id)}inputs/{_id(digest)}"


def manifest_key(run_id: str, suffix: str) -> str:
    """The exact manifest a run used, kept beside its outputs."""
    return f"{run_prefix(run_id)}manifest{suffix if suffix in {'.yaml', '.yml', '.json', '.jsonl', '.csv'} else '.txt'}"


def index_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}index.json"


def ranking_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}ranking.json"


def sheet_key(run_id: str, prompt_id: str) -> str:
    return f"{run_prefix(run_id)}sheets/{_id(prompt_id)}.png"


def gallery_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}gallery.html"
