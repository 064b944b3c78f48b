"""CLIP scoring (the CLIPScore convention, per image) and ranking within each prompt."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from vqclip.models.clip import ClipModel


@torch.no_grad()
def score(images: list[Image.Image], prompts: list[str], scorer: ClipModel, batch_size: int = 32) -> list[float]:
    """CLIPScore of each image against its prompt: ``100 * max(cos(image, text), 0)``.

    The same formula as torchmetrics' CLIPScore, but per image and clamped per image rather than on
    the batch mean. Images go through the scoring model's own evaluation transform.
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    device = scorer.mean.device
    transform = open_clip.image_transform(
        scorer.image_size, is_train=False, mean=tuple(scorer.mean.tolist()), std=tuple(scorer.std.tolist())
    )
    scores: list[float] = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([transform(image.convert("RGB")) for image in images[start : start + batch_size]])
        image_embeds = F.normalize(scorer.model.encode_image(batch.to(device)).float(), dim=-1)
        text_embeds = F.normalize(scorer.embed_text(prompts[start : start + batch_size]), dim=-1)
        cosine = (image_embeds * text_embeds).sum(-1)
        scores += (100 * cosine.clamp(min=0)).tolist()
    return scores


@dataclass(frozen=True)
class Scored:
    """An image's score within its prompt."""

    prompt_id: str
    item_id: str
    score: float


def rank(entries: list[Scored]) -> dict[str, list[Scored]]:
    """Per prompt, its images best first; equal scores fall back to item id order."""
    groups: dict[str, list[Scored]] = defaultdict(list)
    for entry in entries:
        groups[entry.prompt_id].append(entry)
    return {prompt: sorted(group, key=lambda e: (-e.score, e.item_id)) for prompt, group in sorted(groups.items())}
