"""Batched VQGAN+CLIP: optimise the latents of many work items at once, each with its own seed and prompts.

The algorithm of the reference implementations: a VQGAN latent starts from random codebook tokens
(or an encoded init image), is quantised straight-through, decoded and clamped into [0, 1] with a
gradient that only pulls values back into range; random cutouts are embedded by CLIP and pulled
towards (or, for negative weights, pushed away from) the prompts' embeddings (text, image and
seeded-noise prompts) with a squared spherical distance; a torch optimiser (Adam unless the settings
name another) updates the latent, which is clamped to the codebook's range.

Items never interact: every loss term is per item and summed, the optimiser is element-wise, and
every random draw comes from the item's own generator. On a CPU in fp32, with one item per backward
pass (the CPU default), an item therefore gives exactly the same pixels alone or in any batch. On
CUDA it does not: cuDNN picks kernels by batch size and grid_sample's backward adds with atomics, and
the nearest-code snap turns those last-bit differences into different images (measured on an H200: up to 255, mean 24 of 255 apart
after 100 steps, strict fp32). The same seed then gives an image of the same kind, not the same
pixels.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from vqclip import shutdown
from vqclip.acceleration import Accelerated
from vqclip.cutouts import make_cutouts
from vqclip.errors import GenerationError
from vqclip.items import GenerationSettings, WorkItem
from vqclip.models.loader import Models
from vqclip.prompts import stage_at
from vqclip.settings import Settings, get_settings

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


class _ClampWithGrad(torch.autograd.Function):
    """Clamp whose gradient passes only where it would move the value back into range."""

    @staticmethod
    def forward(ctx, values, low, high):
        ctx.low, ctx.high = low, high
        ctx.save_for_backward(values)
        return values.clamp(low, high)

    @staticmethod
    def backward(ctx, grad):
        (values,) = ctx.saved_tensors
        outside = values - values.clamp(ctx.low, ctx.high)
        return grad * (grad * outside >= 0), None, None


def _replace_grad(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Value of `forward`, gradient of `backward`."""
    return forward.detach() - backward.detach() + backward


def vector_quantize(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Snap (..., dim) latents to their nearest code, with a straight-through gradient."""
    distances = (
        latents.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(1) - 2 * latents @ codebook.T
    )
    quantised = codebook[distances.argmin(-1)]
    return _replace_grad(quantised, latents)


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between normalised rows of `a` and `b` (broadcasting)."""
    return (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


OPTIMISERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "rmsprop": torch.optim.RMSprop,
}
"""The optimiser classes by the names `GenerationSettings.optimizer` takes."""


def noise_embedding(seed: int, dim: int) -> torch.Tensor:
    """The reference's noise prompt: a standard normal embedding drawn on the CPU from `seed`."""
    return torch.empty(dim).normal_(generator=torch.Generator().manual_seed(seed))


def prompt_loss(embeds: torch.Tensor, goal: torch.Tensor, weights: torch.Tensor, stops: torch.Tensor) -> torch.Tensor:
    """Per item, the reference's prompt loss of (items, cutouts, 1, dim) cutout embeddings against (items, parts, dim) targets.

    Each part contributes |weight| times the mean over cutouts of its signed distance; the gradient is
    that of max(signed distance, stop), so a part stops pulling once its distance is below its stop.
    """
    signed = spherical_distance(embeds, goal[:, None]) * weights.sign()[:, None]  # (items, cutouts, parts)
    capped = _replace_grad(signed, torch.maximum(signed, stops[:, None]))
    return (weights.abs() * capped.mean(1)).sum(1)


@dataclass
class Targets:
    """Per item and per prompt of its schedule, the embeddings to pull towards or push from, padded to the same count."""

    embeds: torch.Tensor  # (batch, stages, parts, dim)
    weights: torch.Tensor  # (batch, stages, parts); 0 marks padding
    stops: torch.Tensor  # (batch, stages, parts)
    stages: list[int]  # per item, how many prompts its schedule has
    _picked: dict[tuple[int, ...], tuple[torch.Tensor, ...]] = field(default_factory=dict)

    def at(self, step: int, change_every: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each item's (embeds, weights, stops) of the prompt that guides `step`, each (batch, parts, ...)."""
        index = tuple(stage_at(step, change_every, count) for count in self.stages)
        if index not in self._picked:  # a schedule has few distinct turns: build each once, not per step
            rows, picks = range(len(index)), list(index)
            self._picked[index] = (self.embeds[rows, picks], self.weights[rows, picks], self.stops[rows, picks])
        return self._picked[index]


@dataclass
class GenerationResult:
    """What generating one item produced."""

    item: WorkItem
    image: Image.Image | None
    loss: float
    similarity: dict[str, float]
    first_similarity: dict[str, float]
    seconds: float
    error: str | None = None
    frames: list[Image.Image] = field(default_factory=list)
    similarity_history: list[list[float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def bf16_enabled(device: torch.device, settings: Settings) -> bool:
    """bf16 autocast for the decoder and CLIP: on CUDA unless turned off; on CPUs with native bf16 if asked for."""
    if not (device.type == "cuda" if settings.bf16 is None else settings.bf16):
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _shared_settings(items: list[WorkItem]) -> GenerationSettings:
    settings = items[0].settings
    if any(item.settings != settings for item in items) or any(item.models != items[0].models for item in items):
        raise GenerationError("all items of one batch must share settings and models; group them into shards first")
    return settings


def _image_tensor(image: Image.Image, width: int, height: int, device: torch.device) -> torch.Tensor:
    image = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return data.permute(2, 0, 1).float().div(255).to(device)


def _to_pil(images: torch.Tensor) -> list[Image.Image]:
    data = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(array.numpy()) for array in data]


def _targets(
    items: list[WorkItem], clip, images: Mapping[str, Image.Image], device: torch.device
) -> Targets:
    """Embed every item's text and image prompts with one guide model, and draw its noise prompts.

    Each text is embedded once, however many items and scheduled prompts use it; image and noise
    prompts guide alongside every prompt of a schedule.
    """
    schedules = [item.schedule for item in items]
    texts = {part.text for schedule in schedules for parts in schedule for part in parts}
    # One text at a time: a batched text encoder rounds differently with the batch's size, and that
    # last-bit difference would make an item's image depend on the other items' prompts.
    text_embeds = {text: clip.embed_text([text])[0] for text in texts}
    dim = next(iter(text_embeds.values())).shape[-1]
    rows: list[list[list[tuple[torch.Tensor, float, float]]]] = []
    for item, schedule in zip(items, schedules):
        extra = []
        for prompt in item.image_prompts:
            pixels = _image_tensor(images[prompt.source], clip.image_size, clip.image_size, device)[None]
            with torch.no_grad():
                extra.append((clip.embed_images(pixels)[0].float(), prompt.weight, -math.inf))
        extra += [(noise_embedding(p.seed, dim).to(device), p.weight, -math.inf) for p in item.noise_prompts]
        rows.append([[(text_embeds[p.text], p.weight, p.stop) for p in parts] + extra for parts in schedule])
    stages = max(len(schedule) for schedule in rows)
    parts = max(len(row) for schedule in rows for row in schedule)
    embeds = torch.zeros(len(items), stages, parts, dim, device=device)
    weights = torch.zeros(len(items), stages, parts, device=device)
    stops = torch.full((len(items), stages, parts), -math.inf, device=device)
    for i, schedule in enumerate(rows):
        for k, row in enumerate(schedule):
            for j, (embed, weight, stop) in enumerate(row):
                embeds[i, k, j], weights[i, k, j], stops[i, k, j] = embed, weight, stop
    return Targets(embeds, weights, stops, [len(schedule) for schedule in rows])


def _initial_latents(
    items: list[WorkItem],
    models: Models,
    generators: list[torch.Generator],
    images: Mapping[str, Image.Image],
    settings: GenerationSettings,
) -> torch.Tensor:
    codebook = models.vqgan.codebook
    rows, cols = settings.height // models.vqgan.factor, settings.width // models.vqgan.factor
    latents = []
    for item, generator in zip(items, generators):
        if item.init_image is not None or settings.init == "noise":
            if item.init_image is not None:
                pixels = _image_tensor(images[item.init_image.source], settings.width, settings.height, models.device)
            else:
                pixels = torch.rand(3, settings.height, settings.width, generator=generator, device=models.device)
            with torch.no_grad():
                latents.append(models.vqgan.encode(pixels[None])[0])
        else:
            tokens = torch.randint(codebook.shape[0], (rows * cols,), generator=generator, device=models.device)
            latents.append(codebook[tokens].view(rows, cols, -1).permute(2, 0, 1))
    return torch.stack(latents).float()


def generate(
    items: list[WorkItem],
    models: Models,
    settings: Settings | None = None,
    images: Mapping[str, Image.Image] | None = None,
    progress: ProgressCallback | None = None,
) -> list[GenerationResult]:
    """Generate one image per item, optimising the whole batch together on `models.device`.

    `images` maps each image prompt's and init image's `source` to the loaded image. Items whose loss
    turns non-finite come back with `error` set; the others are unaffected. Raises Interrupted at the
    next step once a stop is requested (see vqclip.shutdown).
    """
    runtime = settings or get_settings()
    images = images or {}
    gen = _shared_settings(items)
    factor = models.vqgan.factor
    if gen.width % factor or gen.height % factor:
        raise GenerationError(f"size {gen.width}x{gen.height} is not a multiple of the VQGAN factor {factor}")
    device = models.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_enabled(device, runtime))
    started = time.perf_counter()
    generators = [torch.Generator(device=device).manual_seed(item.seed) for item in items]
    targets = [(_targets(items, clip, images, device), clip, weight) for clip, weight in models.guides]
    codebook = models.vqgan.codebook.float()
    z_min = codebook.min(0).values[None, :, None, None]
    z_max = codebook.max(0).values[None, :, None, None]
    z = _initial_latents(items, models, generators, images, gen).requires_grad_(True)
    z_init = z.detach().clone()
    optimiser = OPTIMISERS[gen.optimizer]([z], lr=gen.lr)
    history: list[torch.Tensor] = []
    frames: list[list[Image.Image]] = []

    accelerated = Accelerated.build(models.vqgan, [clip for clip, _ in models.guides], device, runtime, max(gen.width, gen.height))

    def decode(latents: torch.Tensor) -> torch.Tensor:
        quantised = vector_quantize(latents.movedim(1, 3), codebook).movedim(3, 1)
        with autocast:
            decoded = accelerated.decode(quantised)
        return _ClampWithGrad.apply(decoded.float().add(1).div(2), 0.0, 1.0)

    def chunk_loss(chunk: slice, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item losses and guide similarities of the items in `chunk` at `step`."""
        count = len(range(*chunk.indices(len(items))))
        pixels = decode(z[chunk])
        loss = torch.zeros(count, device=device)
        similarities = []
        for guide, (target, clip, guide_weight) in enumerate(targets):
            cutouts = make_cutouts(
                pixels, generators[chunk], gen.cutouts, clip.image_size, gen.cut_pow, gen.augment, gen.noise_fac
            )
            with autocast:
                embeds = accelerated.embed(guide, cutouts)
            embeds = embeds.float().view(count, gen.cutouts, 1, -1)
            goal, weights, stops = (tensor[chunk] for tensor in target.at(step, gen.change_every))
            loss = loss + guide_weight * prompt_loss(embeds, goal, weights, stops)
            with torch.no_grad():
                similarities.append(F.cosine_similarity(embeds.mean(1), goal, dim=-1))
        if gen.init_weight:
            loss = loss + gen.init_weight * (z[chunk] - z_init[chunk]).pow(2).mean((1, 2, 3)) / 2
        return loss, torch.cat(similarities, dim=1).detach()

    # Items never interact, so a step may run the batch in chunks, each backward adding its items'
    # gradients: on a CPU one item at a time is fastest and keeps memory at a single item's.
    size = runtime.micro_batch or (len(items) if device.type == "cuda" else 1)
    chunks = [slice(start, start + size) for start in range(0, len(items), size)]

    def gradients(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill z.grad for `step`; return the per-item losses and similarities."""
        optimiser.zero_grad(set_to_none=True)
        losses, similarities = [], []
        for chunk in chunks:
            loss, similarity = chunk_loss(chunk, step)
            loss.sum().backward()
            losses.append(loss.detach())
            similarities.append(similarity)
        return torch.cat(losses), torch.cat(similarities)

    def first_gradients() -> tuple[torch.Tensor, torch.Tensor]:
        """The first step compiles, if asked to; if compiling fails, the step reruns eagerly from the same draws."""
        if not accelerated.compile:
            return gradients(0)
        states = [generator.get_state() for generator in generators]
        try:
            return gradients(0)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any compiler failure; eager mode is the fallback
            accelerated.fall_back_to_eager(exc)
            for generator, state in zip(generators, states):
                generator.set_state(state)
            return gradients(0)

    per_item_loss = torch.zeros(len(items), device=device)
    for step in range(gen.steps):
        shutdown.check()
        per_item_loss, similarity = first_gradients() if step == 0 else gradients(step)
        optimiser.step()
        with torch.no_grad():
            z.copy_(torch.maximum(torch.minimum(z, z_max), z_min))
        history.append(similarity)
        if gen.save_every and (step + 1) % gen.save_every == 0 and step + 1 < gen.steps:
            with torch.no_grad():
                frames.append(_to_pil(torch.cat([decode(z[chunk]) for chunk in chunks])))
        if progress:
            progress(step + 1, gen.steps)

    with torch.no_grad():
        final = _to_pil(torch.cat([decode(z[chunk]) for chunk in chunks]))
    trace = torch.stack(history).cpu()  # (steps, batch, guide parts); one host sync per batch
    losses = per_item_loss.detach().cpu()
    finite = torch.isfinite(losses) & torch.isfinite(z.detach()).flatten(1).all(1).cpu()
    seconds = (time.perf_counter() - started) / len(items)
    first_labels = _similarity_labels(items, models, 0)
    labels = _similarity_labels(items, models, gen.steps - 1)
    results = []
    for i, item in enumerate(items):
        named = labels[i]
        error = None if finite[i] else f"loss became non-finite ({losses[i].item()}) at learning rate {gen.lr}"
        results.append(
            GenerationResult(
                item=item,
                image=final[i] if error is None else None,
                loss=float(losses[i]),
                similarity={name: float(trace[-1, i, j]) for j, name in named},
                first_similarity={name: float(trace[0, i, j]) for j, name in first_labels[i]},
                seconds=seconds,
                error=error,
                frames=[frame[i] for frame in frames],
                similarity_history=[trace[:, i, j].tolist() for j, _ in named],
            )
        )
    return results


def _similarity_labels(items: list[WorkItem], models: Models, step: int) -> list[list[tuple[int, str]]]:
    """For each item, (column in the similarity trace, 'guide: prompt part') pairs at `step` (a schedule's prompts take turns).

    The trace has one block of columns per guide, each as wide as the batch's longest target list.
    """
    extras = [len(item.image_prompts) + len(item.noise_prompts) for item in items]
    width = max(len(parts) + extra for item, extra in zip(items, extras) for parts in item.schedule)
    labels = []
    for item in items:
        schedule = item.schedule
        parts = schedule[stage_at(step, item.settings.change_every, len(schedule))]
        names = [p.text for p in parts] + [f"image:{p.source}" for p in item.image_prompts]
        names += [f"noise:{p.seed}" for p in item.noise_prompts]
        labels.append(
            [(g * width + j, f"{clip.name}: {name}") for g, (clip, _) in enumerate(models.guides) for j, name in enumerate(names)]
        )
    return labels
