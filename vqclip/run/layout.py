"""Object keys of the storage layout. Keys come only from ids the code makes, never from a manifest."""

from __future__ import annotations

import hashlib
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


def zoom_frames_prefix(run_id: str, item_id: str) -> str:
    """Where a zoom video's frames are stored, each as soon as it is made."""
    return f"{items_prefix(run_id)}{_id(item_id)}/zoom/"


def zoom_frame_key(run_id: str, item_id: str, frame: int) -> str:
    """Frame `frame` (0-based) of an item's zoom video."""
    return f"{zoom_frames_prefix(run_id, item_id)}{int(frame):05d}.png"


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


def progress_prefix(run_id: str) -> str:
    """Where the run's shards record how far they are (vqclip.run.progress)."""
    return f"{run_prefix(run_id)}progress/"


def progress_key(run_id: str, shard: int) -> str:
    """Shard `shard`'s steps done and images stored, rewritten while it runs."""
    return f"{progress_prefix(run_id)}{int(shard):05d}.json"


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


def sheets_prefix(run_id: str) -> str:
    """Where the run's contact sheets are, one per prompt."""
    return f"{run_prefix(run_id)}sheets/"


def sheet_key(run_id: str, prompt_id: str) -> str:
    return f"{sheets_prefix(run_id)}{_id(prompt_id)}.png"


def filter_report_key(run_id: str) -> str:
    """The zero-shot filter that labelled the run's images and the images it filtered out, as JSON."""
    return f"{run_prefix(run_id)}filter.json"


def filter_markdown_key(run_id: str) -> str:
    """The filter report for people: the filtered images with their labels and probabilities."""
    return f"{run_prefix(run_id)}filter.md"


def gallery_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}gallery.html"


INDEX = "index/"
"""The store-wide embedding index: one folder per scoring model, one segment per run."""


def scorer_slug(scorer: str) -> str:
    """A key segment naming a scoring CLIP ("model/pretrained"): readable, and unique by a hash of the full name."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "-", scorer).strip("-")[:40] or "scorer"
    return f"{readable}-{hashlib.sha256(scorer.encode()).hexdigest()[:10]}"


def embeddings_key(run_id: str, scorer: str) -> str:
    """The image embeddings of a run's items scored by `scorer`, written with their scores."""
    return f"{run_prefix(run_id)}embeddings/{scorer_slug(scorer)}.npz"


def index_run_prefix(scorer: str, run_id: str) -> str:
    """Where a run's index segments for `scorer` live (the newest one counts)."""
    return f"{INDEX}{scorer_slug(scorer)}/runs/{check_run_id(run_id)}/"


def index_segment_key(scorer: str, run_id: str, version: str) -> str:
    """One immutable version of a run's index segment; versions sort oldest first."""
    return f"{index_run_prefix(scorer, run_id)}{_id(version)}.npz"
