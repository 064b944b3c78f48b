"""The `vqclip` command line; `main` is the console script's entry point."""

from vqclip.cli.main import main

__all__ = ["main"]
