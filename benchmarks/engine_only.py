"""The engine alone on a manifest's items, as a process: the baseline of the orchestration figure.

    python -m benchmarks.engine_only MANIFEST [--device cpu|cuda]

Imports, loads the models and generates the items shard by shard as `vqclip run` would, without
Prefect, storage or scoring; prints the seconds spent generating.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

from vqclip.generate import generate
from vqclip.manifest import load_manifest_file, shards
from vqclip.models.loader import load_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    manifest = load_manifest_file(args.manifest)
    items = manifest.plan()
    models = load_models(items[0].models, device=args.device, include_scorer=False)
    started = time.perf_counter()
    for shard in shards(items, manifest.batch_size):
        generate(shard, models)
    print(time.perf_counter() - started)
    gc.freeze()  # as `vqclip.cli.main` does at exit: the comparison leaves the interpreter's teardown out


if __name__ == "__main__":
    main()
