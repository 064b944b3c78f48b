"""Which weight files a model needs and where they are cached, known without importing torch.

open_clip's registries sit behind a package that imports torch (seconds of a CPU). Its model names are
the stems of its own `model_configs/*.json` files, read from disk here; its pretrained tags are Python
code, so the weight locations of the pretrained CLIPs the presets name are copied below (tests check
them against open_clip) and any other name asks open_clip itself. So `vqclip validate`, `models` and
the missing-weights check of `vqclip run` stay light for the presets.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from pathlib import Path

from vqclip.config import Config
from vqclip.errors import ModelError
from vqclip.models.catalog import TINY_CLIPS, VQGANS, RemoteFile
from vqclip.models.download import HubFile, Wanted, Weights, is_cached
from vqclip.models.presets import PRESETS, models_for_preset
from vqclip.models.spec import RANDOM, ModelSpec, split_clip_name

HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
"""open_clip's file name of a Hugging Face Hub checkpoint whose `hf_hub` names only a repository."""

PRESET_WEIGHT_LOCATIONS: dict[str, dict[str, str]] = {
    "ViT-B-32/laion2b_s34b_b79k": {"hf_hub": "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/"},
    "ViT-B-16/laion2b_s34b_b88k": {"hf_hub": "laion/CLIP-ViT-B-16-laion2B-s34B-b88K/"},
    "ViT-L-14/laion2b_s32b_b82k": {"hf_hub": "laion/CLIP-ViT-L-14-laion2B-s32B-b82K/"},
    "ViT-B-32/openai": {"hf_hub": "timm/vit_base_patch32_clip_224.openai/"},
    "ViT-B-16/openai": {"hf_hub": "timm/vit_base_patch16_clip_224.openai/"},
}
"""The `hf_hub` (or `url`) of open_clip's pretrained config of each pretrained CLIP the presets name."""


@cache
def open_clip_models() -> frozenset[str]:
    """open_clip's model names (`open_clip.list_models()`), from its config files on disk."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    return frozenset(path.stem for path in (Path(spec.submodule_search_locations[0]) / "model_configs").glob("*.json"))


def pretrained_cfg(model: str, tag: str) -> dict:
    """open_clip's whole pretrained config of ``model/tag`` (imports open_clip), or a ModelError naming the known tags."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        known = ", ".join(tags) if tags else "none (check the model name with `open_clip.list_models()`)"
        raise ModelError(
            f"CLIP {model}/{tag}: {tag!r} is not a pretrained tag of {model} nor an existing weight file; "
            f"known tags: {known}; or '{RANDOM}' for random weights"
        )
    return cfg


def _weight_location(model: str, tag: str) -> dict[str, str]:
    return PRESET_WEIGHT_LOCATIONS.get(f"{model}/{tag}") or pretrained_cfg(model, tag)


def clip_weight_file(name: str, config: Config) -> Weights | Path | None:
    """Where a CLIP model's weights come from: a cached or local Path, a file to download, or None (random)."""
    model, tag = split_clip_name(name)
    if tag == RANDOM:
        return None
    if model in TINY_CLIPS:
        raise ModelError(f"{model} has no trained weights; write it as '{model}/{RANDOM}'")
    if os.path.isfile(tag):
        return Path(tag)
    cfg = _weight_location(model, tag)
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        hub = HubFile(repo, filename or HF_WEIGHTS_NAME, config.clip_cache, name)
        return hub.cached() or hub
    url = cfg["url"]
    return Wanted(RemoteFile(url.rsplit("/", 1)[-1], (url,)), config.clip_cache / model, name)


def clip_name(name: str, random_weights: bool) -> str:
    """`name` as loaded: its architecture with random weights when the spec asks for them."""
    model, _ = split_clip_name(name)
    return f"{model}/{RANDOM}" if random_weights else name


def required_files(spec: ModelSpec, config: Config, include_scorer: bool = True) -> list[Weights]:
    """The weight files `spec` needs that have to come from the cache (downloaded if missing)."""
    wanted: list[Weights] = []
    vq = spec.vqgan_spec
    if not spec.synthetic:
        wanted += [Wanted(vq.config, config.vqgan_cache, vq.name), Wanted(vq.checkpoint, config.vqgan_cache, vq.name)]
    names = [name for name, _ in spec.guides] + ([spec.scorer] if include_scorer else [])
    for name in names:
        source = clip_weight_file(clip_name(name, spec.random_weights), config)
        if isinstance(source, (Wanted, HubFile)) and source not in wanted:
            wanted.append(source)
    return wanted


def named_files(name: str, config: Config) -> list[Weights]:
    """The weight files of a preset, a VQGAN or an open_clip ``MODEL/PRETRAINED`` model, by name."""
    if name in PRESETS:
        return required_files(models_for_preset(name), config)
    if name in VQGANS:
        vq = VQGANS[name]
        return [] if vq.checkpoint is None else [Wanted(f, config.vqgan_cache, name) for f in (vq.config, vq.checkpoint)]
    if "/" not in name:
        raise ModelError(
            f"unknown model {name!r}; give a preset ({', '.join(PRESETS)}), a VQGAN ({', '.join(VQGANS)}) "
            "or an open_clip MODEL/PRETRAINED name such as ViT-B-32/laion2b_s34b_b79k"
        )
    source = clip_weight_file(name, config)
    return [source] if isinstance(source, (Wanted, HubFile)) else []


def cached_files(spec: ModelSpec, config: Config) -> list[tuple[Weights, bool]]:
    """Each weight file `spec` needs, and whether it is already in the cache."""
    return [(file, is_cached(file)) for file in required_files(spec, config)]
