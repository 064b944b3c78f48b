"""The command a person runs to resume a run by hand: one spelling for the CLI, the batch flow and the reconciler.

A module of its own, importing nothing, so the reconciler's process stays free of torch.
"""

from __future__ import annotations


def resume_command(manifest: str, storage: str | None, run_id: str | None) -> str:
    """`vqclip run MANIFEST --storage S --run-id ID`, the store and run id left out where not known."""
    return f"vqclip run {manifest}" + (f" --storage {storage}" if storage else "") + (f" --run-id {run_id}" if run_id else "")
