"""How the command line speaks to the user: its consoles, and vqclip errors as one-line messages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from vqclip.errors import VqclipError

console = Console()
errors = Console(stderr=True)
# Set by the `--debug` option before any command runs.
options = {"debug": False}


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a VqclipError as a message (exit 1); with --debug, let the traceback through."""
    try:
        yield
    except VqclipError as exc:
        if options["debug"]:
            raise
        errors.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
