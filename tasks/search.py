"""Search tasks: find images across runs by text or by a stored image; show what was found as a table artifact."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from tasks.reporting import ROW_THUMB, _link, _Thumbnails
from tasks.retry import retried
from vqclip.media.png import decode_image
from vqclip.models.loader import load_scorer
from vqclip.run.report import markdown_text
from vqclip.search.query import SearchResult, search
from vqclip.storage import open_store


@task(**retried("find-images"))
def find_images(
    storage: str, query: str | None, image_key: str | None, runs: list[str] | None, top: int, include_filtered: bool = False
) -> SearchResult:
    """The `top` images per scoring model most like the text `query` or the stored image at `image_key`."""
    store = open_store(storage)
    image = decode_image(store.get_bytes(image_key)) if image_key else None
    return search(store, load_scorer, text=query, image=image, runs=runs, top=top, query_label=image_key, include_filtered=include_filtered)


@task(**retried("publish-search"))
def publish_search(storage: str, result: SearchResult) -> None:
    """A table artifact of the images found: thumbnail, model, similarity, score, run, prompt and the image's location."""
    store = open_store(storage)
    thumbnails = _Thumbnails(store, ROW_THUMB)
    rows = [
        {
            "thumbnail": thumbnails.markdown(hit.image_key, f"{hit.run_id} {hit.prompt_id}"),
            "scorer": markdown_text(group.scorer),
            "rank": hit.rank,
            "similarity": hit.similarity,
            "score": hit.score,
            "run": markdown_text(hit.run_id),
            "prompt": markdown_text(f"{hit.prompt_id}: {hit.prompt}"),
            "image": _link(store, hit.image_key, "image"),
        }
        for group in result.groups
        for hit in group.hits
    ]
    models = ", ".join(g.scorer for g in result.groups) or "none indexed"
    create_table_artifact(rows, key="search-images", description=f"{result.kind} search {result.query!r} (models: {models}); {result.note}")
