"""CLIP models through open_clip: pretrained tags resolved to cached files, or deterministic random weights."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP
from torch import nn

from vqclip.errors import ModelError
from vqclip.models.catalog import TINY_CLIPS
from vqclip.models.checkpoint import load_assigned, mapped_loads, meta_parameters
from vqclip.models.spec import split_clip_name
from vqclip.models.weights import pretrained_cfg

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
RANDOM_WEIGHTS_SEED = 20211


@dataclass
class ClipModel:
    """A CLIP model with what generation and scoring need beside it."""

    name: str
    model: nn.Module
    tokenizer: object
    image_size: int
    mean: torch.Tensor
    std: torch.Tensor

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1] to the model's input statistics."""
        return (images - self.mean.to(images)[:, None, None]) / self.std.to(images)[:, None, None]

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings (not normalised), one row per text."""
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(texts).to(device)).float()

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of images in [0, 1] already at `image_size` (keeps the graph for gradients)."""
        return self.model.encode_image(self.normalize(images))


def _untrained_clip(model: str, quick_gelu: bool = False) -> nn.Module:
    """open_clip's `model` without weights loaded (random, or on the meta device inside `meta_parameters`)."""
    # open_clip warns on the root logger that no weights were loaded: here that is the point.
    logging.disable(logging.WARNING)
    try:
        # No device: open_clip moves the model to it, and meta parameters cannot move.
        return open_clip.create_model(model, pretrained=None, device=None, force_quick_gelu=quick_gelu)
    finally:
        logging.disable(logging.NOTSET)


def _random_clip(model: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return CLIP(**TINY_CLIPS[model]) if model in TINY_CLIPS else _untrained_clip(model)


def _load_clip(model: str, weights: Path, quick_gelu: bool) -> nn.Module:
    """open_clip's `model` built on the meta device and given the tensors of `weights`, read through a memory map."""
    with meta_parameters():
        clip = _untrained_clip(model, quick_gelu)
    # open_clip's load_checkpoint converts older state dicts and resizes position embeddings, then calls the
    # model's load_state_dict: this model's own copy of that method assigns the tensors instead of copying.
    clip.load_state_dict = functools.partial(load_assigned, clip)
    try:
        with mapped_loads(weights):
            open_clip.load_checkpoint(clip, str(weights))
    finally:
        del clip.load_state_dict
    return clip


def build_clip(name: str, weights: Path | None, device: torch.device) -> ClipModel:
    """Build a CLIP model from its weight file (None: deterministic random weights), in eval mode."""
    model_name, tag = split_clip_name(name)
    mean, std = OPENAI_MEAN, OPENAI_STD
    if weights is None:
        model = _random_clip(model_name)
    else:
        cfg = {} if os.path.isfile(tag) else pretrained_cfg(model_name, tag)
        mean, std = cfg.get("mean", mean), cfg.get("std", std)
        try:
            model = _load_clip(model_name, weights, bool(cfg.get("quick_gelu", False)))
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ModelError(f"could not load CLIP {name} from {weights}: {exc}") from None
    model = model.to(device).eval().requires_grad_(False)
    tokenizer_name = "ViT-B-32" if model_name in TINY_CLIPS else model_name
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    return ClipModel(
        name=name,
        model=model,
        tokenizer=open_clip.get_tokenizer(tokenizer_name),
        image_size=int(image_size),
        mean=torch.tensor(mean, device=device),
        std=torch.tensor(std, device=device),
    )
