"""The processes a test started: found by a marker in their environment (Linux: reads /proc), killed mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
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


def kill_once_stored(process: subprocess.Popen, folder: Path, pattern: str, count: int, what: str, poll: float = 0.2) -> None:
    """SIGKILL `process`'s whole group (its own session) once `folder` holds `count` files matching `pattern`."""
    deadline = time.monotonic() + 240
    while len(list(folder.glob(pattern))) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"no {what} was stored in time"
        time.sleep(poll)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
