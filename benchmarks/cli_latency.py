"""Command-line latency as a new user meets it: light commands, the offline failure and the tiny demo.

    python -m benchmarks.cli_latency [--repeats 3] [--json FILE]

Each figure is the wall time of a fresh `vqclip` process, from start to exit. Light commands
(`validate`, `show`, `models`, `--help`) and the offline failure (`vqclip run` on the default
preset with an empty weight cache: temporary HOME, XDG cache, Hugging Face cache and
VQCLIP_CACHE_DIR) are the median of `--repeats` runs; the tiny demo (`make demo PRESET=tiny`'s
command, into a temporary store) runs once, and its run is the one `show` summarises.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VQCLIP = str(Path(sys.executable).parent / "vqclip")
DEMO = ("run", "examples/quickstart-tiny.yaml", "--preset", "tiny")
DEMO_RUN_ID = "cli-latency-demo"


def timed(args: tuple[str, ...], env: dict[str, str], expect: int = 0) -> float:
    """Seconds one `vqclip ARGS` process takes; fails unless it exits with `expect`."""
    started = time.perf_counter()
    done = subprocess.run([VQCLIP, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != expect:
        raise RuntimeError(f"vqclip {' '.join(args)} exited {done.returncode}, not {expect}:\n{done.stderr[-2000:]}")
    return elapsed


def median_of(repeats: int, args: tuple[str, ...], env: dict[str, str], expect: int = 0) -> float:
    """The median of `repeats` timed runs of `vqclip ARGS`."""
    return statistics.median(timed(args, env, expect) for _ in range(repeats))


def measure(repeats: int) -> dict[str, float]:
    """Seconds of the demo, each light command and the offline failure."""
    with tempfile.TemporaryDirectory(prefix="vqclip-cli-latency-") as folder:
        home = Path(folder)
        env = {**os.environ, "VQCLIP_STORAGE": str(home / "store")}
        env.pop("PREFECT_API_URL", None)
        empty_cache = {
            **env,
            "HOME": str(home / "home"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "HF_HOME": str(home / "hf"),
            "VQCLIP_CACHE_DIR": str(home / "weights"),
        }
        results = {"demo (make demo PRESET=tiny's run)": timed((*DEMO, "--run-id", DEMO_RUN_ID), env)}
        if not (home / "store" / "runs" / DEMO_RUN_ID / "gallery.html").exists():
            raise RuntimeError("the demo wrote no gallery")
        light = {
            "validate examples/quickstart.yaml": ("validate", "examples/quickstart.yaml"),
            "show (the demo's run)": ("show", DEMO_RUN_ID),
            "models": ("models",),
            "--help": ("--help",),
            "run --help": ("run", "--help"),
        }
        for name, args in light.items():
            results[name] = median_of(repeats, args, env)
        results["run examples/quickstart.yaml, default preset, no weights, offline"] = median_of(
            repeats, ("run", "examples/quickstart.yaml"), empty_cache, expect=1
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each light command and of the offline failure.")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    options = parser.parse_args()
    results = measure(options.repeats)
    print("| command | seconds |\n|---|---|")
    for name, seconds in results.items():
        print(f"| `{name}` | {seconds:.2f} |")
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
