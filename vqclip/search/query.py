"""Search every indexed image by text or by image, with the CLIP model that scored it.

Each scoring model has its own embedding space, so runs scored by different models are searched
separately and their similarities never compared: results come grouped by model. Search is a
brute-force matrix product over the loaded index (benchmarks/search.py: a few milliseconds for
100,000 512-d images on a CPU), exact, with no second structure to keep in step with the segments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from vqclip.engine.score import embed_images, embed_texts
from vqclip.errors import VqclipError
from vqclip.models.clip import ClipModel
from vqclip.models.spec import split_clip_name
from vqclip.search.index import EmbeddingIndex, add_run
from vqclip.storage import ObjectStore

GROUPED_NOTE = "runs scored by different CLIP models are searched separately; similarities compare only within a model"


@dataclass(frozen=True)
class Hit:
    """One image found: where it is, what made it, and its cosine similarity to the query."""

    rank: int
    similarity: float
    score: float | None
    run_id: str
    item_id: str
    prompt_id: str
    prompt: str
    image_key: str
    image_url: str
    filtered: bool = False
    """The zero-shot filter left this image out of its run's outputs (found only with `include_filtered`)."""


@dataclass(frozen=True)
class ModelResults:
    """The best images among those scored by one CLIP model."""

    scorer: str
    model: str
    pretrained: str
    searched: int
    hits: list[Hit]


@dataclass(frozen=True)
class SearchResult:
    """What a search found, grouped by scoring model."""

    query: str
    kind: str
    groups: list[ModelResults]
    note: str = GROUPED_NOTE
    empty_runs: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """Plain JSON for `--json` and the flow's result."""
        return asdict(self)


def search(
    store: ObjectStore,
    load_scorer: Callable[[str], ClipModel],
    text: str | None = None,
    image: Image.Image | None = None,
    runs: list[str] | None = None,
    top: int = 10,
    index: EmbeddingIndex | None = None,
    query_label: str | None = None,
    include_filtered: bool = False,
) -> SearchResult:
    """The `top` images most similar to `text` or `image` per scoring model, over `runs` (None: every indexed run).

    A named run missing from the index is added first (embedding its images if it was scored before
    embeddings were kept). `query_label` names the query in the result (e.g. the image's file). Images
    the zero-shot filter marked are skipped unless `include_filtered`.
    """
    if (text is None) == (image is None):
        raise VqclipError("search needs exactly one query: a text or an image (--image FILE)")
    if top < 1:
        raise VqclipError(f"--top {top}: ask for at least 1 image")
    index = index or EmbeddingIndex(store)
    groups = index.refresh()
    wanted = set(runs) if runs else None
    if wanted:
        missing = sorted(wanted - index.indexed_runs())
        for run_id in missing:
            add_run(store, run_id, load_scorer)
        if missing:
            groups = index.refresh()
    results = []
    for scorer, group in groups.items():
        searched = group.size(wanted, include_filtered)
        if not searched:
            continue
        model = load_scorer(scorer)
        query = embed_texts([text], model)[0] if text is not None else embed_images([image], model)[0]
        hits = [
            Hit(
                rank=rank,
                similarity=round(similarity, 4),
                score=None if np.isnan(segment.scores[row]) else round(float(segment.scores[row]), 4),
                run_id=segment.run_id,
                item_id=str(segment.item_ids[row]),
                prompt_id=str(segment.prompt_ids[row]),
                prompt=str(segment.prompts[row]),
                image_key=str(segment.image_keys[row]),
                image_url=store.url(str(segment.image_keys[row])),
                filtered=bool(segment.filtered[row]),
            )
            for rank, (segment, row, similarity) in enumerate(group.top(query, top, wanted, include_filtered), start=1)
        ]
        results.append(ModelResults(scorer, *split_clip_name(scorer), searched=searched, hits=hits))
    empty_runs = sorted(wanted - index.indexed_runs()) if wanted else []
    label = query_label or (text if text is not None else "(image)")
    return SearchResult(query=label, kind="text" if text is not None else "image",
                        groups=results, empty_runs=empty_runs)
