"""Fill a weight cache with the default preset's files, in their real formats, holding random weights.

    python -m benchmarks.fake_cache CACHE_DIR

For measuring load time from a local cache on a machine that cannot download the real weights:
the files have the real sizes and formats (taming YAML + Lightning-style checkpoint, open_clip
state dicts), so loading them exercises the same code and the same bytes as the real ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from vqclip.config import Config
from vqclip.models.clip import _random_clip
from vqclip.models.download import HubFile, Wanted, Weights
from vqclip.models.loader import RANDOM_WEIGHTS_SEED, required_files
from vqclip.models.presets import models_for_preset
from vqclip.models.spec import split_clip_name
from vqclip.models.vqgan import build_vqgan


def fill(cache: Path, preset: str = "default") -> list[Path]:
    """Write every file `preset` needs into `cache`; return their paths."""
    settings = Config(cache_dir=cache)
    spec = models_for_preset(preset)
    vq = spec.vqgan_spec
    written = []
    for wanted in required_files(spec, settings):
        path = _place(wanted)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(wanted, Wanted) and wanted.remote == vq.config:
            config = {"model": {"target": vq.target, "params": vq.architecture}}
            path.write_text(yaml.safe_dump(config))
        elif isinstance(wanted, Wanted) and wanted.remote == vq.checkpoint:
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            torch.save({"global_step": 0, "state_dict": build_vqgan(vq.architecture, vq.target).state_dict()}, path)
        else:
            clip = next(name for name in [g for g, _ in spec.guides] + [spec.scorer] if _owns(name, wanted, settings))
            torch.save(_random_clip(split_clip_name(clip)[0]).state_dict(), path)
        written.append(path)
    return written


def _place(file: Weights) -> Path:
    """Where the file goes for the engine to find it cached; a Hub file in huggingface_hub's cache layout."""
    if isinstance(file, Wanted):
        return file.path
    assert isinstance(file, HubFile)
    commit = "0" * 40
    repo = file.folder / f"models--{file.repo.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / file.revision).write_text(commit)
    return repo / "snapshots" / commit / file.filename


def _owns(clip: str, wanted: Weights, config: Config) -> bool:
    from vqclip.models.weights import clip_weight_file

    return clip_weight_file(clip, config) == wanted


if __name__ == "__main__":
    for path in fill(Path(sys.argv[1])):
        print(path)
