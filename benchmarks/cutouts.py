"""Seconds per step of each cut method, and of its cutouts alone, measured side by side in one run.

    python -m benchmarks.cutouts [--device cpu|cuda] [--repeats 5] [--quick] [--full-step]

1. Cutouts alone: `make_cutouts` forward and backward for one 256 px image, 32 cutouts, at the tiny
   guide's input size (32) and at the full-size CLIP input size (224).
2. The like-for-like part: one affine warp of those 32 cutouts at 224, kornia's RandomAffine against
   the batched `affine_grid` + `grid_sample` pass the vqclip method uses.
3. Whole optimisation steps on the tiny preset (256 px, 32 cutouts, batch 1); with --full-step also
   on the default preset's architectures (random weights), vqclip against latest.
Every figure is the median of several repeats after a warm-up, the methods timed in turns.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from typing import get_args

import kornia.augmentation as K
import torch
import torch.nn.functional as F

from benchmarks.engine_step import bench_items, step_times
from vqclip.engine.cutouts import make_cutouts
from vqclip.items import CutMethod
from vqclip.models.loader import load_models

SIZE, CUTN = 256, 32
METHODS: tuple[str, ...] = get_args(CutMethod)


def interleaved(runs: dict[str, Callable[[], None]], repeats: int, device: str) -> dict[str, float]:
    """Median seconds of each run, after a warm-up of each, timed in turns so that a slow minute on a shared machine moves every figure alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats + 1):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            if device == "cuda":
                torch.cuda.synchronize()
            if round_:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def cutout_pass(method: str, cut_size: int, device: str) -> Callable[[], None]:
    """One item's cutouts, forward and backward, with the default noise."""
    image = torch.rand(1, 3, SIZE, SIZE, device=device, requires_grad=True)
    generator = torch.Generator(device=device).manual_seed(0)
    return lambda: make_cutouts(image, [generator], CUTN, cut_size, noise_fac=0.1, method=method).sum().backward()


def affine_warps(device: str) -> dict[str, Callable[[], None]]:
    """One affine warp of 32 cutouts at 224, forward and backward: kornia's RandomAffine and a batched grid_sample."""
    cutouts = torch.rand(CUTN, 3, 224, 224, device=device, requires_grad=True)
    kornia_affine = K.RandomAffine(degrees=15, translate=0.1, shear=5, p=1.0, padding_mode="zeros")
    generator = torch.Generator(device=device).manual_seed(0)

    def grid_sample() -> None:
        angle = (torch.rand(CUTN, generator=generator, device=device) * 2 - 1) * math.radians(15)
        shift = (torch.rand(CUTN, 2, generator=generator, device=device) * 2 - 1) * 0.2
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(cutouts.shape), align_corners=False)
        F.grid_sample(cutouts, grid, padding_mode="zeros", align_corners=False).sum().backward()

    return {"kornia RandomAffine": lambda: kornia_affine(cutouts).sum().backward(), "affine_grid + grid_sample": grid_sample}


def step_seconds(models, methods: tuple[str, ...], repeats: int) -> dict[str, float]:
    """Median seconds of one optimisation step of one 256 px item with 32 cutouts, per method, the methods in turns."""
    (item,) = bench_items(models.spec, 1, SIZE, CUTN, 3)
    times: dict[str, list[float]] = {method: [] for method in methods}
    for _ in range(repeats):
        for method in methods:
            settings = item.settings.model_copy(update={"cut_method": method})
            times[method] += step_times(models, [item.model_copy(update={"settings": settings})])[1:]
    return {method: statistics.median(values) for method, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats, tiny sizes only (CI smoke run)")
    parser.add_argument("--full-step", action="store_true", help="also time whole full-size steps (vqclip, latest)")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {args.device}, threads {torch.get_num_threads()}")
    cut_sizes = (32,) if args.quick else (32, 224)
    print(f"\n1. cutouts alone ({SIZE} px image, {CUTN} cutouts, forward + backward, s)")
    passes = {size: interleaved({m: cutout_pass(m, size, args.device) for m in METHODS}, repeats, args.device) for size in cut_sizes}
    print(f"{'method':<16}" + "".join(f"{f'cut {size}':>12}" for size in cut_sizes))
    for method in METHODS:
        print(f"{method:<16}" + "".join(f"{passes[size][method]:>12.4f}" for size in cut_sizes))
    if not args.quick:
        print(f"\n2. one affine warp of {CUTN} cutouts at 224, forward + backward (s)")
        for name, seconds in interleaved(affine_warps(args.device), repeats, args.device).items():
            print(f"{name:<28}{seconds:>10.4f}")
    presets = ["tiny"] + (["default-random"] if args.full_step else [])
    for preset in presets:
        models = load_models(preset, device=args.device, include_scorer=False)
        methods = METHODS if preset == "tiny" else ("vqclip", "latest")
        print(f"\n3. whole steps, {preset} preset ({SIZE} px, {CUTN} cutouts, batch 1, s/step)")
        steps = step_seconds(models, methods, repeats)
        for method in methods:
            print(f"{method:<16}{steps[method]:>10.4f}{steps[method] / steps['vqclip']:>9.2f}x")


if __name__ == "__main__":
    main()
