"""The engine alone on a manifest's items, as a process: the baseline of the orchestration figure.

    python -m benchmarks.engine_only MANIFEST [--device cpu|cuda]

Imports, loads the models and runs the items shard by shard through `run_shard`, as `vqclip run`'s
shard task does (images stored in a temporary folder), without Prefect or scoring; prints the
seconds spent generating and storing.
"""

from __future__ import annotations

import argparse
import gc
import logging
import tempfile
import time
from pathlib import Path

from vqclip.config import get_config
from vqclip.manifest import load_manifest_file, shards
from vqclip.models.loader import load_models
from vqclip.run.shard import run_shard
from vqclip.storage import LocalStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    manifest = load_manifest_file(args.manifest)
    items = manifest.plan()
    models = load_models(items[0].models, device=args.device, include_scorer=False)
    config, log = get_config(), logging.getLogger("benchmarks.engine_only")
    with tempfile.TemporaryDirectory(prefix="vqclip-engine-only-") as folder:
        store = LocalStore(folder)
        started = time.perf_counter()
        for shard in shards(items, manifest.shard_size):
            run_shard(shard, "engine-only", store, lambda _: models, config, log)
        print(time.perf_counter() - started)
    gc.freeze()  # as `vqclip.cli.main` does at exit: the comparison leaves the interpreter's teardown out


if __name__ == "__main__":
    main()
