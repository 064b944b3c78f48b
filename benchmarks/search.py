"""Search at scale on synthetic embeddings: index build, incremental update and query latency.

    python -m benchmarks.search [--images 100000] [--runs 100] [--dim 512] [--queries 50] [--storage DIR|s3://...] [--json FILE]

Writes `--runs` index segments of random unit vectors (float16, as scoring stores them) into a
store (a temporary folder unless `--storage`), then times: writing them all; a reader loading the
whole index from scratch; adding one more run (its segment written, then a reader's refresh, which
reads only that segment); and queries (brute-force matrix products and top-k, `ModelGroup.top`)
over every image and over one run's images. No CLIP model is loaded: encoding a text query is the
model's cost, the same whatever the store's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np

from vqclip.search.index import EmbeddingIndex, Segment, write_segment
from vqclip.storage import open_store

SCORER = "ViT-B-16/laion2b_s34b_b88k"


def synthetic_segment(run_id: str, count: int, dim: int, rng: np.random.Generator) -> Segment:
    """A run's index rows with random unit vectors and made-up ids, prompts and scores."""
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.array([f"{n:020x}" for n in rng.integers(0, 2**63, count)])
    return Segment(
        scorer=SCORER,
        run_id=run_id,
        item_ids=ids,
        prompt_ids=np.array([f"p{n % 50:03d}" for n in range(count)]),
        prompts=np.array([f"synthetic prompt number {n % 50}" for n in range(count)]),
        image_keys=np.array([f"runs/{run_id}/items/{i}.png" for i in ids]),
        scores=rng.uniform(15, 35, count).astype(np.float32),
        vectors=vectors.astype(np.float16),
        filtered=np.zeros(count, dtype=bool),
    )


def measure(store, images: int, runs: int, dim: int, queries: int, top: int = 10) -> dict:
    """Every figure of the benchmark, in seconds, on `store` (which should hold no index yet)."""
    rng = np.random.default_rng(0)
    per_run = images // runs
    segments = [synthetic_segment(f"bench-{n:05d}", per_run, dim, rng) for n in range(runs)]
    started = time.perf_counter()
    for segment in segments:
        write_segment(store, segment)
    write_all = time.perf_counter() - started

    started = time.perf_counter()
    index = EmbeddingIndex(store)
    group = index.refresh()[SCORER]
    load_all = time.perf_counter() - started

    extra = synthetic_segment("bench-extra", per_run, dim, rng)
    started = time.perf_counter()
    write_segment(store, extra)
    add_write = time.perf_counter() - started
    started = time.perf_counter()
    group = index.refresh()[SCORER]
    add_refresh = time.perf_counter() - started

    vectors = rng.standard_normal((queries + 1, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def query_times(runs_filter: set[str] | None) -> list[float]:
        times = []
        for query in vectors:
            started = time.perf_counter()
            group.top(query, top, runs_filter)
            times.append(time.perf_counter() - started)
        return times[1:]  # the first warms the caches

    every = query_times(None)
    one_run = query_times({"bench-00000"})
    return {
        "images": group.size(),
        "dim": dim,
        "runs": runs + 1,
        "index_mib": round(sum(store.size(k) for k in store.list("index/")) / 2**20, 1),
        "write_all_s": round(write_all, 3),
        "load_all_s": round(load_all, 3),
        "add_run_write_s": round(add_write, 4),
        "add_run_refresh_s": round(add_refresh, 3),
        "query_all_ms_median": round(1000 * statistics.median(every), 2),
        "query_all_ms_p95": round(1000 * sorted(every)[int(0.95 * len(every))], 2),
        "query_one_run_ms_median": round(1000 * statistics.median(one_run), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--storage", help="An empty folder or s3://bucket/prefix (default: a temporary folder).")
    parser.add_argument("--json", help="Also write the figures to this file.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vqclip-search-bench-") as folder:
        figures = measure(open_store(args.storage or folder), args.images, args.runs, args.dim, args.queries)
    for name, value in figures.items():
        print(f"{name:26} {value}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
