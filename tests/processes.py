"""Finding the processes a test started, by a marker in their environment (Linux: reads /proc)."""

from __future__ import annotations

from pathlib import Path


def processes_with(marker: str) -> dict[int, bytes]:
    """Live processes whose environment holds `marker`, with their command lines (a zombie's environment reads empty)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
        except OSError:
            pass
    return found
