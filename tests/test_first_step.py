"""The orchestration benchmark's fixed-cost probe: it notes when a command's first optimisation step ends and changes nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_probe_records_the_first_step_of_a_command_it_runs_unchanged(tmp_path):
    probe, image = tmp_path / "first-step", tmp_path / "fox.png"
    command = ["vqclip.cli", "generate", "a red fox", "--preset", "tiny", "--size", "64x64", "--steps", "3", "--cutouts", "2"]
    launched = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.first_step", str(probe), *command, "--out", str(image), "--device", "cpu"],
        cwd=ROOT, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=300,
    )
    finished = time.time()
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"wrote {image}" in done.stdout and image.stat().st_size > 0
    assert launched < float(probe.read_text()) < finished
    assert "first optimisation step" not in done.stdout + done.stderr, "the engine's debug line stays off the command's output"
