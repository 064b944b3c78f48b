"""The `vqclip` command line."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vqclip.errors import VqclipError

app = typer.Typer(help="Batch VQGAN+CLIP text-to-image generation.", no_args_is_help=True, add_completion=False)
console = Console()
errors = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@contextmanager
def user_errors():
    """Print a VqclipError as a message (exit 1); with --debug, let the traceback through."""
    try:
        yield
    except VqclipError as exc:
        if _state["debug"]:
            raise
        errors.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _parse_size(size: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{size!r} is not WIDTHxHEIGHT, e.g. 256x256") from None
    return width, height


def step_progress(description: str) -> Progress:
    """A rich progress bar for optimisation steps."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=errors
    )


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Weighted prompt, e.g. 'a red fox:1 | blurry:-0.5'.")],
    preset: Annotated[str, typer.Option(help="Model preset (see `vqclip models`).")] = "default",
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT in pixels.")] = "256x256",
    steps: Annotated[int, typer.Option(min=1)] = 300,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    cutouts: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 0.1,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("vqclip-output/image.png"),
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: CUDA when present).")] = None,
) -> None:
    """Generate one image and write it as a PNG with its settings embedded."""
    from vqclip.generate import generate as run_generation
    from vqclip.images import encode_png
    from vqclip.items import GenerationSettings, WorkItem, models_for_preset
    from vqclip.models.loader import load_models
    from vqclip.prompts import check_token_length, parse_prompt
    from vqclip.records import item_settings

    width, height = _parse_size(size)
    with user_errors():
        check_token_length(parse_prompt(prompt))
        spec = models_for_preset(preset)
        if width % spec.factor or height % spec.factor:
            raise VqclipError(f"--size {size}: width and height must be multiples of {spec.factor} for preset {preset}")
        settings = GenerationSettings(width=width, height=height, steps=steps, cutouts=cutouts, lr=lr)
        item = WorkItem(prompt_id="cli", prompt=prompt, seed=seed, settings=settings, models=spec)
        with console.status(f"loading models ({preset})", spinner="dots"):
            models = load_models(spec, device=device, include_scorer=False)
        with step_progress("steps") as bar:
            task = bar.add_task(f"generating on {models.device}", total=steps)
            (result,) = run_generation([item], models, progress=lambda done, total: bar.update(task, completed=done))
        if not result.ok:
            raise VqclipError(f"generation failed: {result.error}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(encode_png(result.image, item_settings(item)))
    similarity = ", ".join(f"{v:.3f}" for v in result.similarity.values())
    console.print(f"wrote [bold]{out}[/] ({width}x{height}, seed {seed}, guide similarity {similarity})")
    if spec.synthetic:
        console.print(f"[yellow]preset {preset} has untrained random weights: the image is a smoke test, not art[/]")


@app.command("models")
def list_models() -> None:
    """List presets and VQGANs, and which of their weight files are cached."""
    from vqclip.items import models_for_preset
    from vqclip.models.loader import cached_files
    from vqclip.models.presets import PRESETS, VQGANS
    from vqclip.settings import get_settings

    settings = get_settings()
    with user_errors():
        table = Table(title=f"presets (cache: {settings.cache_dir})")
        for column in ("preset", "models", "weights cached"):
            table.add_column(column)
        for preset in PRESETS.values():
            files = cached_files(models_for_preset(preset.name), settings)
            cached = f"{sum(ok for _, ok in files)}/{len(files)}" if files else "none needed"
            guides = ", ".join(g.clip for g in preset.guides)
            table.add_row(preset.name, f"{preset.description}\nvqgan {preset.vqgan}; guide {guides}; scorer {preset.scorer}", cached)
        console.print(table)
        vq = Table(title="VQGANs")
        for column in ("name", "factor", "size", "cached", "description"):
            vq.add_column(column)
        for spec in VQGANS.values():
            cached = "n/a" if spec.checkpoint is None else ("yes" if (settings.vqgan_cache / spec.checkpoint.filename).exists() else "no")
            size = f"~{spec.approx_size_mb} MB" if spec.approx_size_mb else "-"
            vq.add_row(spec.name, f"f{spec.factor}", size, cached, spec.description)
        console.print(vq)


@app.command("fetch-models")
def fetch_models(preset: Annotated[str, typer.Argument(help="Preset whose weights to download.")] = "default") -> None:
    """Download a preset's weights into the cache (for machines that will run offline)."""
    from vqclip.items import models_for_preset
    from vqclip.models.download import ensure_files
    from vqclip.models.loader import required_files
    from vqclip.settings import get_settings

    settings = get_settings()
    with user_errors():
        files = required_files(models_for_preset(preset), settings)
        ensure_files(files, settings)
    for wanted in files:
        console.print(f"cached {wanted.path}")
    console.print(f"preset {preset}: all weights in {settings.cache_dir}")


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    app()


if __name__ == "__main__":
    sys.exit(main())
