"""The search flow: find generated images across runs by text or by a stored image, as a table artifact."""

from __future__ import annotations

from prefect import flow

from tasks.search import find_images, publish_search
from vqclip.config import get_config


@flow(name="search-images", persist_result=False)
def search_images(
    query: str | None = None,
    storage: str | None = None,
    runs: list[str] | None = None,
    top: int = 10,
    image_key: str | None = None,
    include_filtered: bool = False,
) -> dict:
    """The images most like `query` (a text) or the store's image at `image_key`, per scoring model; over `runs` or every indexed run.

    Images the zero-shot filter left out of their runs are skipped unless `include_filtered`.
    """
    storage = storage or get_config().storage
    result = find_images(storage, query, image_key, runs, top, include_filtered)
    publish_search(storage, result)
    return result.to_json()
