"""Seconds per optimisation step of the engine, measured side by side in one run.

    python -m benchmarks.engine_step [--device cpu|cuda] [--repeats 5] [--quick]

Full-size configuration (imagenet_f16_16384 + ViT-B-32 with random weights: compute does not depend
on weight values), 256x256, 32 cutouts, at batch 1 and batch 4; and the tiny preset. Each figure is
the median of several steps after a warm-up step. Per-image figures divide by the batch size.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import torch

from vqclip.config import Config
from vqclip.engine.generate import generate
from vqclip.items import GenerationSettings, WorkItem
from vqclip.models.loader import load_models


def bench_items(spec, batch: int, size: int, cutouts: int, steps: int) -> list[WorkItem]:
    """`batch` distinct work items of one shape, as a benchmark shard."""
    settings = GenerationSettings(width=size, height=size, steps=steps, cutouts=cutouts)
    return [
        WorkItem(prompt_id="bench", prompt=f"a lighthouse at dawn, study {i}", seed=i, settings=settings, models=spec)
        for i in range(batch)
    ]


def step_times(models, items: list[WorkItem], runtime: Config | None = None) -> list[float]:
    """Wall time of every optimisation step of one `generate` call (the GPU is synchronised per step).

    The first includes the call's set-up and any first-time work at this shape (cuDNN's kernel
    search, lazy kernel loading); leave it out of a steady-state figure.
    """
    stamps = [time.perf_counter()]

    def tick(done: int, total: int) -> None:
        if models.device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    generate(items, models, settings=runtime, progress=tick)
    return [b - a for a, b in zip(stamps[:-1], stamps[1:])]


def seconds_per_step(preset: str, size: int, cutouts: int, batch: int, repeats: int, device: str) -> float:
    """Median wall time of one optimisation step for `batch` items, the first step (warm-up) left out."""
    models = load_models(preset, device=device, include_scorer=False)
    return statistics.median(step_times(models, bench_items(models.spec, batch, size, cutouts, repeats + 1))[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny preset only, 2 repeats (CI smoke run)")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    cases = [("tiny", 64, 8, 1), ("tiny", 64, 8, 4)]
    if not args.quick:
        cases = [("default-random", 256, 32, 1), ("default-random", 256, 32, 4)] + cases
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {args.device}, threads {torch.get_num_threads()}")
    print(f"{'preset':<16}{'size':>6}{'cutouts':>9}{'batch':>7}{'s/step':>10}{'s/step/image':>14}{'vs batch 1':>12}")
    baseline: dict[str, float] = {}
    for preset, size, cutouts, batch in cases:
        seconds = seconds_per_step(preset, size, cutouts, batch, repeats, args.device)
        per_image = seconds / batch
        baseline.setdefault(preset, per_image)
        ratio = per_image / baseline[preset]
        print(f"{preset:<16}{size:>6}{cutouts:>9}{batch:>7}{seconds:>10.3f}{per_image:>14.3f}{ratio:>11.2f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak RSS of this process: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
