"""Batched VQGAN+CLIP: optimise the latents of many work items at once, each with its own seed and prompts.

The algorithm of the reference implementations: a VQGAN latent starts from random codebook tokens
(or the codes the VQGAN's quantiser picks for an init image), is quantised straight-through, decoded and clamped into [0, 1] with a
gradient that only pulls values back into range; random cutouts are embedded by CLIP and pulled
towards (or, for negative weights, pushed away from) the prompts' embeddings (text, image and
seeded-noise prompts) with a squared spherical distance; a torch optimiser (Adam unless the settings
name another) updates the latent, which is clamped to the codebook's range.

Items never interact: every loss term is per item and summed, the optimiser is element-wise, and
every random draw comes from the item's own generator. On a CPU (bf16 or fp32), with one item per backward
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
from vqclip.config import Config, get_config
from vqclip.engine.acceleration import Accelerated
from vqclip.engine.clamp import clamp_with_grad
from vqclip.engine.cutouts import make_cutouts
from vqclip.errors import GenerationError
from vqclip.items import GenerationSettings, WorkItem
from vqclip.models.loader import Models
from vqclip.prompts import stage_at

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


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


def prompt_loss(
    embeds: torch.Tensor,
    goal: torch.Tensor,
    weights: torch.Tensor,
    stops: torch.Tensor,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per item, the reference's prompt loss of (items, cutouts, 1, dim) cutout embeddings against (items, parts, views, dim) targets.

    A text or noise prompt has one view; an image prompt has one per cutout of it, and `counts`
    (items, parts) says how many views of each part are real (all, if None). Each part contributes
    |weight| times the mean, over cutouts and its views, of its signed distance; the gradient is that of
    max(signed distance, stop), so a part stops pulling once its distance is below its stop.
    """
    views = goal.shape[2]
    signed = spherical_distance(embeds[..., None, :], goal[:, None]) * weights.sign()[:, None, :, None]
    capped = _replace_grad(signed, torch.maximum(signed, stops[:, None, :, None]))  # (items, cutouts, parts, views)
    if counts is None:
        counts = torch.full(weights.shape, views, dtype=capped.dtype, device=capped.device)
    padding = torch.arange(views, device=capped.device) >= counts[..., None]  # (items, parts, views)
    # Padding views add exact zeros: a one-view part's value is bit for bit its one distance in any batch.
    per_part = capped.masked_fill(padding[:, None], 0.0).sum(-1) / counts[:, None]
    return (weights.abs() * per_part.mean(1)).sum(1)


def view_centres(goal: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The mean of each part's real views: (items, parts, dim) from (items, parts, views, dim) targets."""
    real = torch.arange(goal.shape[2], device=goal.device) < counts[..., None]
    return (goal * real[..., None]).sum(2) / counts[..., None]


def init_weight_loss(z: torch.Tensor, z_init: torch.Tensor, weight: float, mode: str, step: int) -> torch.Tensor:
    """Per item, the init weight's pull on latents (items, C, H, W) at 0-based `step`.

    `constant`: weight times half the mean squared distance to the initial latent. `reference`: the
    reference scripts' term, the mean square of the latent (a pull towards zero) times
    (1 / (2 step + 1)) times weight, halved, computed in their order.
    """
    if mode == "reference":
        return z.pow(2).mean((1, 2, 3)) * ((1 / (step * 2 + 1)) * weight) / 2
    return weight * (z - z_init).pow(2).mean((1, 2, 3)) / 2


@dataclass
class Targets:
    """Per item and per prompt of its schedule, the embeddings to pull towards or push from, padded to the same count."""

    embeds: torch.Tensor  # (batch, stages, parts, views, dim): one view per text or noise prompt, one per cutout of an image prompt
    counts: torch.Tensor  # (batch, stages, parts): how many views are real; the rest is padding
    weights: torch.Tensor  # (batch, stages, parts); 0 marks padding
    stops: torch.Tensor  # (batch, stages, parts)
    stages: list[int]  # per item, how many prompts its schedule has
    _picked: dict[tuple[int, ...], tuple[torch.Tensor, ...]] = field(default_factory=dict)

    def at(self, step: int, change_every: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each item's (embeds, counts, weights, stops) of the prompt that guides `step`, each (batch, parts, ...)."""
        index = tuple(stage_at(step, change_every, count) for count in self.stages)
        if index not in self._picked:  # a schedule has few distinct turns: build each once, not per step
            rows, picks = range(len(index)), list(index)
            self._picked[index] = tuple(t[rows, picks] for t in (self.embeds, self.counts, self.weights, self.stops))
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


def bf16_enabled(device: torch.device, config: Config) -> bool:
    """bf16 autocast for the decoder and CLIP: on CUDA and on CPUs with native bf16 unless turned off."""
    if config.bf16 is False:
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


def _prompt_image_tensor(image: Image.Image, width: int, height: int, device: torch.device) -> torch.Tensor:
    """An image prompt as the reference sizes it: its aspect ratio kept, its area at most the generated image's."""
    ratio = image.width / image.height
    area = min(image.width * image.height, width * height)
    return _image_tensor(image, round((area * ratio) ** 0.5), round((area / ratio) ** 0.5), device)


def _cutouts(images: torch.Tensor, generators: list[torch.Generator], gen: GenerationSettings, cut_size: int) -> torch.Tensor:
    """The augmented cutouts CLIP sees of `images`, under the batch's settings: generated images and image prompts alike."""
    return make_cutouts(
        images, generators, gen.cutouts, cut_size, gen.cut_pow, gen.augment, gen.noise_fac, gen.cut_method, gen.augments
    )


def _targets(
    items: list[WorkItem],
    clip,
    images: Mapping[str, Image.Image],
    device: torch.device,
    generators: list[torch.Generator],
    gen: GenerationSettings,
) -> Targets:
    """Embed every item's text and image prompts with one guide model, and draw its noise prompts.

    Each text is embedded once, however many items and scheduled prompts use it. An image prompt is
    embedded as the reference does it: through the same augmented cutouts as the generated image (drawn
    from its item's generator), one view per cutout. Image and noise prompts guide alongside every
    prompt of a schedule.
    """
    schedules = [item.schedule for item in items]
    texts = {part.text for schedule in schedules for parts in schedule for part in parts}
    # One text at a time: a batched text encoder rounds differently with the batch's size, and that
    # last-bit difference would make an item's image depend on the other items' prompts.
    text_embeds = {text: clip.embed_text([text])[0][None] for text in texts}
    dim = next(iter(text_embeds.values())).shape[-1]
    rows: list[list[list[tuple[torch.Tensor, float, float]]]] = []
    for item, generator, schedule in zip(items, generators, schedules):
        extra = []
        for prompt in item.image_prompts:
            pixels = _prompt_image_tensor(images[prompt.source], gen.width, gen.height, device)[None]
            with torch.no_grad():
                embedded = clip.embed_images(_cutouts(pixels, [generator], gen, clip.image_size)).float()
            extra.append((embedded, prompt.weight, -math.inf if prompt.stop is None else prompt.stop))
        extra += [(noise_embedding(p.seed, dim).to(device)[None], p.weight, -math.inf) for p in item.noise_prompts]
        rows.append([[(text_embeds[p.text], p.weight, p.stop) for p in parts] + extra for parts in schedule])
    stages = max(len(schedule) for schedule in rows)
    parts = max(len(row) for schedule in rows for row in schedule)
    views = max(len(embed) for schedule in rows for row in schedule for embed, _, _ in row)
    embeds = torch.zeros(len(items), stages, parts, views, dim, device=device)
    counts = torch.ones(len(items), stages, parts, device=device)
    weights = torch.zeros(len(items), stages, parts, device=device)
    stops = torch.full((len(items), stages, parts), -math.inf, device=device)
    for i, schedule in enumerate(rows):
        for k, row in enumerate(schedule):
            for j, (embed, weight, stop) in enumerate(row):
                embeds[i, k, j, : len(embed)] = embed
                counts[i, k, j], weights[i, k, j], stops[i, k, j] = len(embed), weight, stop
    return Targets(embeds, counts, weights, stops, [len(schedule) for schedule in rows])


def _initial_latents(
    items: list[WorkItem],
    models: Models,
    generators: list[torch.Generator],
    images: Mapping[str, Image.Image],
    settings: GenerationSettings,
) -> torch.Tensor:
    """Per item, the latent to start from: random codes, or the codes the VQGAN's quantiser picks for an image.

    The image is the item's init image, else pixel noise or a gradient as `init` says; like the
    reference, it enters through the encoder and the quantiser.
    """
    codebook = models.vqgan.codebook
    rows, cols = settings.height // models.vqgan.factor, settings.width // models.vqgan.factor
    device = models.device
    latents = []
    for item, generator in zip(items, generators):
        if item.init_image is not None:
            pixels = _image_tensor(images[item.init_image.source], settings.width, settings.height, device)
        elif settings.init == "noise":  # the reference's pixel init: uniform levels 0 to 254 of 255
            pixels = torch.randint(0, 255, (3, settings.height, settings.width), generator=generator, device=device) / 255
        elif settings.init == "gradient":
            pixels = gradient_image(settings.width, settings.height, generator)
        else:
            pixels = None
        if pixels is None:
            tokens = torch.randint(codebook.shape[0], (rows, cols), generator=generator, device=device)
        else:
            with torch.no_grad():
                tokens = models.vqgan.quantised_codes(pixels[None])[0]
        latents.append(codebook[tokens].permute(2, 0, 1))
    return torch.stack(latents).float()


def gradient_image(width: int, height: int, generator: torch.Generator) -> torch.Tensor:
    """The reference's gradient init, (3, height, width) in [0, 1]: red rises from 0 left to right, green from 0
    and blue from a random level top to bottom, each to a random level; levels are whole numbers of 255.

    Drawn like the reference's: the blue start in [0, 255), then the red, green and blue ends in
    [1, 255), [2, 255) and [3, 128), uniformly, from the item's generator.
    """
    device = generator.device
    low = torch.tensor([0, 1, 2, 3], device=device)
    high = torch.tensor([255, 255, 255, 128], device=device)
    blue_start, red_end, green_end, blue_end = (low + (torch.rand(4, generator=generator, device=device) * (high - low)).floor()).unbind()
    across = torch.linspace(0, 1, width, device=device)[None, :].expand(height, width)
    down = torch.linspace(0, 1, height, device=device)[:, None].expand(height, width)
    levels = torch.stack([red_end * across, green_end * down, blue_start + (blue_end - blue_start) * down])
    return levels.floor() / 255


def generate(
    items: list[WorkItem],
    models: Models,
    config: Config | None = None,
    images: Mapping[str, Image.Image] | None = None,
    progress: ProgressCallback | None = None,
) -> list[GenerationResult]:
    """Generate one image per item, optimising the whole batch together on `models.device`.

    `images` maps each image prompt's and init image's `source` to the loaded image. Items whose loss
    turns non-finite come back with `error` set; the others are unaffected. Raises Interrupted at the
    next step once a stop is requested (see vqclip.shutdown).
    """
    runtime = config or get_config()
    images = images or {}
    gen = _shared_settings(items)
    factor = models.vqgan.factor
    if gen.width % factor or gen.height % factor:
        raise GenerationError(f"size {gen.width}x{gen.height} is not a multiple of the VQGAN factor {factor}")
    device = models.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_enabled(device, runtime))
    started = time.perf_counter()
    generators = [torch.Generator(device=device).manual_seed(item.seed) for item in items]
    # Built before the prompts are embedded: image prompts go through the same (packed or not) attention as the steps.
    accelerated = Accelerated.build(models.vqgan, [clip for clip, _ in models.guides], device, runtime, max(gen.width, gen.height))
    targets = [(_targets(items, clip, images, device, generators, gen), clip, weight) for clip, weight in models.guides]
    codebook = models.vqgan.codebook.float()
    z_min = codebook.min(0).values[None, :, None, None]
    z_max = codebook.max(0).values[None, :, None, None]
    z = _initial_latents(items, models, generators, images, gen).requires_grad_(True)
    z_init = z.detach().clone()
    optimiser = OPTIMISERS[gen.optimizer]([z], lr=gen.lr)
    history: list[torch.Tensor] = []
    frames: list[list[Image.Image]] = []

    def decode(latents: torch.Tensor) -> torch.Tensor:
        quantised = vector_quantize(latents.movedim(1, 3), codebook).movedim(3, 1)
        with autocast:
            decoded = accelerated.decode(quantised)
        return clamp_with_grad(decoded.float().add(1).div(2), 0.0, 1.0)

    def chunk_loss(chunk: slice, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item losses and guide similarities of the items in `chunk` at `step`."""
        count = len(range(*chunk.indices(len(items))))
        pixels = decode(z[chunk])
        loss = torch.zeros(count, device=device)
        similarities = []
        for guide, (target, clip, guide_weight) in enumerate(targets):
            cutouts = _cutouts(pixels, generators[chunk], gen, clip.image_size)
            with autocast:
                embeds = accelerated.embed(guide, cutouts)
            embeds = embeds.float().view(count, gen.cutouts, 1, -1)
            goal, counts, weights, stops = (tensor[chunk] for tensor in target.at(step, gen.change_every))
            loss = loss + guide_weight * prompt_loss(embeds, goal, weights, stops, counts)
            with torch.no_grad():
                similarities.append(F.cosine_similarity(embeds.mean(1), view_centres(goal, counts), dim=-1))
        if gen.init_weight:
            loss = loss + init_weight_loss(z[chunk], z_init[chunk], gen.init_weight, gen.init_weight_mode, step)
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
        if step == 0:
            log.debug("first optimisation step of %d items done in %.2f s", len(items), time.perf_counter() - started)

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
