"""Checking a CLIP model name that a manifest gives, without importing torch where the presets suffice."""

from __future__ import annotations

from vqclip.errors import ModelError
from vqclip.models.catalog import TINY_CLIPS
from vqclip.models.spec import RANDOM, split_clip_name
from vqclip.models.weights import PRESET_WEIGHT_LOCATIONS, open_clip_models


def check_clip_name(name: str) -> None:
    """Raise ModelError unless `name` is a known open_clip model with a known pretrained tag (or 'random')."""
    model, tag = split_clip_name(name)
    if model in TINY_CLIPS:
        if tag != RANDOM:
            raise ModelError(f"{model} has no trained weights; write it as '{model}/{RANDOM}'")
        return
    if model not in open_clip_models():
        raise ModelError(
            f"unknown CLIP model {model!r}; use one of `open_clip.list_models()` (e.g. ViT-B-32) "
            f"or {', '.join(TINY_CLIPS)}"
        )
    if tag == RANDOM or name in PRESET_WEIGHT_LOCATIONS:
        return
    import open_clip  # only for tags the presets do not use: it imports torch

    # Local weight files are not accepted: a manifest must not point a worker at arbitrary files on its disk.
    if not open_clip.get_pretrained_cfg(model, tag):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ModelError(
            f"{tag!r} is not a pretrained tag of {model}; known tags: {tags}; or '{RANDOM}' for random weights"
        )
