"""The tiny scoring CLIPs on the CPU, loaded once per test process."""

from __future__ import annotations

import functools

from vqclip.models.loader import load_scorer

SCORER_A, SCORER_B = "tiny-clip-a/random", "tiny-clip-b/random"


@functools.cache
def cpu_scorer(name: str):
    """The scorer `name` on the CPU (cached: the same object for every caller)."""
    return load_scorer(name, device="cpu")
