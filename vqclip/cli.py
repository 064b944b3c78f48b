"""The `vqclip` command line."""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vqclip import shutdown
from vqclip.cli_output import console, errors, options, user_errors
from vqclip.cli_stack import register as register_stack_commands
from vqclip.errors import VqclipError
from vqclip.storage import open_store

if TYPE_CHECKING:
    from flows.api_server import TemporaryApiServer

app = typer.Typer(help="Batch VQGAN+CLIP text-to-image generation.", no_args_is_help=True, add_completion=False)


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False) -> None:
    options["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


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
    change_every: Annotated[int, typer.Option(min=0, help="Steps each prompt of an 'a ^ b' schedule guides.")] = 0,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("vqclip-output/image.png"),
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: CUDA when present).")] = None,
) -> None:
    """Generate one image and write it as a PNG with its settings embedded."""
    import tempfile

    from vqclip.items import GenerationSettings, WorkItem, models_for_preset
    from vqclip.models.loader import load_models
    from vqclip.prompts import parse_schedule
    from vqclip.runs import load_record
    from vqclip.settings import get_settings
    from vqclip.shard import run_shard
    from vqclip.storage import LocalStore

    width, height = _parse_size(size)
    with user_errors():
        if len(parse_schedule(prompt, check_tokens=True)) > 1 and not change_every:
            raise VqclipError("the prompt is a schedule separated by '^'; give --change-every, the steps each prompt guides")
        spec = models_for_preset(preset)
        if width % spec.factor or height % spec.factor:
            raise VqclipError(f"--size {size}: width and height must be multiples of {spec.factor} for preset {preset}")
        settings = GenerationSettings(width=width, height=height, steps=steps, cutouts=cutouts, lr=lr, change_every=change_every)
        item = WorkItem(prompt_id="cli", prompt=prompt, seed=seed, settings=settings, models=spec)
        with console.status(f"loading models ({preset})", spinner="dots"):
            models = load_models(spec, device=device, include_scorer=False)
        # A one-item shard of a throwaway run: the same recovery rules (out-of-memory fallback, NaN
        # restart) and the same PNG metadata as a batch run, for the cost of one file copy.
        with tempfile.TemporaryDirectory(prefix="vqclip-generate-") as folder, step_progress("steps") as bar:
            store = LocalStore(folder)
            task = bar.add_task(f"generating on {models.device}", total=steps)
            outcome = run_shard(
                [item], "generate", store, lambda _: models, get_settings(), logging.getLogger(__name__),
                progress=lambda done, total: bar.update(task, completed=done),
            )
            if outcome.failed:
                raise VqclipError(f"generation failed: {outcome.failed[item.item_id]}")
            record = load_record(store, "generate", item.item_id)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(store.get_bytes(record.image_key))
    similarity = ", ".join(f"{v:.3f}" for v in record.guide_similarity.values())
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
def fetch_models(
    names: Annotated[
        Optional[list[str]],
        typer.Argument(help="Presets, VQGANs (e.g. imagenet_f16_1024) or open_clip MODEL/PRETRAINED names; default: the default preset."),
    ] = None,
) -> None:
    """Download the weights of presets or single models into the cache (for machines that will run offline)."""
    from vqclip.models.download import ensure_files
    from vqclip.models.loader import named_files
    from vqclip.settings import get_settings

    settings = get_settings()
    names = names or ["default"]
    with user_errors():
        files = list(dict.fromkeys(wanted for name in names for wanted in named_files(name, settings)))
        ensure_files(files, settings)
    for wanted in files:
        console.print(f"cached {wanted.path}")
    console.print(f"{', '.join(names)}: all weights in {settings.cache_dir}")


def _load_plan(manifest: str, storage: str, preset: Optional[str]):
    """Read and fully validate a manifest; return its bytes, name, parsed form and work items."""
    from vqclip.manifest import load_manifest, store_reader
    from vqclip.runs import read_manifest_source

    data, name, base_dir = read_manifest_source(manifest)
    parsed = load_manifest(data, name, base_dir=base_dir, preset=preset)
    store = open_store(storage) if any(s.startswith("store:") for s in parsed.sources()) else None
    items = parsed.plan(read_source=store_reader(store) if store else None)
    return data, name, parsed, items


@app.command()
def validate(
    manifest: Annotated[str, typer.Argument(help="Manifest path or s3://bucket/key.")],
    preset: Annotated[Optional[str], typer.Option(help="Override the manifest's preset.")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Store that `store:` image paths refer to.")] = None,
) -> None:
    """Check a manifest and print the plan it expands to (exit 1 on errors)."""
    from vqclip.manifest import describe_plan
    from vqclip.settings import get_settings

    with user_errors():
        _, name, parsed, items = _load_plan(manifest, storage or get_settings().storage, preset)
        plan = describe_plan(items, parsed.batch_size)
    table = Table(title=f"{name}: {plan['images']} images, {plan['shards']} shards, {plan['steps']} optimisation steps")
    for column in ("prompt", "images", "size", "steps", "models"):
        table.add_column(column)
    for row in plan["prompts"]:
        table.add_row(row["prompt_id"] + ": " + row["prompt"], str(row["images"]), row["size"], str(row["steps"]), row["models"])
    console.print(table)


def _summary_table(storage: str, run_id: str) -> Table:
    from vqclip import layout
    from vqclip.records import Ranking
    from vqclip.runs import load_index

    store = open_store(storage)
    index = load_index(store, run_id)
    try:
        ranking = Ranking.model_validate_json(store.get_bytes(layout.ranking_key(run_id)))
    except VqclipError:
        ranking = None
    counts = ", ".join(f"{n} {state}" for state, n in index.counts.items() if n)
    table = Table(title=f"run {run_id}: {counts}")
    for column in ("prompt", "best image", "best score", "images"):
        table.add_column(column)
    for prompt in ranking.prompts if ranking else []:
        best = prompt.images[0]
        table.add_row(f"{prompt.prompt_id}: {prompt.prompt}", store.url(best.image_key), f"{best.score:.2f}", str(len(prompt.images)))
    return table


@app.command()
def run(
    manifest: Annotated[str, typer.Argument(help="Manifest path or s3://bucket/key.")],
    storage: Annotated[Optional[str], typer.Option(help="Output: a folder, file://..., or s3://bucket/prefix.")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Resume (or name) this run.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Override the manifest's preset.")] = None,
) -> None:
    """Run a manifest end to end in this process (Prefect's ephemeral API; no server needed)."""
    if not options["debug"]:
        # Failures reach the user as one message below; Prefect's own tracebacks are for --debug.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    from flows.api_server import temporary_api_server

    # SIGTERM and SIGINT only raise the stop flag: the run ends at its next step, its finished images
    # stored and its state recorded, before the temporary server (in a session of its own) stops.
    # Without PREFECT_API_URL, a temporary API server boots while torch and the models load.
    with shutdown.stop_on_signals(), temporary_api_server() as server:
        _run(manifest, storage, run_id, preset, server)


def _run(manifest: str, storage: Optional[str], run_id: Optional[str], preset: Optional[str], server: Optional[TemporaryApiServer]) -> None:
    from vqclip import layout
    from vqclip.models.download import ensure_files
    from vqclip.models.loader import preload_models, required_files
    from vqclip.resume import resume_command
    from vqclip.runs import new_run_id
    from vqclip.settings import get_settings

    settings = get_settings()
    storage = storage or settings.storage
    with user_errors():
        data, name, parsed, items = _load_plan(manifest, storage, preset)
        run_id = layout.check_run_id(run_id or new_run_id(name, data))
        store = open_store(storage)
        with console.status("checking model weights", spinner="dots"):
            for spec in {item.models for item in items}:
                ensure_files(required_files(spec, settings), settings)
    resume = resume_command(manifest, storage, run_id)
    _exit_if_stopped(run_id, resume)
    console.print(f"run [bold]{run_id}[/]: {len(items)} images into {store.url(layout.run_prefix(run_id))}")
    # Models build on a thread while the API server finishes booting; a resumed run preloads only
    # for items without a sidecar yet.
    with user_errors():
        stored = set(store.list(layout.items_prefix(run_id)))
    preload = preload_models(list(dict.fromkeys(i.models for i in items if layout.sidecar_key(run_id, i.item_id) not in stored)))

    from prefect.exceptions import TerminationSignal

    from flows.api_server import prefect_api
    from flows.batch import batch_generate
    from vqclip.retry import is_permanent

    try:
        with user_errors(), prefect_api(server), Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=errors) as bar:
            task = bar.add_task("images", total=len(items))
            with _ProgressWatcher(store, run_id, lambda done: bar.update(task, completed=done)):
                state = batch_generate(manifest=manifest, storage=storage, run_id=run_id, preset=preset, return_state=True)
    except TerminationSignal as exc:
        # Prefect's SIGTERM bridge, not the stop flag, held the signal (planning or scoring, outside
        # the step loop): the flow run is recorded Crashed, which a resume picks up like any other.
        shutdown.request(exc.signal)
    finally:
        preload.join()  # never leave a thread building models while the interpreter shuts down
    _exit_if_stopped(run_id, resume)
    if store.exists(layout.index_key(run_id)):
        with user_errors():
            console.print(_summary_table(storage, run_id))
    if not state.is_completed():
        # Bad input, missing weights or refused credentials fail the same way again: no resume hint.
        permanent = is_permanent(state.result(raise_on_failure=False))
        hint = "" if permanent or resume in (state.message or "") else f" Resume with: {resume}"
        errors.print(f"[bold red]error:[/] run {run_id} did not finish: {state.message}{hint}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"all {len(items)} images done; gallery: {store.url(layout.gallery_key(run_id))}")


def _exit_if_stopped(run_id: str, resume: str) -> None:
    """After SIGTERM or SIGINT, end with one line naming the resume command and the signal's exit status."""
    if shutdown.requested():
        name = signal.Signals(shutdown.first_signal()).name
        errors.print(
            f"[bold yellow]stopped:[/] run {run_id} stopped by {name}; its finished images are stored. Resume with: {resume}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(shutdown.exit_status())


class _ProgressWatcher:
    """Counts committed sidecars in the store from a background thread, for the progress bar."""

    def __init__(self, store, run_id: str, report) -> None:
        self._store, self._run_id, self._report = store, run_id, report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _count(self) -> None:
        from vqclip import layout

        try:
            keys = self._store.list(layout.items_prefix(self._run_id))
        except VqclipError:
            return
        self._report(sum(key.endswith(".json") for key in keys))

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            self._count()

    def __enter__(self) -> "_ProgressWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._count()


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="The run to summarise.")],
    storage: Annotated[Optional[str], typer.Option(help="Where the run's outputs are.")] = None,
) -> None:
    """Summarise a run from storage: best image and score per prompt."""
    from vqclip.settings import get_settings

    with user_errors():
        console.print(_summary_table(storage or get_settings().storage, run_id))


@app.command()
def submit(
    manifest: Annotated[Path, typer.Argument(help="Local manifest file to upload.", exists=True, dir_okay=False)],
    storage: Annotated[Optional[str], typer.Option(help="The store whose inbox the watcher reads.")] = None,
    now: Annotated[bool, typer.Option("--now", help="Also start batch-generate on the Prefect server at once.")] = False,
    deployment: Annotated[str, typer.Option(help="Deployment --now starts.")] = "batch-generate/batch-generate",
    shard_deployment: Annotated[str, typer.Option(help="Deployment the batch fans shards out to.")] = "generate-shard/generate-shard",
) -> None:
    """Validate a manifest here, upload it to the storage inbox, and print its key (and, with --now, the run's URL)."""
    from vqclip import layout
    from vqclip.runs import new_run_id
    from vqclip.settings import get_settings

    storage = storage or get_settings().storage
    with user_errors():
        data, name, parsed, items = _load_plan(str(manifest), storage, None)
        local = [source for source in parsed.sources() if not source.startswith("store:")]
        if local:
            raise VqclipError(
                f"{name}: workers cannot read local images ({', '.join(local)}); upload them to the store "
                f"and name them as store:KEY"
            )
        store = open_store(storage)
        if now:
            run_id = new_run_id(name, data)
            key = f"{layout.CLAIMED}{run_id}{manifest.suffix.lower()}"
        else:
            key = f"{layout.INBOX}{manifest.name}"
            if store.exists(key):
                raise VqclipError(f"{store.url(key)} is already waiting in the inbox; rename the file to submit it again")
        store.put_bytes(key, data)
    console.print(f"uploaded {len(items)} images' manifest to [bold]{store.url(key)}[/]")
    if now:
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_UI_URL

        flow_run = run_deployment(
            deployment,
            parameters={"manifest": store.url(key), "storage": storage, "run_id": run_id, "shard_deployment": shard_deployment},
            idempotency_key=f"batch-{run_id}",
            timeout=0,
        )
        ui = PREFECT_UI_URL.value()
        console.print(f"started run {run_id}: {ui}/runs/flow-run/{flow_run.id}" if ui else f"started run {run_id} (flow run {flow_run.id})")


register_stack_commands(app)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        app()
    finally:
        # Spare the interpreter's last garbage collections over torch's and open_clip's objects
        # (1 to 2 s of a CPU at exit): everything the command wrote is closed and stored by now.
        gc.freeze()


if __name__ == "__main__":
    main()
