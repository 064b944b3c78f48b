"""Image embeddings kept from scoring: one `.npz` per run and scoring model, written before the scores' sidecars.

The file holds the scorer's name ("model/pretrained"), its model and pretrained tag, the item ids and
one L2-normalised float16 row per item (512-d: 1 KiB an image). Scoring writes it before the
sidecars that carry the scores, so a scored sidecar implies its embedding is stored; runs scored
before embeddings were kept get theirs from `embed_missing`, which saves after every batch and so
resumes where it stopped.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vqclip.engine.score import embed_images
from vqclip.errors import ObjectNotFound, VqclipError
from vqclip.media.png import decode_image
from vqclip.models.clip import ClipModel
from vqclip.models.spec import split_clip_name
from vqclip.run import layout
from vqclip.run.records import ItemRecord
from vqclip.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunEmbeddings:
    """The embeddings of a run's images scored by one CLIP model, one row per item id."""

    scorer: str
    item_ids: tuple[str, ...]
    vectors: np.ndarray

    @classmethod
    def empty(cls, scorer: str, dim: int = 0) -> RunEmbeddings:
        """No embeddings yet."""
        return cls(scorer, (), np.zeros((0, dim), dtype=np.float16))

    def with_rows(self, item_ids: list[str], vectors: np.ndarray) -> RunEmbeddings:
        """These embeddings with `item_ids`' rows added or replaced."""
        replaced = set(item_ids)
        keep = [i for i, item_id in enumerate(self.item_ids) if item_id not in replaced]
        old = self.vectors[keep] if len(self.vectors) else np.zeros((0, vectors.shape[1]), dtype=np.float16)
        return RunEmbeddings(
            self.scorer,
            tuple(self.item_ids[i] for i in keep) + tuple(item_ids),
            np.concatenate([old, vectors.astype(np.float16)]),
        )

    def rows(self) -> dict[str, int]:
        """Row number of each item id."""
        return {item_id: row for row, item_id in enumerate(self.item_ids)}


def save_embeddings(store: ObjectStore, run_id: str, embeddings: RunEmbeddings) -> None:
    """Write (atomically, through the store) a run's embeddings for one scorer."""
    model, pretrained = split_clip_name(embeddings.scorer)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        scorer=np.array(embeddings.scorer),
        model=np.array(model),
        pretrained=np.array(pretrained),
        item_ids=np.array(embeddings.item_ids, dtype=str),
        vectors=embeddings.vectors.astype(np.float16),
    )
    store.put_bytes(layout.embeddings_key(run_id, embeddings.scorer), buffer.getvalue(), content_type="application/octet-stream")


def load_embeddings(store: ObjectStore, run_id: str, scorer: str) -> RunEmbeddings:
    """A run's embeddings for `scorer`, empty when none are stored yet."""
    key = layout.embeddings_key(run_id, scorer)
    try:
        data = store.get_bytes(key)
    except ObjectNotFound:
        return RunEmbeddings.empty(scorer)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return RunEmbeddings(str(npz["scorer"]), tuple(npz["item_ids"].tolist()), npz["vectors"])
    except (ValueError, KeyError, OSError) as exc:
        raise VqclipError(f"{store.url(key)} is not a readable embeddings file ({exc}); delete it and run `vqclip embed {run_id}`") from None


def embed_missing(
    store: ObjectStore,
    run_id: str,
    records: dict[str, ItemRecord],
    load_scorer: Callable[[str], ClipModel],
    batch_size: int = 32,
) -> dict[str, RunEmbeddings]:
    """Every scorer's embeddings of the run's scored images, encoding (and saving, batch by batch) those not stored yet."""
    by_scorer: dict[str, list[ItemRecord]] = defaultdict(list)
    for record in records.values():
        if record.scorer is not None:
            by_scorer[record.scorer].append(record)
    result = {}
    for scorer, group in sorted(by_scorer.items()):
        embeddings = load_embeddings(store, run_id, scorer)
        stored = embeddings.rows()
        missing = [r for r in group if r.item_id not in stored]
        model = load_scorer(scorer) if missing else None
        for start in range(0, len(missing), batch_size):
            batch = missing[start : start + batch_size]
            vectors = embed_images([decode_image(store.get_bytes(r.image_key)) for r in batch], model, batch_size)
            embeddings = embeddings.with_rows([r.item_id for r in batch], vectors)
            save_embeddings(store, run_id, embeddings)
        if missing:
            log.info("run %s: embedded %d images scored by %s that had none", run_id, len(missing), scorer)
        result[scorer] = embeddings
    return result
