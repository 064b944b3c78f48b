"""Cutouts for CLIP, for every item of a batch: this engine's method and the reference implementation's five.

`vqclip` (the default) takes every cutout as an affine view of its image (crop position and size,
flip, rotation, shift) drawn with `grid_sample`, so a whole batch of items times cutouts is one
kernel call instead of a Python loop. The reference's methods, by its names: `latest` and
`updatedpooling` take every cutout as the whole image, pooled to CLIP's size with an even mix of
adaptive average and max pooling, then augmented (vqclip.engine.augment); `original`, `updated` and
`nrupdated` take random square crops resampled to CLIP's size (a lanczos prefilter, then bicubic
interpolation), with no augmentation, a fixed list, or the chosen list. Random draws come from each
item's own generator, so an item's cutouts do not depend on which other items share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from vqclip.engine.augment import augment_per_item, chosen_augmentations, pooling_update_augmentations, updated_augmentations
from vqclip.engine.clamp import clamp_with_grad
from vqclip.items import REFERENCE_AUGMENTS, AugmentCode, CutMethod

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


def _affine_views(
    images: torch.Tensor, generators: list[torch.Generator], cutn: int, cut_size: int, cut_pow: float, augment: bool
) -> torch.Tensor:
    """This engine's cutouts: every item's affine views sampled in one pass.

    Sampling runs at a multiple of `cut_size` and is average-pooled down, so cutouts much larger
    than CLIP's input are filtered rather than aliased.
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
    return cutouts


def pooled(images: torch.Tensor, cut_size: int) -> torch.Tensor:
    """Whole images at `cut_size`, the mean of their adaptive average and adaptive max pooling (the reference's mix)."""
    return (F.adaptive_avg_pool2d(images, cut_size) + F.adaptive_max_pool2d(images, cut_size)) / 2


def lanczos_taps(ratio: float) -> torch.Tensor:
    """Normalised lanczos-2 filter taps spaced `ratio` apart (the output's size over the input's), for downsampling."""
    half = math.ceil(2 / ratio + 1) - 2
    x = torch.arange(-half, half + 1, dtype=torch.float64) * ratio
    taps = torch.where(x.abs() < 2, torch.special.sinc(x) * torch.special.sinc(x / 2), 0.0)
    return taps / taps.sum()


@lru_cache(maxsize=4096)
def resampling_matrix(source: int, target: int) -> torch.Tensor:
    """The (target, source) matrix of the reference's 1-D resampling: a lanczos prefilter (reflected at the edges)
    when shrinking, then bicubic interpolation with aligned corners.

    Both steps are linear, so they are applied once to unit impulses here; resampling is then two
    small matrix products instead of two convolutions with long kernels and an interpolation.
    """
    impulses = torch.eye(source, dtype=torch.float64)[None, None]  # column j: an impulse at j along the first axis
    if target < source:
        taps = lanczos_taps(target / source)
        pad = (len(taps) - 1) // 2
        impulses = F.conv2d(F.pad(impulses, (0, 0, pad, pad), mode="reflect"), taps[None, None, :, None])
    return F.interpolate(impulses, (target, source), mode="bicubic", align_corners=True)[0, 0].float()


def resample(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) images at size x size: lanczos-filtered along each side that shrinks, then bicubic (corners aligned)."""
    rows = resampling_matrix(images.shape[2], size).to(images)
    cols = resampling_matrix(images.shape[3], size).to(images)
    return rows @ images @ cols.T


def crop_sizes(generator: torch.Generator, cutn: int, height: int, width: int, cut_size: int, cut_pow: float) -> list[int]:
    """The reference's crop sides: int(min + (max - min) * u ** cut_pow), u uniform in [0, 1)."""
    largest = min(height, width)
    smallest = min(largest, cut_size)
    draws = torch.rand(cutn, generator=generator, dtype=torch.float64)
    return [int(u ** cut_pow * (largest - smallest) + smallest) for u in draws.tolist()]


def _random_crops(image: torch.Tensor, generator: torch.Generator, cutn: int, cut_size: int, cut_pow: float) -> torch.Tensor:
    """One item's (cutn, C, cut_size, cut_size) square crops at random places, resampled."""
    height, width = image.shape[1:]
    crops = []
    for size in crop_sizes(generator, cutn, height, width, cut_size, cut_pow):
        left = int(torch.randint(width - size + 1, (), generator=generator))
        top = int(torch.randint(height - size + 1, (), generator=generator))
        crops.append(resample(image[None, :, top : top + size, left : left + size], cut_size))
    return torch.cat(crops)


def _seed(generator: torch.Generator) -> int:
    """A seed drawn from `generator` (a host sync when it lives on a GPU)."""
    return int(torch.randint(2**62, (), generator=generator, device=generator.device))


def _reference_cutouts(
    images: torch.Tensor,
    generators: list[torch.Generator],
    cutn: int,
    cut_size: int,
    cut_pow: float,
    method: CutMethod,
    augments: Sequence[AugmentCode],
) -> torch.Tensor:
    """The reference's cut methods; crop places and kornia's draws come from a CPU generator seeded from each item's."""
    hosts = [torch.Generator().manual_seed(_seed(g)) for g in generators]
    if method in ("latest", "updatedpooling"):
        cutouts = pooled(images, cut_size).repeat_interleave(cutn, dim=0)
    else:
        cutouts = torch.cat([_random_crops(image, host, cutn, cut_size, cut_pow) for image, host in zip(images, hosts)])
    if method == "original":
        return clamp_with_grad(cutouts, 0.0, 1.0)
    if method in ("latest", "nrupdated"):
        augmentations = chosen_augmentations(tuple(augments), cut_size, method)
    else:
        augmentations = updated_augmentations() if method == "updated" else pooling_update_augmentations()
    return augment_per_item(augmentations, cutouts, [_seed(host) for host in hosts])


def _noise(cutouts: torch.Tensor, generators: list[torch.Generator], cutn: int, noise_fac: float) -> torch.Tensor:
    """Per item and cutout, gaussian noise whose std is drawn uniformly from [0, noise_fac)."""
    shape = cutouts.shape[1:]
    noise = torch.cat(
        [
            torch.randn(cutn, *shape, generator=g, device=g.device)
            * torch.rand(cutn, 1, 1, 1, generator=g, device=g.device)
            * noise_fac
            for g in generators
        ]
    )
    return noise.to(cutouts.dtype)


def make_cutouts(
    images: torch.Tensor,
    generators: list[torch.Generator],
    cutn: int,
    cut_size: int,
    cut_pow: float = 1.0,
    augment: bool = True,
    noise_fac: float = 0.0,
    method: CutMethod = "vqclip",
    augments: Sequence[AugmentCode] = REFERENCE_AUGMENTS,
) -> torch.Tensor:
    """Cutouts of shape (batch * cutn, C, cut_size, cut_size) from images (batch, C, H, W) in [0, 1].

    `augment` switches the vqclip method's augmentations, `augments` lists those of `latest` and
    `nrupdated`; every method but `original` (which clamps into [0, 1] instead) adds noise.
    """
    if method == "vqclip":
        cutouts = _affine_views(images, generators, cutn, cut_size, cut_pow, augment)
    else:
        cutouts = _reference_cutouts(images, generators, cutn, cut_size, cut_pow, method, augments)
    if noise_fac and method != "original":
        cutouts = cutouts + _noise(cutouts, generators, cutn, noise_fac)
    return cutouts
