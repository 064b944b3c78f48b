"""CLIP scoring (the CLIPScore convention, per image) and ranking within each prompt."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from vqclip.models.clip import ClipModel


def score(images: list[Image.Image], prompts: list[str], scorer: ClipModel, batch_size: int = 32) -> list[float]:
    """CLIPScore of each image against its prompt: ``100 * max(cos(image, text), 0)``.

    The same formula as torchmetrics' CLIPScore, but per image and clamped per image rather than on
    the batch mean. Images go through the scoring model's own evaluation transform.
    """
    return score_and_embed(images, prompts, scorer, batch_size)[0]


@torch.no_grad()
def score_and_embed(
    images: list[Image.Image], prompts: list[str], scorer: ClipModel, batch_size: int = 32
) -> tuple[list[float], np.ndarray]:
    """Each image's CLIPScore against its prompt, and its L2-normalised image embedding (float32 rows)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    scores: list[float] = []
    embeddings = embed_images(images, scorer, batch_size)
    for start in range(0, len(images), batch_size):
        image_embeds = torch.from_numpy(embeddings[start : start + batch_size]).to(scorer.mean.device)
        text_embeds = F.normalize(scorer.embed_text(prompts[start : start + batch_size]), dim=-1)
        cosine = (image_embeds * text_embeds).sum(-1)
        scores += (100 * cosine.clamp(min=0)).tolist()
    return scores, embeddings


@torch.no_grad()
def embed_images(images: list[Image.Image], scorer: ClipModel, batch_size: int = 32) -> np.ndarray:
    """L2-normalised embeddings of images through the model's own evaluation transform, one float32 row each."""
    device = scorer.mean.device
    transform = open_clip.image_transform(
        scorer.image_size, is_train=False, mean=tuple(scorer.mean.tolist()), std=tuple(scorer.std.tolist())
    )
    rows = [np.zeros((0, scorer.model.visual.output_dim), dtype=np.float32)]
    for start in range(0, len(images), batch_size):
        batch = torch.stack([transform(image.convert("RGB")) for image in images[start : start + batch_size]])
        rows.append(F.normalize(scorer.model.encode_image(batch.to(device)).float(), dim=-1).cpu().numpy())
    return np.concatenate(rows)


@torch.no_grad()
def embed_texts(texts: list[str], scorer: ClipModel) -> np.ndarray:
    """L2-normalised text embeddings, one float32 row each."""
    return F.normalize(scorer.embed_text(texts), dim=-1).cpu().numpy()


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
