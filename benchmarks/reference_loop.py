"""One image optimised the way the reference scripts do it, beside this engine's default path: the CPU goal's baseline.

    python -m benchmarks.reference_loop {reference,engine} [--preset P] [--size N] [--cutouts N] [--steps N]

`reference` is a plain sequential fp32 loop written after the reference's description: one image,
its latent snapped to the codebook straight-through, decoded by taming's own decoder modules (its
unfused swish), clamped into [0, 1]; its cutouts built one at a time as the reference's `latest`
method does (the whole image pooled to CLIP's size by adaptive average and max pooling, once per
cutout), then kornia's default augmentations (affine, perspective, colour jitter, erasing) and
noise; CLIP's image encoder in fp32; the spherical-distance loss; Adam; the latent clamped to the
codebook's range. `engine` times `vqclip.engine.generate` with the runtime settings of the environment
(the defaults). Each is meant to run in a fresh process: it prints one JSON line with the median
seconds per step (the first step left out) and the process's peak RSS, model loading included.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from vqclip.engine.clamp import clamp_with_grad
from vqclip.engine.generate import spherical_distance, vector_quantize
from vqclip.models.loader import Models, load_models

NOISE_FAC = 0.1
LEARNING_RATE = 0.1


def _augmentations() -> nn.Sequential:
    return nn.Sequential(
        K.RandomAffine(degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="zeros", keepdim=True),
        K.RandomPerspective(distortion_scale=0.7, p=0.7),
        K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7),
        K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 1 / 0.3), same_on_batch=True, p=0.7),
    )


def reference_step_times(models: Models, size: int, cutouts: int, steps: int, seed: int = 0) -> list[float]:
    """Wall time of each of `steps` optimisation steps of one `size` px image, the reference's way."""
    torch.manual_seed(seed)
    vqgan, (clip, _) = models.vqgan, models.guides[0]
    codebook = vqgan.codebook
    z_min, z_max = codebook.min(0).values[None, :, None, None], codebook.max(0).values[None, :, None, None]
    side = size // vqgan.factor
    z = codebook[torch.randint(codebook.shape[0], (side, side))].permute(2, 0, 1)[None].clone().requires_grad_(True)
    target = clip.embed_text(["a lighthouse at dawn"])
    optimiser = torch.optim.Adam([z], lr=LEARNING_RATE)
    augmentations = _augmentations()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        optimiser.zero_grad()
        z_q = vector_quantize(z.movedim(1, 3), codebook).movedim(3, 1)
        image = clamp_with_grad(vqgan.decoder(vqgan.post_quant_conv(z_q)).add(1).div(2), 0.0, 1.0)
        pieces = []
        for _ in range(cutouts):
            pieces.append((F.adaptive_avg_pool2d(image, clip.image_size) + F.adaptive_max_pool2d(image, clip.image_size)) / 2)
        batch = augmentations(torch.cat(pieces))
        batch = batch + batch.new_empty([cutouts, 1, 1, 1]).uniform_(0, NOISE_FAC) * torch.randn_like(batch)
        embeds = clip.model.encode_image(clip.normalize(batch)).float()
        loss = spherical_distance(embeds[:, None], target[None]).mean()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            z.copy_(z.maximum(z_min).minimum(z_max))
        times.append(time.perf_counter() - started)
    return times


def engine_step_times(models: Models, size: int, cutouts: int, steps: int) -> list[float]:
    """Wall time of each of `steps` optimisation steps of one `size` px image through `vqclip.engine.generate`."""
    from benchmarks.engine_step import bench_items, step_times

    return step_times(models, bench_items(models.spec, 1, size, cutouts, steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loop", choices=["reference", "engine"])
    parser.add_argument("--preset", default="default-random")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cutouts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    models = load_models(args.preset, device="cpu", include_scorer=False)
    measure = reference_step_times if args.loop == "reference" else engine_step_times
    times = measure(models, args.size, args.cutouts, args.steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"loop": args.loop, "s_per_step": statistics.median(times[1:]), "first_step_s": times[0], "peak_rss_gib": peak}))


if __name__ == "__main__":
    main()
