"""The benchmark harness: engine throughput, memory, model load, orchestration overhead, scoring.

    python -m benchmarks.run [--device cpu|cuda] [--quick] [--json FILE] [--markdown FILE] [--only S,S] [--compile] [--orchestration 30x5]

Every figure is the median of several timed steps after a warm-up, measured side by side in this one
run; ratios compare against sequential batch-1 fp32 of the same run (on CUDA: strict fp32, TF32 and
channels-last off, as the reference scripts run). Full-size figures use the default preset's
architectures with random weights (compute does not depend on weight values). `--quick` uses the
tiny preset and a few steps, so CI can check that the harness still runs. A section that fails is
reported as such and the others still run; the JSON is rewritten after every section.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.engine_step import bench_items, step_times
from vqclip.config import Config
from vqclip.models.loader import Models, load_models, unload_models

STEPS_PER_IMAGE = 300
LARGEST_BATCH_CAP = 256
COMPILE_TIMEOUT_S = 150

# Engine variants beside the default settings; "fp32-strict" (batch 1) is what every ratio divides by.
FP32 = {"bf16": False}
STRICT_FP32 = {"bf16": False, "tf32": False}
BF16 = {"bf16": True}
BF16_CHANNELS_LAST = {"bf16": True, "channels_last": True}
BF16_CUDNN_BENCHMARK = {"bf16": True, "cudnn_benchmark": True}
BF16_COMPILE = {"bf16": True, "compile": True}


def _shape(quick: bool) -> tuple[str, int, int]:
    return ("tiny", 64, 8) if quick else ("default-random", 256, 32)


def _engine_row(models: Models, variant: str, switches: dict, batch: int, size: int, cutouts: int, repeats: int) -> dict:
    if models.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = step_times(models, bench_items(models.spec, batch, size, cutouts, repeats + 1), Config(**switches))
    seconds = statistics.median(times[1:])
    return {
        "variant": variant,
        "batch": batch,
        "s_per_step": seconds,
        "first_step_s": times[0],
        "images_per_hour": 3600 * batch / (seconds * STEPS_PER_IMAGE),
        "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if models.device.type == "cuda" else None,
    }


def largest_batch(models: Models, size: int, cutouts: int, switches: dict) -> int:
    """The batch the pipeline's auto-batching would pick on this GPU, capped at LARGEST_BATCH_CAP."""
    from vqclip.engine.batching import engine_batch_size

    items = bench_items(models.spec, LARGEST_BATCH_CAP, size, cutouts, 1)
    return engine_batch_size(models, items, Config(**switches))


def compiled(quick: bool, repeats: int, baseline: dict | None) -> dict:
    """bf16 + torch.compile at batch 16, in a child process so a slow compile cannot stall the harness."""
    preset, size, cutouts = _shape(quick)
    row = compiled_row(preset, size, cutouts, 16, repeats)
    if baseline and "images_per_hour" in row:
        row["vs_sequential_fp32"] = row["images_per_hour"] / baseline["images_per_hour"]
    return row


def compiled_row(preset: str, size: int, cutouts: int, batch: int, repeats: int) -> dict:
    """One engine row with torch.compile on, measured in a child process with a time limit."""
    code = (
        "import json; from benchmarks.run import _engine_row; from vqclip.engine.acceleration import Accelerated; "
        "from vqclip.models.loader import load_models; "
        f"m = load_models({preset!r}, device='cuda', include_scorer=False); "
        f"row = _engine_row(m, 'bf16-compile', {BF16_COMPILE!r}, {batch}, {size}, {cutouts}, {repeats}); "
        "print(json.dumps({**row, 'fell_back': Accelerated.compile_failed(m.vqgan)}))"
    )
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"variant": "bf16-compile", "batch": batch, "error": f"not measured: over {COMPILE_TIMEOUT_S} s"}
    if done.returncode:
        return {"variant": "bf16-compile", "batch": batch, "error": done.stderr.strip().splitlines()[-1][:300]}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["compile_and_run_s"] = time.perf_counter() - started
    if row.pop("fell_back"):
        row["error"] = "compile failed; eager fallback measured: " + done.stderr.strip().splitlines()[-1][:200]
    return row


def engine(device: str, quick: bool, repeats: int) -> list[dict]:
    """Seconds per step and images per hour at 300 steps, per batch size and variant."""
    preset, size, cutouts = _shape(quick)
    models = load_models(preset, device=device, include_scorer=False)
    if device == "cpu":
        plan = [("fp32", FP32, 1), ("fp32", FP32, 4)]
    else:
        largest = largest_batch(models, size, cutouts, BF16)
        plan = [("fp32-strict", STRICT_FP32, 1)]
        plan += [("fp32", FP32, batch) for batch in (1, 4, 16)]
        plan += [("bf16", BF16, batch) for batch in sorted({1, 4, 16, largest})]
        plan += [("bf16-channels-last", BF16_CHANNELS_LAST, 16), ("bf16-cudnn-benchmark", BF16_CUDNN_BENCHMARK, 16)]
    rows = [_engine_row(models, variant, switches, batch, size, cutouts, repeats) for variant, switches, batch in plan]
    for row in rows:
        row.update(preset=preset, size=size, cutouts=cutouts, vs_sequential_fp32=row["images_per_hour"] / rows[0]["images_per_hour"])
    return rows


def quality(device: str, quick: bool) -> dict:
    """The same 4 items after 100 steps: final guide similarity of batched bf16 against strict fp32
    (and of strict fp32 against itself, run again), and how far an item's pixels move when it runs
    alone instead of in the batch (strict fp32)."""
    import numpy as np

    from vqclip.engine.generate import generate

    if device == "cpu" and not quick:
        return {"note": "not measured on CPU: 2 x 4 full-size items x 100 steps take about an hour here"}
    preset, size, cutouts = _shape(quick)
    steps = 10 if quick else 100
    models = load_models(preset, device=device, include_scorer=False)
    items = bench_items(models.spec, 4, size, cutouts, steps)
    result: dict = {"items": len(items), "steps": steps}
    images = {}
    for label, switches in {"fp32": STRICT_FP32, "fp32_rerun": STRICT_FP32, "bf16": BF16}.items():
        results = generate(items, models, Config(**switches))
        images[label] = results[0].image
        finals = statistics.mean(v for r in results for v in r.similarity.values())
        firsts = statistics.mean(v for r in results for v in r.first_similarity.values())
        result.update({f"{label}_final_similarity": finals, f"{label}_rise": finals - firsts})
    fp32 = result["fp32_final_similarity"]
    result["bf16_vs_fp32"] = (result["bf16_final_similarity"] - fp32) / abs(fp32)
    # The same run again: on CUDA, non-deterministic kernels make this the noise floor of the line above.
    result["fp32_rerun_vs_fp32"] = (result["fp32_rerun_final_similarity"] - fp32) / abs(fp32)
    (alone,) = generate(items[:1], models, Config(**STRICT_FP32))
    difference = np.abs(np.asarray(alone.image, dtype=int) - np.asarray(images["fp32"], dtype=int))
    result["alone_vs_batch_max_pixel_diff"] = int(difference.max())
    result["alone_vs_batch_mean_pixel_diff"] = float(difference.mean())
    return result


def memory_cpu(quick: bool) -> list[dict]:
    """Peak RSS of a fresh process generating one step at batch 1 and 4 (CPU)."""
    preset, size, cutouts = _shape(quick)
    rows = []
    for batch in (1, 4):
        code = (
            "import resource; from benchmarks.engine_step import bench_items; from vqclip.engine.generate import generate; "
            "from vqclip.models.loader import load_models; "
            f"m = load_models({preset!r}, device='cpu', include_scorer=False); "
            f"generate(bench_items(m.spec, {batch}, {size}, {cutouts}, 2), m); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
        )
        kib = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1])
        rows.append({"preset": preset, "size": size, "batch": batch, "peak_rss_gib": kib / 2**20})
    return rows


def memory_cuda(quick: bool) -> list[dict]:
    """Peak CUDA memory of one image (batch 1) at 256, 512 and 768 px: strict fp32, bf16, bf16 + checkpointing.

    Each is measured after a first step at its shape, so first-time work (lazy kernel loading) is not counted.
    """
    from vqclip.engine.generate import generate

    preset, sizes = ("tiny", (64, 128)) if quick else ("default-random", (256, 512, 768))
    models = load_models(preset, device="cuda", include_scorer=False)
    variants = {"fp32-strict": STRICT_FP32, "bf16": BF16, "bf16-checkpointed": {**BF16, "checkpoint_side": 1}}
    rows = []
    for size in sizes:
        for label, switches in variants.items():
            generate(bench_items(models.spec, 1, size, 32, 1), models, Config(**switches))
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            seconds = statistics.median(step_times(models, bench_items(models.spec, 1, size, 32, 3), Config(**switches))[1:])
            rows.append({"size": size, "variant": label, "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30, "s_per_step": seconds})
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


def orchestration(device: str, quick: bool, plan: list[tuple[int, int]]) -> list[dict]:
    """A 16-item tiny manifest through `vqclip run` against the same items through the engine alone.

    Both are fresh processes that import, load the models and generate the same items; `vqclip run`
    also starts Prefect's temporary API server (unless PREFECT_API_URL names one), stores every
    image and sidecar, scores, ranks and writes the reports. At 300 steps per image (the manifests'
    default) and at 30, where the same fixed costs weigh ten times as much. The two run in
    alternating order, pair after pair (a slow minute on a shared machine moves one pair, not the
    median). Each side's fixed cost is the time from starting its process to the end of its first
    optimisation step (benchmarks.first_step). `plan` lists (steps per image, pairs).
    """
    if importlib.util.find_spec("prefect") is None:
        return [{"note": "not measured: Prefect is not installed in this environment"}]
    plan = ((5, 1),) if quick else plan
    return [_orchestration_row(device, steps, pairs) for steps, pairs in plan]


def _orchestration_row(device: str, steps: int, pairs: int) -> dict:
    from vqclip.manifest import load_manifest_file

    manifest = (
        f"defaults: {{preset: tiny, width: 64, height: 64, steps: {steps}, cutouts: 8, n: 4, shard_size: 4}}\n"
        "prompts: [a red fox, a castle, snow, a blue sea]\n"
    )
    env = {**os.environ, "VQCLIP_DEVICE": device, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    engine, generation, pipeline = [], [], []
    first_step: dict[str, list[float]] = {"engine": [], "vqclip_run": []}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.yaml"
        path.write_text(manifest)
        items = len(load_manifest_file(path).plan())

        def timed(side: str, *command: str) -> tuple[float, str]:
            """Run `python -m benchmarks.first_step FILE ...command` fresh; note its first step; return its seconds and stdout."""
            probe = Path(folder) / f"{side}-first-step"
            probe.unlink(missing_ok=True)
            launched, started = time.time(), time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "benchmarks.first_step", str(probe), *command], env=env, check=True, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            first_step[side].append(float(probe.read_text()) - launched)
            return seconds, done.stdout

        def run_engine() -> None:
            seconds, printed = timed("engine", "benchmarks.engine_only", str(path), "--device", device)
            engine.append(seconds)
            generation.append(float(printed.split()[-1]))

        def run_pipeline() -> None:
            seconds, _ = timed("vqclip_run", "vqclip.cli", "run", str(path), "--storage", str(Path(folder) / f"out{len(pipeline)}"))
            pipeline.append(seconds)

        for pair in range(pairs):
            for measure in (run_engine, run_pipeline) if pair % 2 == 0 else (run_pipeline, run_engine):
                measure()
    overheads = [run / alone - 1 for run, alone in zip(pipeline, engine)]
    return {
        "items": items,
        "steps": steps,
        "pairs": pairs,
        "prefect_api": os.environ.get("PREFECT_API_URL") or "temporary server",
        "engine_s": statistics.median(engine),
        "engine_generation_s": statistics.median(generation),
        "vqclip_run_s": statistics.median(pipeline),
        "overhead": statistics.median(overheads),
        "overhead_per_pair": overheads,
        "overhead_vs_generation_only": statistics.median(run / alone - 1 for run, alone in zip(pipeline, generation)),
        "engine_first_step_s": statistics.median(first_step["engine"]),
        "vqclip_run_first_step_s": statistics.median(first_step["vqclip_run"]),
        "vqclip_run_first_step_per_pair": first_step["vqclip_run"],
    }


def cpu_reference(quick: bool, pairs: int) -> dict:
    """One image's step and peak RSS, this engine's default CPU path against the reference-style loop.

    Both run in fresh processes (benchmarks.reference_loop), in alternating order pair after pair;
    the figures are medians over the pairs.
    """
    preset, size, cutouts = _shape(quick)
    steps = 3 if quick else 4
    runs: dict[str, list[dict]] = {"engine": [], "reference": []}
    for pair in range(pairs):
        for loop in ("engine", "reference") if pair % 2 == 0 else ("reference", "engine"):
            command = [sys.executable, "-m", "benchmarks.reference_loop", loop, "--preset", preset, "--size", str(size)]
            command += ["--cutouts", str(cutouts), "--steps", str(steps)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[loop].append(json.loads(done.stdout.strip().splitlines()[-1]))
    ours, theirs = ({key: statistics.median(run[key] for run in runs[loop]) for key in ("s_per_step", "peak_rss_gib")} for loop in ("engine", "reference"))
    return {
        "preset": preset,
        "size": size,
        "cutouts": cutouts,
        "pairs": pairs,
        "engine_s_per_step": ours["s_per_step"],
        "reference_s_per_step": theirs["s_per_step"],
        "step_vs_reference": ours["s_per_step"] / theirs["s_per_step"],
        "engine_peak_rss_gib": ours["peak_rss_gib"],
        "reference_peak_rss_gib": theirs["peak_rss_gib"],
        "ratio_per_pair": [e["s_per_step"] / r["s_per_step"] for e, r in zip(runs["engine"], runs["reference"])],
    }


def flops(device: str, quick: bool, rows: list[dict]) -> dict:
    """FLOPs of one step at the engine section's best batch, and the useful FLOP/s they make as a share of the GPU's dense bf16 peak."""
    from benchmarks.flops import peak_flops, step_flops

    preset, size, cutouts = _shape(quick)
    best = max(rows, key=lambda row: row["images_per_hour"])
    models = load_models(preset, device=device, include_scorer=False)
    switches = {"fp32": FP32, "fp32-strict": STRICT_FP32}.get(best["variant"], BF16)
    counted = step_flops(models, best["batch"], size, cutouts, Config(**switches))
    # The counted step includes the final decode (no gradients): about one decoder forward more than a step.
    achieved = counted / best["s_per_step"]
    peak = peak_flops(torch.cuda.get_device_name()) if device == "cuda" else None
    return {
        "variant": best["variant"],
        "batch": best["batch"],
        "tflop_per_step": counted / 1e12,
        "achieved_tflop_s": achieved / 1e12,
        "share_of_dense_bf16_peak": achieved / peak if peak else None,
    }


def scoring(device: str, quick: bool, repeats: int) -> dict:
    """Images scored per second by the default preset's scoring architecture, batches of 32."""
    from PIL import Image

    from vqclip.engine.score import score
    from vqclip.models.loader import load_scorer

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
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    # A copy of the tree whose .git is missing or stale (on a rented GPU machine, say) is told its commit.
    info["commit"] = os.environ.get("VQCLIP_COMMIT") or _git_commit()
    return info


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _number(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return " / ".join(_number(v) for v in value)
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _table(rows: list[dict]) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_number(row.get(c, "")) for c in columns) + " |" for row in rows]


def markdown(results: dict, command: str) -> str:
    """One run's results as a RESULTS.md entry: date, machine, command and commit, then a table per section."""
    info = results["machine"]
    where = info.get("gpu") or f"{info['cpu']} ({info['threads']} threads)"
    lines = [f"## {results['date']}: {where}, torch {info['torch']}, commit {info.get('commit', '?')}", "", f"`{command}`", ""]
    timings = results.get("section_seconds", {})
    lines += ["Seconds per section: " + ", ".join(f"{k} {v}" for k, v in timings.items()), ""] if timings else []
    for section, value in results.items():
        if section in ("machine", "date", "device", "quick", "section_seconds"):
            continue
        lines += [f"**{section}**", ""]
        lines += _table(value if isinstance(value, list) else [value]) + [""]
    return "\n".join(lines)


def _steps_by_pairs(text: str) -> list[tuple[int, int]]:
    try:
        plan = [tuple(int(n) for n in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        plan = []
    if not plan or any(len(row) != 2 or min(row) < 1 for row in plan):
        raise argparse.ArgumentTypeError(f"{text!r}: give STEPSxPAIRS, comma-separated, e.g. 300x3,30x5")
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny models and few repetitions (CI)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--markdown", type=Path, help="also append the results to this file as a RESULTS.md entry")
    parser.add_argument(
        "--orchestration", type=_steps_by_pairs, default=[(300, 3), (30, 5)], metavar="STEPSxPAIRS,...",
        help="the orchestration section's steps per image and pairs of runs for each (default 300x3,30x5)",
    )
    parser.add_argument("--only", help="comma-separated sections to run (engine, flops, quality, memory, cpu_reference, model_load, orchestration, scoring, compile)")
    parser.add_argument("--compile", action="store_true", help="also time bf16 + torch.compile on CUDA (about 2 minutes of compiling)")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else None
    repeats = 2 if args.quick else 5
    results: dict = {"machine": machine(), "device": args.device, "quick": args.quick, "date": time.strftime("%Y-%m-%d")}
    failed = []

    def section(name: str, measure: Callable[[], object], show: Callable[[object], None]) -> object:
        if wanted is not None and name not in wanted:
            return None
        started = time.perf_counter()
        try:
            results[name] = value = measure()
        except Exception:  # noqa: BLE001 - one broken section must not cost the others' figures
            failed.append(name)
            results[name] = {"error": traceback.format_exc(limit=3).strip().splitlines()[-1]}
            print(f"\n{name}: FAILED\n{traceback.format_exc()}", file=sys.stderr)
            value = None
        else:
            show(value)
        results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 1)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
        return value

    def show_engine(rows: list[dict]) -> None:
        print(f"\n1. engine ({rows[0]['preset']}, {rows[0]['size']} px, {rows[0]['cutouts']} cutouts, {STEPS_PER_IMAGE} steps per image)")
        print(f"{'variant':>22} {'batch':>6} {'s/step':>9} {'first step s':>13} {'images/h':>10} {'vs seq fp32':>12} {'peak GiB':>9}")
        for row in rows:
            peak = f"{row['peak_cuda_gib']:.2f}" if row["peak_cuda_gib"] is not None else "-"
            print(
                f"{row['variant']:>22} {row['batch']:>6} {row['s_per_step']:>9.4f} {row['first_step_s']:>13.2f} "
                f"{row['images_per_hour']:>10.1f} {row['vs_sequential_fp32']:>11.2f}x {peak:>9}"
            )

    def show_rows(title: str) -> Callable[[object], None]:
        def show(value: object) -> None:
            print(f"\n{title}")
            for row in value if isinstance(value, list) else [value]:
                print("   " + ", ".join(f"{k} {_number(v)}" for k, v in row.items()))

        return show

    rows = section("engine", lambda: engine(args.device, args.quick, repeats), show_engine)
    section("flops", lambda: flops(args.device, args.quick, rows), show_rows("1c. FLOPs per step (torch.utils.flop_counter) at the best row"))
    section("quality", lambda: quality(args.device, args.quick), show_rows("1b. quality (final guide similarity, same items)"))
    memory = (lambda: memory_cuda(args.quick)) if args.device == "cuda" else (lambda: memory_cpu(args.quick))
    section("memory", memory, show_rows("2. memory"))
    if args.device == "cpu":
        section("cpu_reference", lambda: cpu_reference(args.quick, 1 if args.quick else 3), show_rows("2b. CPU: this engine's default against the reference-style loop (one image)"))
    unload_models()
    step = rows[0]["s_per_step"] if rows else 1.0
    section("model_load", lambda: model_load(args.quick, step, args.device), show_rows("3. model load"))
    section("orchestration", lambda: orchestration(args.device, args.quick, args.orchestration), show_rows("4. orchestration"))
    section("scoring", lambda: scoring(args.device, args.quick, repeats), show_rows("5. scoring"))
    if args.device == "cuda" and (args.compile or (wanted and "compile" in wanted)):
        section("compile", lambda: compiled(args.quick, repeats, rows[0] if rows else None), show_rows("6. torch.compile"))
    print("\nseconds per section:", ", ".join(f"{k} {v}" for k, v in results["section_seconds"].items()))
    print(f"\npeak RSS of the harness process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if args.markdown:
        with args.markdown.open("a") as handle:
            handle.write("\n" + markdown(results, "python -m benchmarks.run " + " ".join(sys.argv[1:])) + "\n")
    if failed:
        sys.exit(f"sections that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
