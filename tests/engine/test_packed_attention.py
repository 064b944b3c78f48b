"""Packed attention: CLIP's image attention as one matrix product per projection, with torch's results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tests.helpers.engine import FEW_STEPS, item, pixels
from vqclip.config import Config
from vqclip.engine.attention import PackedSelfAttention, pack_attention
from vqclip.engine.generate import generate


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operation makes."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.numel = max([self.numel] + [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)])
        return out


@pytest.fixture
def visual(tiny_models):
    """The first tiny guide and its image tower, packed again afterwards (the default)."""
    clip = tiny_models.guides[0][0]
    yield clip, clip.model.visual
    pack_attention(clip.model.visual, True)


def embed_with_gradient(clip, cutouts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cutouts = cutouts.clone().requires_grad_(True)
    embeds = clip.embed_images(cutouts)
    embeds.square().sum().backward()
    return embeds.detach(), cutouts.grad


@pytest.mark.parametrize("masked", [False, True])
def test_packed_attention_matches_torch_in_values_and_gradients(masked):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(64, 4, batch_first=True).requires_grad_(False)
    tokens = torch.randn(3, 10, 64)
    mask = torch.full((10, 10), float("-inf")).triu(1) if masked else None
    results = []
    for packed in (False, True):
        pack_attention(attention, packed)
        x = tokens.clone().requires_grad_(True)
        out, _ = attention(x, x, x, need_weights=False, attn_mask=mask)
        out.square().sum().backward()
        results.append((out.detach(), x.grad))
    assert isinstance(attention, PackedSelfAttention)
    (torch_out, torch_grad), (packed_out, packed_grad) = results
    assert torch.allclose(packed_out, torch_out, atol=1e-5)
    assert torch.allclose(packed_grad, torch_grad, atol=1e-5)


def test_the_guide_embeds_cutouts_the_same_packed(visual):
    clip, tower = visual
    cutouts = torch.rand(8, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(1))
    pack_attention(tower, False)
    torch_embeds, torch_grad = embed_with_gradient(clip, cutouts)
    pack_attention(tower, True)
    packed_embeds, packed_grad = embed_with_gradient(clip, cutouts)
    assert torch.allclose(packed_embeds, torch_embeds, atol=1e-5)
    assert torch.allclose(packed_grad, torch_grad, atol=1e-6)


def test_packed_attention_copies_no_projection_weight_per_token(visual):
    clip, tower = visual
    cutouts = torch.rand(8, 3, clip.image_size, clip.image_size)
    tokens = (clip.image_size // tower.patch_size[0]) ** 2 + 1
    weight_per_token = tokens * tower.transformer.resblocks[0].attn.in_proj_weight.numel()
    largest = {}
    for packed in (False, True):
        pack_attention(tower, packed)
        with LargestTensor() as mode:
            embed_with_gradient(clip, cutouts)
        largest[packed] = mode.numel
    assert largest[False] >= weight_per_token  # torch's attention: the weight copied once per token position
    assert largest[True] < weight_per_token


@pytest.mark.slow
def test_packed_attention_is_the_default_and_turning_it_off_keeps_the_image(tiny_models, visual):
    batch = [item("a red fox", 7, FEW_STEPS)]
    (unpacked,) = generate(batch, tiny_models, Config(packed_attention=False))
    assert type(visual[1].transformer.resblocks[0].attn) is nn.MultiheadAttention
    (packed,) = generate(batch, tiny_models, Config())
    assert isinstance(visual[1].transformer.resblocks[0].attn, PackedSelfAttention)
    assert np.abs(pixels(packed) - pixels(unpacked)).max() <= 2
