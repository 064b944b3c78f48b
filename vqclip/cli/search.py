"""`vqclip search` and `vqclip embed`: find generated images across runs by text or by image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from vqclip.cli.output import console, user_errors
from vqclip.errors import VqclipError
from vqclip.storage import open_store

_STORAGE_HELP = "The store to search: a folder, file://..., or s3://bucket/prefix (default: VQCLIP_STORAGE)."


def search(
    query: Annotated[Optional[str], typer.Argument(help="What to look for, in words (leave out with --image).")] = None,
    runs: Annotated[Optional[list[str]], typer.Option("--runs", help="Search only this run (repeat for more); runs not indexed yet are added first.")] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="Search every indexed run (the default without --runs).")] = False,
    image: Annotated[Optional[Path], typer.Option("--image", help="Find images like this image file instead of a text.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="How many images to show per scoring model.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    storage: Annotated[Optional[str], typer.Option(help=_STORAGE_HELP)] = None,
    include_filtered: Annotated[bool, typer.Option("--include-filtered", help="Also show images the zero-shot filter left out of their runs' outputs.")] = False,
) -> None:
    """The images most like a text or an image, from every run scored by the same CLIP model, grouped by model."""
    from vqclip.config import get_config
    from vqclip.media.png import decode_image
    from vqclip.models.loader import load_scorer
    from vqclip.search.query import search as run_search

    with user_errors():
        if runs and all_runs:
            raise VqclipError("give either --runs RUN ... or --all, not both")
        picture = None
        if image is not None:
            if not image.is_file():
                raise VqclipError(f"--image {image}: no such file")
            try:
                picture = decode_image(image.read_bytes())
            except (OSError, ValueError) as exc:
                raise VqclipError(f"--image {image}: not an image file Pillow can read ({exc}); give a PNG, JPEG or WebP") from None
        store = open_store(storage or get_config().storage)
        result = run_search(store, load_scorer, text=query, image=picture, runs=runs or None, top=top,
                            query_label=str(image) if image is not None else None, include_filtered=include_filtered)
    if as_json:
        console.print_json(json.dumps(result.to_json()))
        return
    console.print(f"{result.kind} query {result.query!r} in {store.url()}: {result.note}", highlight=False, soft_wrap=True)
    if not result.groups:
        console.print("no indexed images to search; add runs with `vqclip embed RUN ...` (runs index themselves when they finish)")
    for group in result.groups:
        table = Table(title=f"scored by {group.model} ({group.pretrained}): best {len(group.hits)} of {group.searched} images")
        for column in ("rank", "similarity", "score"):
            table.add_column(column)
        for column in ("run", "prompt", "image"):
            table.add_column(column, overflow="fold")
        for hit in group.hits:
            score = "" if hit.score is None else f"{hit.score:.2f}"
            location = f"{hit.image_url} (filtered)" if hit.filtered else hit.image_url
            table.add_row(str(hit.rank), f"{hit.similarity:.4f}", score, hit.run_id, f"{hit.prompt_id}: {hit.prompt}", location)
        console.print(table)
    if result.empty_runs:
        console.print(f"runs with no scored images to search: {', '.join(result.empty_runs)}", highlight=False)


def embed(
    runs: Annotated[Optional[list[str]], typer.Argument(help="Run ids to embed and index.")] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="Every run in the store.")] = False,
    storage: Annotated[Optional[str], typer.Option(help=_STORAGE_HELP)] = None,
) -> None:
    """Embed the scored images of runs that have no embeddings yet (resumable) and add the runs to the search index."""
    from vqclip.config import get_config
    from vqclip.models.loader import load_scorer
    from vqclip.run import layout
    from vqclip.search.index import add_run

    with user_errors():
        if bool(runs) == all_runs:
            raise VqclipError("name the runs to embed (vqclip embed RUN ...) or give --all")
        store = open_store(storage or get_config().storage)
        if all_runs:
            runs = sorted({key.split("/")[1] for key in store.list("runs/") if key.endswith("/index.json") and key.count("/") == 2})
            if not runs:
                console.print(f"no runs in {store.url()}", highlight=False)
        for run_id in runs:
            segments = add_run(store, run_id, load_scorer)
            models = ", ".join(s.scorer for s in segments) or "no scored images"
            console.print(f"{run_id}: {sum(len(s.item_ids) for s in segments)} images indexed ({models}) under {store.url(layout.INDEX)}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `search` and `embed` to the `vqclip` command line."""
    app.command("search")(search)
    app.command("embed")(embed)
