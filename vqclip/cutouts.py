"""Random cutouts with augmentations, for every item and cutout of a batch in one sampling pass.

Each cutout is an affine view of its image (crop position and size, flip, rotation, shift) drawn
with `grid_sample`, so a whole batch of items times cutouts is one kernel call instead of a Python
loop. Random parameters come from each item's own generator, so an item's cutouts do not depend on
which other items share its batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_ROTATION = math.radians(15)
MAX_SHIFT = 0.1


def _item_thetas(
    generator: torch.Generator, cutn: int, height: int, width: int, cut_size: int, cut_pow: float, augment: bool
) -> torch.Tensor:
    """Affine matrices (cutn, 2, 3) mapping cutout coordinates to image coordinates in [-1, 1]."""
    device = generator.device
    max_size = min(height, width)
    min_size = min(max_size, cut_size)
    size = torch.rand(cutn, generator=generator, device=device) ** cut_pow * (max_size - min_size) + min_size
    free_x = (width - size) / width
    free_y = (height - size) / height
    centre_x = (torch.rand(cutn, generator=generator, device=device) * 2 - 1) * free_x
    centre_y = (torch.rand(cutn, generator=generator, device=device) * 2 - 1) * free_y
    scale_x, scale_y = size / width, size / height
    if augment:
        angle = (torch.rand(cutn, generator=generator, device=device) * 2 - 1) * MAX_ROTATION
        flip = torch.where(torch.rand(cutn, generator=generator, device=device) < 0.5, -1.0, 1.0)
        shift = (torch.rand(cutn, 2, generator=generator, device=device) * 2 - 1) * MAX_SHIFT
    else:
        angle = torch.zeros(cutn, device=device)
        flip = torch.ones(cutn, device=device)
        shift = torch.zeros(cutn, 2, device=device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([scale_x * cos * flip, -scale_x * sin, centre_x + scale_x * shift[:, 0]], dim=1),
            torch.stack([scale_y * sin * flip, scale_y * cos, centre_y + scale_y * shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    return theta


def make_cutouts(
    images: torch.Tensor,
    generators: list[torch.Generator],
    cutn: int,
    cut_size: int,
    cut_pow: float = 1.0,
    augment: bool = True,
    noise_fac: float = 0.0,
) -> torch.Tensor:
    """Cutouts of shape (batch * cutn, C, cut_size, cut_size) from images (batch, C, H, W) in [0, 1].

    Sampling runs at a multiple of `cut_size` and is average-pooled down, so cutouts much larger
    than CLIP's input are filtered rather than aliased (like the area pooling of the reference
    implementations).
    """
    batch, channels, height, width = images.shape
    thetas = torch.cat(
        [_item_thetas(g, cutn, height, width, cut_size, cut_pow, augment) for g in generators]
    ).to(images.dtype)
    supersample = max(1, min(4, math.ceil(min(height, width) / cut_size)))
    grid = F.affine_grid(thetas, [batch * cutn, channels, cut_size * supersample, cut_size * supersample], align_corners=False)
    sources = images.repeat_interleave(cutn, dim=0)
    cutouts = F.grid_sample(sources, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if supersample > 1:
        cutouts = F.avg_pool2d(cutouts, supersample)
    if noise_fac:
        noise = torch.cat(
            [
                torch.randn(cutn, channels, cut_size, cut_size, generator=g, device=g.device)
                * torch.rand(cutn, 1, 1, 1, generator=g, device=g.device)
                * noise_fac
                for g in generators
            ]
        ).to(cutouts.dtype)
        cutouts = cutouts + noise
    return cutouts
