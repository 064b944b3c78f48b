"""The `vqclip` command line."""

from __future__ import annotations

import gc
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, get_args

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from vqclip import shutdown
from vqclip.cli.filter import register as register_filter_command
from vqclip.cli.output import console, errors, options, user_errors
from vqclip.cli.search import register as register_search_commands
from vqclip.cli.stack import register as register_stack_commands
from vqclip.errors import VqclipError
from vqclip.items import REFERENCE_AUGMENTS, AugmentCode, CutMethod
from vqclip.recipes import Recipe
from vqclip.storage import open_store

if TYPE_CHECKING:
    from vqclip.stack.api_server import TemporaryApiServer

app = typer.Typer(help="Batch VQGAN+CLIP text-to-image generation.", no_args_is_help=True, add_completion=False)


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.", metavar="")] = False) -> None:
    options["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _parse_size(size: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{size!r} is not WIDTHxHEIGHT, e.g. 256x256") from None
    return width, height


def _parse_augments(codes: str) -> tuple[str, ...]:
    chosen = tuple(code.strip() for code in codes.split(",") if code.strip())
    unknown = [code for code in chosen if code not in get_args(AugmentCode)]
    if unknown:
        valid = ", ".join(get_args(AugmentCode))
        raise typer.BadParameter(f"--augments: unknown code {unknown[0]!r}; use codes from {valid}, comma-separated")
    return chosen


def step_progress() -> Progress:
    """A rich progress bar for optimisation steps."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=errors
    )


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Weighted prompt, e.g. 'a red fox:1 | blurry:-0.5'.", metavar="PROMPT")],
    preset: Annotated[str, typer.Option(help="Model preset (see `vqclip models`).")] = "default",
    size: Annotated[Optional[str], typer.Option(help="WIDTHxHEIGHT in pixels [default: the preset's; 256x256, tiny 128x128].")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Optimisation steps [default: the preset's; 300, tiny 30].")] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    cutouts: Annotated[Optional[int], typer.Option(min=1, help="Cutouts CLIP sees per step [default: the preset's; 32, tiny 8].")] = None,
    lr: Annotated[float, typer.Option(min=0.0)] = 0.1,
    change_every: Annotated[int, typer.Option(min=0, help="Steps each prompt of an 'a ^ b' schedule guides.")] = 0,
    cut_method: Annotated[
        Optional[CutMethod], typer.Option(help="vqclip (this engine's) or one of the reference's cut methods (default: the recipe's).")
    ] = None,
    augments: Annotated[
        Optional[str],
        typer.Option(help=f"Augmentations of the latest and nrupdated cut methods: the reference's codes, comma-separated (default: {','.join(REFERENCE_AUGMENTS)}).")
    ] = None,
    recipe: Annotated[
        Optional[Recipe], typer.Option(help="vqclip or reference: whose defaults unset settings take (default: the preset's, reference for --preset reference).")
    ] = None,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("vqclip-output/image.png"),
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: CUDA when present).")] = None,
) -> None:
    """Generate one image and write it as a PNG with its settings embedded."""
    import tempfile

    from vqclip.config import get_config
    from vqclip.items import GenerationSettings, WorkItem
    from vqclip.models.presets import get_preset, models_for_preset
    from vqclip.prompts import parse_schedule

    # Config left out come from the preset (the tiny one's are small, for a quick smoke run), then the defaults.
    given = dict(zip(("width", "height"), _parse_size(size))) if size else {}
    given.update({key: value for key, value in (("steps", steps), ("cutouts", cutouts)) if value is not None})
    with user_errors():
        if len(parse_schedule(prompt, check_tokens=True)) > 1 and not change_every:
            raise VqclipError("the prompt is a schedule separated by '^'; give --change-every, the steps each prompt guides")
        spec = models_for_preset(preset)
        given.update(lr=lr, change_every=change_every)
        chosen = {"cut_method": cut_method, "recipe": recipe, "augments": _parse_augments(augments) if augments else None}
        given.update({key: value for key, value in chosen.items() if value is not None})
        settings = GenerationSettings(**{**get_preset(preset).settings, **given})
        width, height = settings.width, settings.height
        if width % spec.factor or height % spec.factor:
            raise VqclipError(f"--size {width}x{height}: width and height must be multiples of {spec.factor} for preset {preset}")
        item = WorkItem(prompt_id="cli", prompt=prompt, seed=seed, settings=settings, models=spec)
        # Bad input is refused above, before torch is imported.
        from vqclip.models.loader import load_models
        from vqclip.run.shard import run_shard
        from vqclip.run.state import RunStore
        from vqclip.storage import LocalStore

        with console.status(f"loading models ({preset})", spinner="dots"):
            models = load_models(spec, device=device, include_scorer=False)
        # A one-item shard of a throwaway run: the same recovery rules (out-of-memory fallback, NaN
        # restart) and the same PNG metadata as a batch run, for the cost of one file copy.
        with tempfile.TemporaryDirectory(prefix="vqclip-generate-") as folder, step_progress() as bar:
            run = RunStore(LocalStore(folder), "generate")
            task = bar.add_task(f"generating on {models.device}", total=settings.total_steps)
            outcome = run_shard(
                [item], run, lambda _: models, get_config(), logging.getLogger(__name__),
                progress=lambda now: bar.update(task, completed=now.steps_done),
            )
            if outcome.failed:
                raise VqclipError(f"generation failed: {outcome.failed[item.item_id]}")
            record = run.record(item.item_id)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(run.store.get_bytes(record.image_key))
    similarity = ", ".join(f"{v:.3f}" for v in record.guide_similarity.values())
    console.print(Text.assemble("wrote ", (str(out), "bold"), f" ({width}x{height}, seed {seed}, guide similarity {similarity})"))
    if spec.synthetic:
        console.print(f"preset {preset} has untrained random weights: the image is a smoke test, not art", style="yellow")


@app.command("models")
def list_models() -> None:
    """List presets and VQGANs, and which of their weight files are cached."""
    from vqclip.config import get_config
    from vqclip.models.catalog import VQGANS
    from vqclip.models.presets import PRESETS
    from vqclip.models.weights import cached_files

    config = get_config()
    with user_errors():
        table = Table(title=f"presets (cache: {config.cache_dir})")
        for column in ("preset", "models", "weights cached"):
            table.add_column(column)
        for preset in PRESETS.values():
            files = cached_files(preset.models, config)
            cached = f"{sum(ok for _, ok in files)}/{len(files)}" if files else "none needed"
            models = preset.models
            guides = ", ".join(g.clip for g in models.guides)
            table.add_row(preset.name, f"{preset.description}\nvqgan {models.vqgan}; guide {guides}; scorer {models.scorer}", cached)
        console.print(table)
        vq = Table(title="VQGANs")
        for column in ("name", "factor", "size", "cached", "description"):
            vq.add_column(column)
        for spec in VQGANS.values():
            cached = "n/a" if spec.checkpoint is None else ("yes" if (config.vqgan_cache / spec.checkpoint.filename).exists() else "no")
            size = f"~{spec.approx_size_mb} MB" if spec.approx_size_mb else "-"
            vq.add_row(spec.name, f"f{spec.factor}", size, cached, spec.description)
        console.print(vq)


@app.command("fetch-models")
def fetch_models(
    names: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Presets, VQGANs (e.g. imagenet_f16_1024) or open_clip MODEL/PRETRAINED names; default: the default preset.",
            metavar="NAME",
        ),
    ] = None,
) -> None:
    """Download the weights of presets or single models into the cache (for machines that will run offline)."""
    from vqclip.config import get_config
    from vqclip.models.download import Wanted, ensure_files
    from vqclip.models.weights import named_files

    config = get_config()
    names = names or ["default"]
    with user_errors():
        files = list(dict.fromkeys(wanted for name in names for wanted in named_files(name, config)))
        ensure_files(files, config)
    for file in files:
        console.print(f"cached {file.path if isinstance(file, Wanted) else file.cached()}")
    console.print(f"{', '.join(names)}: all weights in {config.cache_dir}")


def _load_plan(manifest: str, storage: str, preset: Optional[str]):
    """Read and fully validate a manifest; return its bytes, name, parsed form and work items."""
    from vqclip.manifest import load_manifest, read_manifest_source, store_reader

    data, name, base_dir = read_manifest_source(manifest)
    parsed = load_manifest(data, name, base_dir=base_dir, preset=preset)
    store = open_store(storage) if any(s.startswith("store:") for s in parsed.sources()) else None
    items = parsed.plan(read_source=store_reader(store) if store else None)
    return data, name, parsed, items


@app.command()
def validate(
    manifest: Annotated[str, typer.Argument(help="Manifest path or s3://bucket/key.", metavar="MANIFEST")],
    preset: Annotated[Optional[str], typer.Option(help="Override the manifest's preset.")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Store that `store:` image paths refer to.")] = None,
) -> None:
    """Check a manifest and print the plan it expands to (exit 1 on errors)."""
    from vqclip.config import get_config
    from vqclip.manifest import describe_plan

    with user_errors():
        _, name, parsed, items = _load_plan(manifest, storage or get_config().storage, preset)
        plan = describe_plan(items, parsed.shard_size)
    table = Table(title=f"{name}: {plan['images']} images, {plan['shards']} shards, {plan['steps']} optimisation steps")
    for column in ("prompt", "images", "size", "steps", "models"):
        table.add_column(column)
    for row in plan["prompts"]:
        table.add_row(row["prompt_id"] + ": " + row["prompt"], str(row["images"]), row["size"], str(row["steps"]), row["models"])
    console.print(table)
    spec = parsed.filter
    if spec is not None:
        threshold = f"; or reject labels' probability over {spec.threshold}" if spec.threshold is not None else ""
        console.print(f"zero-shot filter: labels {', '.join(spec.labels)}; filtered out when labelled {', '.join(spec.reject)}{threshold}", soft_wrap=True)


def _print_summary(storage: str, run_id: str) -> None:
    """Print a run's best score per prompt, then each best image's path whole, on a line of its own."""
    from vqclip.run import layout
    from vqclip.run.records import Ranking
    from vqclip.run.state import RunStore

    store = open_store(storage)
    index = RunStore(store, run_id).load_index()
    try:
        ranking = Ranking.model_validate_json(store.get_bytes(layout.ranking_key(run_id)))
    except VqclipError:
        ranking = None
    counts = ", ".join(f"{n} {state}" for state, n in index.counts.items() if n)
    table = Table(title=f"run {run_id}: {counts}")
    for column in ("prompt", "best score", "images"):
        table.add_column(column)
    prompts = ranking.prompts if ranking else []
    for prompt in prompts:
        table.add_row(f"{prompt.prompt_id}: {prompt.prompt}", f"{prompt.images[0].score:.2f}", str(len(prompt.images)))
    console.print(table)
    for prompt in prompts:
        console.print(f"best {prompt.prompt_id}: {store.url(prompt.images[0].image_key)}", soft_wrap=True, highlight=False)


@app.command()
def run(
    manifest: Annotated[str, typer.Argument(help="Manifest path or s3://bucket/key.", metavar="MANIFEST")],
    storage: Annotated[Optional[str], typer.Option(help="Output: a folder, file://..., or s3://bucket/prefix.")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Resume (or name) this run.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Override the manifest's preset.")] = None,
) -> None:
    """Run a manifest end to end in this process (Prefect's ephemeral API; no server needed)."""
    from vqclip.config import get_config
    from vqclip.run import layout
    from vqclip.run.state import new_run_id

    if not options["debug"]:
        # Failures reach the user as one message below; Prefect's own tracebacks are for --debug.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    storage = storage or get_config().storage
    # The manifest, the run id and the weights are checked before the API server and torch start, so
    # that a bad manifest or missing weights without internet fail within seconds.
    with user_errors():
        plan = _load_plan(manifest, storage, preset)
        run_id = layout.check_run_id(run_id or new_run_id(plan[1], plan[0]))
        _ensure_weights(plan[3])
    from vqclip.stack.api_server import temporary_api_server

    # SIGTERM and SIGINT only raise the stop flag: the run ends at its next step, its finished images
    # stored and its state recorded, before the temporary server (in a session of its own) stops.
    # Without PREFECT_API_URL, a temporary API server boots while torch and the models load.
    with shutdown.stop_on_signals(), temporary_api_server() as server:
        _run(manifest, storage, run_id, preset, plan, server)


def _ensure_weights(items: list) -> None:
    """Download the weights the items' models lack, or fail naming each missing file (torch is not needed)."""
    from vqclip.config import get_config
    from vqclip.models.download import ensure_files
    from vqclip.models.weights import required_files

    config = get_config()
    with console.status("checking model weights", spinner="dots"):
        for spec in {item.models for item in items}:
            ensure_files(required_files(spec, config), config)


def _run(manifest: str, storage: str, run_id: str, preset: Optional[str], plan: tuple, server: Optional[TemporaryApiServer]) -> None:
    from vqclip.models.loader import preload_models
    from vqclip.run import layout
    from vqclip.run.resume import resume_command

    _, _, parsed, items = plan
    with user_errors():
        store = open_store(storage)
    resume = resume_command(manifest, storage, run_id)
    _exit_if_stopped(run_id, resume)
    console.print(Text.assemble("run ", (run_id, "bold"), f": {len(items)} images into {store.url(layout.run_prefix(run_id))}"), soft_wrap=True, highlight=False)
    # Models build on a thread while the API server finishes booting; a resumed run preloads only
    # for items without a sidecar yet.
    with user_errors():
        stored = set(store.list(layout.items_prefix(run_id)))
    preload = preload_models(list(dict.fromkeys(i.models for i in items if layout.sidecar_key(run_id, i.item_id) not in stored)))

    from prefect.exceptions import TerminationSignal

    from flows.batch import batch_generate
    from vqclip.cli.progress import RunProgressDisplay
    from vqclip.manifest import shards
    from vqclip.retry import is_permanent
    from vqclip.run.progress import RunProgress
    from vqclip.stack.api_server import prefect_api

    try:
        with user_errors(), prefect_api(server), RunProgressDisplay(errors, RunProgress(store, run_id, shards(items, parsed.shard_size))):
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
            _print_summary(storage, run_id)
    if not state.is_completed():
        # Bad input, missing weights or refused credentials fail the same way again: no resume hint.
        permanent = is_permanent(state.result(raise_on_failure=False))
        hint = "" if permanent or resume in (state.message or "") else f" Resume with: {resume}"
        errors.print(Text.assemble(("error:", "bold red"), f" run {run_id} did not finish: {state.message}{hint}"), highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"all {len(items)} images done; gallery: {store.url(layout.gallery_key(run_id))}", soft_wrap=True, highlight=False)


def _exit_if_stopped(run_id: str, resume: str) -> None:
    """After SIGTERM or SIGINT, end with one line naming the resume command and the signal's exit status."""
    if shutdown.requested():
        name = signal.Signals(shutdown.first_signal()).name
        errors.print(
            Text.assemble(("stopped:", "bold yellow"), f" run {run_id} stopped by {name}; its finished images are stored. Resume with: {resume}"),
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(shutdown.exit_status())


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="The run to summarise.", metavar="RUN_ID")],
    storage: Annotated[Optional[str], typer.Option(help="Where the run's outputs are.")] = None,
) -> None:
    """Summarise a run from storage: best image and score per prompt."""
    from vqclip.config import get_config

    with user_errors():
        _print_summary(storage or get_config().storage, run_id)


@app.command()
def submit(
    manifest: Annotated[Path, typer.Argument(help="Local manifest file to upload.", exists=True, dir_okay=False, metavar="MANIFEST")],
    storage: Annotated[Optional[str], typer.Option(help="The store whose inbox the watcher reads.")] = None,
    now: Annotated[bool, typer.Option("--now", help="Also start batch-generate on the Prefect server at once.", metavar="")] = False,
    deployment: Annotated[str, typer.Option(help="Deployment --now starts.")] = "batch-generate/batch-generate",
    shard_deployment: Annotated[str, typer.Option(help="Deployment the batch fans shards out to.")] = "generate-shard/generate-shard",
) -> None:
    """Validate a manifest here, upload it to the storage inbox, and print its key (and, with --now, the run's URL)."""
    from vqclip.config import get_config
    from vqclip.run import layout
    from vqclip.run.state import new_run_id

    storage = storage or get_config().storage
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
    console.print(Text.assemble(f"uploaded {len(items)} images' manifest to ", (store.url(key), "bold")))
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


@app.command()
def serve(
    storage: Annotated[Optional[str], typer.Option(help="The store to show: a folder, file://..., or s3://bucket/prefix.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")] = 8470,
) -> None:
    """Serve a store read-only to a browser: runs, galleries, images, sidecars, contact sheets, frames and videos."""
    from vqclip.browse import make_server
    from vqclip.config import get_config

    with user_errors():
        store = open_store(storage or get_config().storage)
        server = make_server(store, host, port)
    console.print(
        Text.assemble(
            f"serving {store.url()} read-only at ", (f"{server.url}/", "bold"), f" (VQCLIP_BROWSE_URL={server.url} links the UI's artifacts here); Ctrl-C stops"
        )
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


register_stack_commands(app)
register_search_commands(app)
register_filter_command(app)


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

