"""The store-wide embedding index: per scoring model, one immutable segment per run under `index/`.

`index/<scorer-slug>/runs/<run-id>/<version>.npz` holds a run's rows for one scoring CLIP: item and
prompt ids, prompt text, score, image key and the float16 embedding. Adding a run writes a new
version and then deletes the older ones of that run, so re-adding replaces its rows, and runs that
finish at the same time write different keys and never lose each other's rows (no lock, no shared
manifest to race on). A reader lists `index/`, takes the newest version of each run and caches
segments by key (versions are never rewritten), so a refresh reads only what changed.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from vqclip.errors import ObjectNotFound, VqclipError
from vqclip.models.clip import ClipModel
from vqclip.run import layout
from vqclip.run.embeddings import RunEmbeddings, embed_missing
from vqclip.run.records import ItemRecord
from vqclip.run.state import RunStore
from vqclip.storage import ObjectStore

_TEXT_COLUMNS = ("item_ids", "prompt_ids", "prompts", "image_keys")


@dataclass(frozen=True)
class Segment:
    """One run's rows in the index for one scoring model (string columns as numpy arrays); `scores` is NaN where an image has none."""

    scorer: str
    run_id: str
    item_ids: np.ndarray
    prompt_ids: np.ndarray
    prompts: np.ndarray
    image_keys: np.ndarray
    scores: np.ndarray
    vectors: np.ndarray
    filtered: np.ndarray
    """True where the zero-shot filter left the image out of the run's outputs (searches skip it unless asked)."""

    def to_bytes(self) -> bytes:
        """The segment as an `.npz` file."""
        buffer = io.BytesIO()
        columns = {name: np.asarray(getattr(self, name), dtype=str) for name in _TEXT_COLUMNS}
        np.savez(buffer, scorer=np.array(self.scorer), run_id=np.array(self.run_id), scores=self.scores,
                 vectors=self.vectors.astype(np.float16), filtered=np.asarray(self.filtered, dtype=bool), **columns)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Segment:
        """A segment read back from `to_bytes`."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return cls(
                scorer=str(npz["scorer"]),
                run_id=str(npz["run_id"]),
                scores=npz["scores"],
                vectors=npz["vectors"],
                # Segments written before the filter existed have no column: nothing in them is filtered.
                filtered=npz["filtered"] if "filtered" in npz.files else np.zeros(len(npz["item_ids"]), dtype=bool),
                **{name: npz[name] for name in _TEXT_COLUMNS},
            )


def run_segment(run_id: str, records: list[ItemRecord], embeddings: RunEmbeddings) -> Segment:
    """The index rows of `records` (all scored by `embeddings.scorer`), in item id order."""
    rows = embeddings.rows()
    records = sorted((r for r in records if r.item_id in rows), key=lambda r: r.item_id)
    dim = embeddings.vectors.shape[1] if embeddings.vectors.ndim == 2 else 0
    return Segment(
        scorer=embeddings.scorer,
        run_id=run_id,
        item_ids=np.array([r.item_id for r in records], dtype=str),
        prompt_ids=np.array([r.prompt_id for r in records], dtype=str),
        prompts=np.array([r.prompt for r in records], dtype=str),
        image_keys=np.array([r.image_key for r in records], dtype=str),
        scores=np.array([np.nan if r.score is None else r.score for r in records], dtype=np.float32),
        vectors=embeddings.vectors[[rows[r.item_id] for r in records]].reshape(len(records), dim),
        filtered=np.array([r.filtered for r in records], dtype=bool),
    )


def write_segment(store: ObjectStore, segment: Segment) -> str:
    """Store `segment` as the run's newest version for its scorer, then delete the older versions; return its key."""
    data = segment.to_bytes()
    version = f"{time.time_ns():020d}-{hashlib.sha256(data).hexdigest()[:12]}"
    key = layout.index_segment_key(segment.scorer, segment.run_id, version)
    store.put_bytes(key, data, content_type="application/octet-stream")
    # Only older versions: two writers of the same run never delete each other's newest.
    for old in store.list(layout.index_run_prefix(segment.scorer, segment.run_id)):
        if old < key:
            store.delete(old)
    return key


def add_run(store: ObjectStore, run_id: str, load_scorer: Callable[[str], ClipModel], batch_size: int = 32) -> list[Segment]:
    """Add or replace a run's rows in the index (embedding, resumably, any scored image that has no embedding yet)."""
    records = RunStore(store, run_id).done_records()
    if not records and not store.list(layout.run_prefix(run_id)):
        raise VqclipError(f"no run {run_id!r} in {store.url()} (nothing under {layout.run_prefix(run_id)}); check the run id and --storage")
    embeddings = embed_missing(store, run_id, records, load_scorer, batch_size)
    by_scorer: dict[str, list[ItemRecord]] = defaultdict(list)
    for record in records.values():
        if record.scorer is not None:
            by_scorer[record.scorer].append(record)
    segments = [run_segment(run_id, by_scorer[scorer], embeddings[scorer]) for scorer in sorted(by_scorer)]
    for segment in segments:
        write_segment(store, segment)
    # Rows of this run under a scorer that no longer scores any of its images (the run was rescored).
    current = {layout.index_run_prefix(s.scorer, run_id) for s in segments}
    for key in store.list(layout.INDEX):
        prefix = key.rsplit("/", 1)[0] + "/"
        if key.split("/")[3:4] == [run_id] and prefix not in current:
            store.delete(key)
    return segments


COMPACT_AT = 32
"""Once this many runs of one model are loaded one by one, their rows are stacked into one block."""


@dataclass(frozen=True)
class Block:
    """Segments of one model stacked into one matrix; `bounds[i]` is the row where segment i starts (the last, the total)."""

    keys: tuple[str, ...]
    segments: tuple[Segment, ...]
    vectors: np.ndarray
    bounds: np.ndarray
    filtered: np.ndarray

    @classmethod
    def of(cls, loaded: list[tuple[str, Segment]]) -> Block:
        """The block of these (key, segment) pairs; a single segment's vectors are used as they are."""
        segments = tuple(segment for _, segment in loaded)
        vectors = segments[0].vectors if len(segments) == 1 else np.concatenate([s.vectors for s in segments])
        filtered = np.concatenate([s.filtered for s in segments])
        return cls(tuple(key for key, _ in loaded), segments, vectors, np.cumsum([0] + [len(s.item_ids) for s in segments]), filtered)


@dataclass(frozen=True)
class ModelGroup:
    """Every indexed image scored by one CLIP model, in blocks of stacked run segments (float32 vectors).

    A reader that picks up a new run reads only its segment and queries it as a block of its own
    until COMPACT_AT such blocks are stacked together, so an update costs about the new rows and a
    query over many small runs still makes few matrix products.
    """

    scorer: str
    blocks: tuple[Block, ...]

    @property
    def segments(self) -> tuple[Segment, ...]:
        """Every run's segment."""
        return tuple(segment for block in self.blocks for segment in block.segments)

    def size(self, runs: set[str] | None = None, include_filtered: bool = False) -> int:
        """How many images these runs (None: all) hold, filtered ones only with `include_filtered`."""
        return sum(
            len(s.item_ids) - (0 if include_filtered else int(s.filtered.sum()))
            for s in self.segments
            if runs is None or s.run_id in runs
        )

    def top(
        self, query: np.ndarray, top: int, runs: set[str] | None = None, include_filtered: bool = False
    ) -> list[tuple[Segment, int, float]]:
        """The `top` rows most similar to the normalised `query`: (segment, row, cosine), best first; ties by run, then row.

        Rows the zero-shot filter marked are skipped unless `include_filtered`.
        """
        query = query.astype(np.float32)
        found: list[tuple[float, str, int, Segment]] = []
        for block in self.blocks:
            parts = [(block.vectors, block.segments, block.bounds, block.filtered)] if runs is None else [
                (segment.vectors, (segment,), np.array([0, len(segment.item_ids)]), segment.filtered)
                for segment in block.segments
                if segment.run_id in runs
            ]
            for vectors, segments, bounds, filtered in parts:
                # einsum, not BLAS: OpenBLAS's threads cost more than they save on these products on a busy machine (benchmarks/search.py)
                similarities = np.einsum("ij,j->i", vectors, query)
                hidden = 0 if include_filtered else int(filtered.sum())
                if hidden:
                    similarities = np.where(filtered, -np.inf, similarities)
                count = min(top, len(similarities) - hidden)
                best = np.argpartition(-similarities, count - 1)[:count] if count else []
                for row in best:
                    at = int(np.searchsorted(bounds, row, side="right")) - 1
                    found.append((float(similarities[row]), segments[at].run_id, int(row - bounds[at]), segments[at]))
        found.sort(key=lambda hit: (-hit[0], hit[1], hit[2]))
        return [(segment, row, similarity) for similarity, _, row, segment in found[:top]]


class EmbeddingIndex:
    """The index of one store as loaded by a reader; `refresh` picks up runs added since."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._segments: dict[str, Segment] = {}
        self._groups: dict[str, ModelGroup] = {}

    def refresh(self) -> dict[str, ModelGroup]:
        """Every scorer's rows, reading only the segment versions not loaded before."""
        newest: dict[str, str] = {}
        for key in self.store.list(layout.INDEX):
            if key.endswith(".npz"):
                run_prefix = key.rsplit("/", 1)[0]
                newest[run_prefix] = max(newest.get(run_prefix, ""), key)
        wanted = set(newest.values())
        if wanted == set(self._segments):
            return self._groups
        segments = {key: seg for key, seg in self._segments.items() if key in wanted}
        for key in sorted(wanted - set(segments)):
            try:
                segment = Segment.from_bytes(self.store.get_bytes(key))
            except ObjectNotFound:
                continue  # replaced by a newer version since the listing; the next refresh reads that
            except (ValueError, KeyError, OSError) as exc:
                raise VqclipError(f"{self.store.url(key)} is not a readable index segment ({exc}); delete it and re-add its run with `vqclip embed`") from None
            segments[key] = replace(segment, vectors=segment.vectors.astype(np.float32))
        self._segments = segments
        self._groups = self._regroup({key: seg for key, seg in segments.items() if len(seg.item_ids)})
        return self._groups

    def _regroup(self, segments: dict[str, Segment]) -> dict[str, ModelGroup]:
        """Stacked blocks whose segments are all still current stay as they are; the other segments are stacked anew once there are enough."""
        blocks: dict[str, list[Block]] = defaultdict(list)
        for group in self._groups.values():
            for block in group.blocks:
                if len(block.keys) > 1 and all(key in segments for key in block.keys):
                    blocks[group.scorer].append(block)
        stacked = {key for scorer_blocks in blocks.values() for block in scorer_blocks for key in block.keys}
        loose: dict[str, list[tuple[str, Segment]]] = defaultdict(list)
        for key in sorted(set(segments) - stacked):
            loose[segments[key].scorer].append((key, segments[key]))
        for scorer, pairs in loose.items():
            blocks[scorer] += [Block.of(pairs)] if len(pairs) >= COMPACT_AT else [Block.of([pair]) for pair in pairs]
        return {scorer: ModelGroup(scorer, tuple(blocks[scorer])) for scorer in sorted(blocks)}

    def indexed_runs(self) -> set[str]:
        """Run ids with rows in the index (as of the last refresh)."""
        return {segment.run_id for segment in self._segments.values()}
