"""Model loading: one call, a preset or model spec in, ready models out (kept per process)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from vqclip.config import Config, get_config
from vqclip.errors import ModelError
from vqclip.models.clip import ClipModel, build_clip
from vqclip.models.download import HubFile, Wanted, ensure_files
from vqclip.models.presets import models_for_preset
from vqclip.models.spec import ModelSpec
from vqclip.models.vqgan import VQGAN, build_vqgan, load_vqgan
from vqclip.models.weights import clip_name, clip_weight_file, required_files

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_SEED = 1207
_LOADED: dict[tuple[str, str], object] = {}
_LOADING = threading.RLock()  # one load at a time: a second caller waits for, then reuses, the first's models


@dataclass
class Models:
    """Everything one process needs to generate and score images for one ModelSpec."""

    spec: ModelSpec
    vqgan: VQGAN
    guides: list[tuple[ClipModel, float]]
    scorer: ClipModel | None
    device: torch.device


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _vqgan(spec: ModelSpec, config: Config, device: torch.device) -> VQGAN:
    vq = spec.vqgan_spec
    key = (f"vqgan:{vq.name}:{'random' if spec.synthetic else 'trained'}", str(device))
    if key not in _LOADED:
        if spec.synthetic:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = build_vqgan(vq.architecture, vq.target)
                # taming initialises codes in +-1/n_embed, which leaves a random model no room to move.
                torch.nn.init.normal_(model.codebook)
        else:
            model = load_vqgan(config.vqgan_cache / vq.config.filename, config.vqgan_cache / vq.checkpoint.filename)
        _LOADED[key] = model.to(device).eval().requires_grad_(False)
    return _LOADED[key]


def _clip(name: str, config: Config, device: torch.device) -> ClipModel:
    key = (f"clip:{name}", str(device))
    if key not in _LOADED:
        source = clip_weight_file(name, config)
        if isinstance(source, HubFile):
            source = source.cached()
            if source is None:  # the callers fetch first: reaching here is a bug, not random weights
                raise ModelError(f"CLIP {name}: its weights were not fetched before loading")
        _LOADED[key] = build_clip(name, source.path if isinstance(source, Wanted) else source, device)
    return _LOADED[key]


def load_models(
    spec: ModelSpec | str,
    config: Config | None = None,
    device: torch.device | str | None = None,
    include_scorer: bool = True,
) -> Models:
    """Fetch (if needed) and build the VQGAN, guiding CLIPs and scoring CLIP of a preset or spec.

    Models are kept for the life of the process, so later calls with the same spec are free.
    """
    config = config or get_config()
    spec = models_for_preset(spec) if isinstance(spec, str) else spec
    device = resolve_device(device or config.device) if not isinstance(device, torch.device) else device
    with _LOADING:
        ensure_files(required_files(spec, config, include_scorer), config)
        guides = [(_clip(clip_name(name, spec.random_weights), config, device), weight) for name, weight in spec.guides]
        scorer = _clip(clip_name(spec.scorer, spec.random_weights), config, device) if include_scorer else None
        return Models(spec=spec, vqgan=_vqgan(spec, config, device), guides=guides, scorer=scorer, device=device)


def preload_models(specs: Iterable[ModelSpec]) -> threading.Thread:
    """Start loading the models of `specs` on a background thread (while Prefect starts its API, say).

    A later `load_models` call waits for this load and reuses its models. A failure here is only
    logged: the later call meets it again and reports it.
    """

    def load() -> None:
        for spec in specs:
            try:
                load_models(spec)
            except Exception as exc:  # noqa: BLE001 - reported by the load that needs the models
                log.debug("preloading %s failed: %s", spec, exc)

    thread = threading.Thread(target=load, name="vqclip-preload", daemon=True)
    thread.start()
    return thread


def load_scorer(name: str, config: Config | None = None, device: torch.device | str | None = None) -> ClipModel:
    """Fetch (if needed) and build one CLIP model for scoring."""
    config = config or get_config()
    device = resolve_device(device or config.device) if not isinstance(device, torch.device) else device
    with _LOADING:
        source = clip_weight_file(name, config)
        if isinstance(source, (Wanted, HubFile)):
            ensure_files([source], config)
        return _clip(name, config, device)


def unload_models() -> None:
    """Forget every model this process loaded (tests; freeing memory)."""
    with _LOADING:
        _LOADED.clear()


