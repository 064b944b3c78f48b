"""The reference implementation's cutout augmentations as kornia modules, seeded per item.

Each two-letter code stands for one kornia augmentation with the reference's parameters and
probability; the `latest` and `nrupdated` cut methods apply a chosen list in order, `updated` and
`updatedpooling` fixed lists of their own. Kornia draws its random parameters from torch's global
CPU generator, so `augment_per_item` runs each item's cutouts on their own, with that generator
seeded from the item's (and restored afterwards): an item's augmentations do not depend on which
other items share its batch. What kornia draws once per call (`same_on_batch`, and whether its crop
augmentations apply at all) is then drawn once per item, as the reference draws it once for its
one image's cutouts, never once for several items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import kornia.augmentation as K
import torch
from torch import nn

from vqclip.items import AugmentCode

_ERASE = {"scale": (0.1, 0.4), "ratio": (0.3, 1 / 0.3)}


def _chosen(cut_size: int, perspective: float, degrees: float) -> dict[str, Callable[[], nn.Module]]:
    return {
        "Ji": lambda: K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7),
        "Sh": lambda: K.RandomSharpness(sharpness=0.3, p=0.5),
        "Gn": lambda: K.RandomGaussianNoise(mean=0.0, std=1.0, p=0.5),
        "Pe": lambda: K.RandomPerspective(distortion_scale=perspective, p=0.7),
        "Ro": lambda: K.RandomRotation(degrees=15, p=0.7),
        "Af": lambda: K.RandomAffine(degrees=degrees, translate=0.1, shear=5, p=0.7, padding_mode="zeros", keepdim=True),
        "Et": lambda: K.RandomElasticTransform(p=0.7),
        "Ts": lambda: K.RandomThinPlateSpline(scale=0.8, same_on_batch=True, p=0.7),
        "Cr": lambda: K.RandomCrop(size=(cut_size, cut_size), pad_if_needed=True, padding_mode="reflect", p=0.5),
        "Er": lambda: K.RandomErasing(**_ERASE, same_on_batch=True, p=0.7),
        "Re": lambda: K.RandomResizedCrop(
            size=(cut_size, cut_size), scale=(0.1, 1), ratio=(0.75, 1.333), cropping_mode="resample", p=0.5
        ),
    }


@lru_cache(maxsize=64)
def chosen_augmentations(codes: tuple[AugmentCode, ...], cut_size: int, method: str = "latest") -> nn.Sequential:
    """The augmentations `codes` stand for, in order; `nrupdated` has a milder perspective and a wider rotation."""
    perspective, degrees = (0.5, 30.0) if method == "nrupdated" else (0.7, 15.0)
    modules = _chosen(cut_size, perspective, degrees)
    return nn.Sequential(*(modules[code]() for code in codes))


@lru_cache(maxsize=1)
def updated_augmentations() -> nn.Sequential:
    """The fixed list of the `updated` cut method."""
    return nn.Sequential(
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJitter(hue=0.01, saturation=0.01, p=0.7),
        K.RandomSharpness(0.3, p=0.4),
        K.RandomAffine(degrees=30, translate=0.1, p=0.8, padding_mode="border"),
        K.RandomPerspective(0.2, p=0.4),
    )


@lru_cache(maxsize=1)
def pooling_update_augmentations() -> nn.Sequential:
    """The fixed list of the `updatedpooling` cut method."""
    return nn.Sequential(
        K.RandomAffine(degrees=15, translate=0.1, p=0.7, padding_mode="border"),
        K.RandomPerspective(0.7, p=0.7),
        K.ColorJitter(hue=0.1, saturation=0.1, p=0.7),
        K.RandomErasing(**_ERASE, same_on_batch=True, p=0.7),
    )


def augment_per_item(augmentations: nn.Module, cutouts: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """`augmentations` applied to (items * cutn, C, H, W) cutouts, each item's with kornia's draws seeded by its seed."""
    if not len(augmentations):
        return cutouts
    augmented = []
    for chunk, seed in zip(cutouts.chunk(len(seeds)), seeds):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            augmented.append(augmentations(chunk))
    return torch.cat(augmented)
