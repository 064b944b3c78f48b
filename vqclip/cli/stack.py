"""`vqclip up`, `status` and `down`: a local scale-out stack (Prefect server, SeaweedFS, workers) on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from vqclip.cli.output import console, user_errors
from vqclip.stack.control import DEFAULT_STATE_DIR, ENV_FILE

_SECRETS = {"AWS_SECRET_ACCESS_KEY", "PREFECT_API_AUTH_STRING"}


def up(
    gpu_workers: Annotated[int, typer.Option("--gpu-workers", min=1, help="Workers on the gpu pool (one shard at a time each).")] = 2,
    state_dir: Annotated[Path, typer.Option("--state-dir", help="Where pids, ports, logs, the database and the bucket's data live.")] = DEFAULT_STATE_DIR,
) -> None:
    """Start a Prefect server, SeaweedFS, the work pools, the deployments and workers on this machine."""
    from vqclip.stack.control import start_stack

    with user_errors(), console.status("starting the stack", spinner="dots") as status:
        state = start_stack(state_dir, gpu_workers=gpu_workers, report=lambda step: status.update(step))
    env_file = Path(state.state_dir) / ENV_FILE
    gpu = ", ".join(f"gpu-{n}" for n in range(1, gpu_workers + 1))
    console.print(Text.assemble("Prefect UI  ", (state.ui_url, "bold")))
    console.print(Text.assemble("storage     ", (state.storage, "bold"), f" (SeaweedFS S3 at {state.s3_endpoint_url})"))
    console.print(Text.assemble("browse      ", (f"{state.browse_url}/", "bold"), " (read-only: runs, galleries, images; the UI's artifacts link here)"))
    console.print(f"workers     cpu-1 on pool cpu; {gpu} on pool gpu")
    console.print(f"logs, pids  {state.state_dir}; a supervisor restarts any piece that dies (`vqclip status`)", highlight=False)
    console.print(f"UI login    the PREFECT_API_AUTH_STRING in {env_file}", highlight=False)
    console.print(Text.assemble("\nTo submit manifests from a shell, ", (f". {env_file}", "bold"), " (owner-only; it holds the S3 secret), which sets:"))
    for name, value in state.client_env().items():
        shown = f"(in {env_file})" if name in _SECRETS else value
        console.print(f"  export {name}={shown}", highlight=False, soft_wrap=True)
    console.print("then: vqclip submit MANIFEST   (watch-inbox claims it within seconds; --now starts it at once)")
    console.print("Workers fetch a preset's weights on first use; manifests with `preset: tiny` run offline.")
    console.print(f"Stop everything with: vqclip down{'' if Path(state_dir) == DEFAULT_STATE_DIR else f' --state-dir {state_dir}'}")


def down(
    state_dir: Annotated[Path, typer.Option("--state-dir", help="The folder `vqclip up` used.")] = DEFAULT_STATE_DIR,
) -> None:
    """Stop what `vqclip up` started (by pid, running flow runs included); data and logs stay in the state folder."""
    from vqclip.stack.control import load_state, stop_stack

    with user_errors():
        if load_state(state_dir) is None:
            console.print(f"no stack recorded in {state_dir}; nothing to stop", highlight=False)
            return
        stopped = stop_stack(state_dir)
    console.print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running", highlight=False)


def status(
    state_dir: Annotated[Path, typer.Option("--state-dir", help="The folder `vqclip up` used.")] = DEFAULT_STATE_DIR,
) -> None:
    """Show each piece of the local stack (pid, up or down, restarts) and whether its API, store and workers answer; exit 1 if any does not."""
    from rich.table import Table

    from vqclip.stack.control import stack_health

    with user_errors():
        health = stack_health(state_dir)
    table = Table(title=f"stack in {state_dir}")
    for column in ("piece", "pid", "state", "restarts", "since", "log"):
        table.add_column(column)
    for piece in health.pieces:
        shown = Text("running", style="green") if piece.running else Text("down", style="red")
        table.add_row(piece.name, str(piece.pid), shown, str(piece.restarts), piece.since, piece.log)
    console.print(table)
    for check, ok in health.checks.items():
        console.print(Text.assemble(("ok  ", "green") if ok else ("FAIL", "red"), f" {check}"), highlight=False)
    if not health.healthy:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `up`, `status` and `down` to the `vqclip` command line."""
    app.command("up")(up)
    app.command("status")(status)
    app.command("down")(down)
