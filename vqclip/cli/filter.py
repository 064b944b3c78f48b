"""`vqclip filter`: label a finished run's images by CLIP zero-shot classification again, with no regeneration."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from vqclip.cli.output import console, user_errors
from vqclip.errors import VqclipError
from vqclip.run import layout
from vqclip.storage import open_store


def filter_run(
    run_id: Annotated[str, typer.Argument(help="The run to filter.")],
    labels: Annotated[Optional[list[str]], typer.Option("--labels", help="A label an image may get (repeat: at least two).")] = None,
    reject: Annotated[Optional[list[str]], typer.Option("--reject", help="A label that filters an image out (repeat for more; each one of --labels).")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Also filter images whose reject labels' summed probability is over this (0 to 1).")] = None,
    templates: Annotated[Optional[list[str]], typer.Option("--template", help="A prompt template with {} for the label (repeat; default: open_clip's short ImageNet set).")] = None,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help="Take the filter from this manifest's `filter:` section instead.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the filter: every image is published again.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the filter report as JSON.")] = False,
    storage: Annotated[Optional[str], typer.Option(help="The run's store: a folder, file://..., or s3://bucket/prefix (default: VQCLIP_STORAGE).")] = None,
) -> None:
    """Label a finished run's images by zero-shot classification and leave the rejected ones out of its ranking, sheets, gallery and search.

    Uses the embeddings kept by scoring: nothing is regenerated or re-encoded. Running it again is safe;
    a run still generating is refused.
    """
    from vqclip.config import get_config
    from vqclip.filter_spec import parse_filter
    from vqclip.manifest import load_manifest_file
    from vqclip.models.loader import load_scorer
    from vqclip.search.refilter import refilter_run

    with user_errors():
        given = [name for name, used in (("--labels", labels), ("--manifest", manifest), ("--clear", clear)) if used]
        if len(given) != 1:
            raise VqclipError("give the filter as --labels A --labels B --reject B, or --manifest FILE, or --clear (one of them)")
        if not labels and (reject or threshold is not None or templates):
            raise VqclipError("--reject, --threshold and --template go with --labels; a manifest's filter: section has its own")
        spec = None
        if labels:
            fields = {"labels": labels, "reject": reject or [], "threshold": threshold, "templates": templates}
            spec = parse_filter({key: value for key, value in fields.items() if value is not None}, "vqclip filter")
        elif manifest is not None:
            spec = load_manifest_file(manifest).filter
            if spec is None:
                raise VqclipError(f"{manifest}: no `filter:` section (and no VQCLIP_FILTER default); add one, or give --labels")
        config = get_config()
        store = open_store(storage or config.storage)
        report, ranking = refilter_run(store, run_id, spec, load_scorer, logging.getLogger("vqclip.filter"), busy_within=config.zombie_after_s)
    if as_json:
        console.print_json(json.dumps(report.model_dump(mode="json") if report else None))
        return
    if report is None:
        console.print(f"{run_id}: filter removed; every scored image is ranked again", highlight=False)
        return
    console.print(
        f"{run_id}: {len(report.filtered)} of {report.labelled} images filtered out; "
        f"{sum(len(p.images) for p in ranking.prompts)} ranked. Report: {store.url(layout.filter_markdown_key(run_id))}",
        highlight=False,
        soft_wrap=True,
    )
    for image in report.filtered:
        console.print(f"  {image.item_id} ({image.prompt_id}): {image.label} {image.probability:.3f}, reject {image.reject_probability:.3f}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `filter` to the `vqclip` command line."""
    app.command("filter")(filter_run)
