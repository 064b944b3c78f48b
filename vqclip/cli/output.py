"""How the command line speaks to the user: its consoles, and vqclip errors as one-line messages.

Both consoles print text as it is, without rich's markup: prompts, labels, paths and error messages
come from users and may hold square brackets. Styled words are rich `Text` spans instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.text import Text

from vqclip.errors import VqclipError

console = Console(markup=False)
errors = Console(stderr=True, markup=False)
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
        errors.print(Text.assemble(("error:", "bold red"), f" {exc}"), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
