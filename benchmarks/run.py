"""The benchmark harness: engine throughput, memory, model load, orchestration overhead, scoring.

    python -m benchmarks.run [--device cpu|cuda] [--quick] [--json FILE]

Every figure is the median of several timed repetitions after a warm-up, measured side by side in
this one run; ratios compare against sequential batch-1 fp32 of the same run. Full-size figures use
the default preset's architectures with random weights (compute does not depend on weight values).
`--quick` uses the tiny preset and a few steps, so CI can check that the harness still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.engine_step import bench_items, step_times
from vqclip.models.loader import load_models, unload_models
from vqclip.settings import Settings

STEPS_PER_IMAGE = 300


def engine(device: str, quick: bool, repeats: int) -> list[dict]:
    """Seconds per step and images per hour at 300 steps, per batch size and precision."""
    preset, size, cutouts = ("tiny", 64, 8) if quick else ("default-random", 256, 32)
    batches = [1, 4] if device == "cpu" else [1, 4, 16]
    precisions = [False] if device == "cpu" else [False, True]
    models = load_models(preset, device=device, include_scorer=False)
    rows = []
    for bf16 in precisions:
        for batch in batches:
            runtime = Settings(bf16=bf16)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = statistics.median(step_times(models, bench_items(models.spec, batch, size, cutouts, repeats + 2), runtime))
            rows.append(
                {
                    "preset": preset,
                    "size": size,
                    "cutouts": cutouts,
                    "batch": batch,
                    "precision": "bf16" if bf16 else "fp32",
                    "s_per_step": seconds,
                    "images_per_hour": 3600 * batch / (seconds * STEPS_PER_IMAGE),
                    "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
                }
            )
    base = rows[0]["images_per_hour"]
    for row in rows:
        row["vs_sequential_fp32"] = row["images_per_hour"] / base
    return rows


def memory_cpu(quick: bool) -> list[dict]:
    """Peak RSS of a fresh process generating one step at batch 1 and 4 (CPU)."""
    preset, size, cutouts = ("tiny", 64, 8) if quick else ("default-random", 256, 32)
    rows = []
    for batch in (1, 4):
        code = (
            "import resource; from benchmarks.engine_step import bench_items; from vqclip.generate import generate; "
            "from vqclip.models.loader import load_models; "
            f"m = load_models({preset!r}, device='cpu', include_scorer=False); "
            f"generate(bench_items(m.spec, {batch}, {size}, {cutouts}, 2), m); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
        )
        kib = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1])
        rows.append({"preset": preset, "size": size, "batch": batch, "peak_rss_gib": kib / 2**20})
    return rows


def memory_cuda(quick: bool) -> list[dict]:
    """Peak CUDA memory per image at 256, 512 and 768 px, batch 1, fp32 and bf16."""
    preset, sizes = ("tiny", (64, 128)) if quick else ("default-random", (256, 512, 768))
    models = load_models(preset, device="cuda", include_scorer=False)
    rows = []
    for size in sizes:
        for bf16 in (False, True):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            step_times(models, bench_items(models.spec, 1, size, 32, 2), Settings(bf16=bf16))
            rows.append({"size": size, "precision": "bf16" if bf16 else "fp32", "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30})
    return rows


def model_load(quick: bool, seconds_per_step: float, device: str) -> dict:
    """Cold load of the default preset from a local cache of real-format files, in a fresh process."""
    if quick:
        return {"preset": "tiny", "note": "quick mode: the default preset's cache is not built"}
    with tempfile.TemporaryDirectory() as cache:
        subprocess.run([sys.executable, "-m", "benchmarks.fake_cache", cache], check=True)
        env = {**os.environ, "VQCLIP_CACHE_DIR": cache, "VQCLIP_OFFLINE": "1"}
        code = (
            "import time; t = time.perf_counter(); from vqclip.models.loader import load_models; "
            f"load_models('default', device={device!r}); print(time.perf_counter() - t)"
        )
        seconds = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()[-1])
    shard = 4 * STEPS_PER_IMAGE * seconds_per_step
    return {"preset": "default", "seconds": seconds, "share_of_4_item_shard": seconds / (seconds + shard)}


def orchestration(device: str) -> dict:
    """A 16-item tiny manifest through `vqclip run` against the same items through the engine alone."""
    from vqclip.generate import generate
    from vqclip.manifest import load_manifest, shards

    manifest = "defaults: {preset: tiny, width: 64, height: 64, steps: 30, cutouts: 8, n: 4, batch_size: 4}\nprompts: [a red fox, a castle, snow, a blue sea]\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.yaml"
        path.write_text(manifest)
        items = load_manifest(manifest.encode(), "bench.yaml").plan()
        models = load_models("tiny", device=device)
        started = time.perf_counter()
        for shard in shards(items, 4):
            generate(shard, models)
        engine_seconds = time.perf_counter() - started
        env = {**os.environ, "VQCLIP_DEVICE": device, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vqclip.cli", "run", str(path), "--storage", str(Path(folder) / "out")], env=env, check=True, capture_output=True)
        pipeline_seconds = time.perf_counter() - started
    return {"items": len(items), "engine_s": engine_seconds, "vqclip_run_s": pipeline_seconds, "overhead": pipeline_seconds / engine_seconds - 1}


def scoring(device: str, quick: bool, repeats: int) -> dict:
    """Images scored per second by the default preset's scoring architecture, batches of 32."""
    from PIL import Image

    from vqclip.models.loader import load_scorer
    from vqclip.score import score

    name = "tiny-clip-b/random" if quick else "ViT-B-16/random"
    scorer = load_scorer(name, device=device)
    images = [Image.new("RGB", (256, 256), (i * 8 % 256, 90, 160)) for i in range(32)]
    score(images, ["a lighthouse"] * 32, scorer)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        score(images, ["a lighthouse"] * 32, scorer)
        times.append(time.perf_counter() - started)
    return {"scorer": name, "images_per_s": 32 / statistics.median(times)}


def machine() -> dict:
    """What the figures were measured on."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny models and few repetitions (CI)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    results: dict = {"machine": machine(), "device": args.device, "quick": args.quick, "date": time.strftime("%Y-%m-%d")}

    results["engine"] = rows = engine(args.device, args.quick, repeats)
    print(f"\n1. engine ({rows[0]['preset']}, {rows[0]['size']} px, {rows[0]['cutouts']} cutouts, {STEPS_PER_IMAGE} steps per image)")
    print(f"{'batch':>6} {'precision':>9} {'s/step':>9} {'images/h':>10} {'vs seq fp32':>12}")
    for row in rows:
        print(f"{row['batch']:>6} {row['precision']:>9} {row['s_per_step']:>9.3f} {row['images_per_hour']:>10.2f} {row['vs_sequential_fp32']:>11.2f}x")

    results["memory"] = memory = memory_cuda(args.quick) if args.device == "cuda" else memory_cpu(args.quick)
    print("\n2. memory")
    for row in memory:
        print("   " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))

    unload_models()
    results["model_load"] = load = model_load(args.quick, rows[0]["s_per_step"], args.device)
    print("\n3. model load:", ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in load.items()))

    results["orchestration"] = orch = orchestration(args.device)
    print(f"\n4. orchestration: {orch['items']} tiny items, engine alone {orch['engine_s']:.1f} s, vqclip run {orch['vqclip_run_s']:.1f} s, overhead {orch['overhead']:.0%}")

    results["scoring"] = sc = scoring(args.device, args.quick, repeats)
    print(f"\n5. scoring: {sc['scorer']}, {sc['images_per_s']:.1f} images/s")
    print(f"\npeak RSS of the harness process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
