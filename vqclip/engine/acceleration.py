"""The engine's speed and memory switches: TF32, channels-last, packed attention, decoder checkpointing, torch.compile.

Each is read from `Config`; `Accelerated` turns them into the two callables the step loop needs,
one that decodes latents and one per guide that embeds cutouts.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vqclip.config import Config
from vqclip.engine.attention import pack_attention
from vqclip.models.clip import ClipModel
from vqclip.models.vqgan import VQGAN

log = logging.getLogger(__name__)

Function = Callable[[torch.Tensor], torch.Tensor]

# Compiled wrappers live on the module they compile (so they go when it goes) and are built once per
# process; a module whose compilation failed is marked and never compiled again.
_COMPILED = "_vqclip_compiled"
_FAILED = "_vqclip_compile_failed"


def configure_backends(device: torch.device, config: Config) -> None:
    """TF32 for CUDA matrix products and convolutions, and cuDNN's kernel search, as the settings say."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config.tf32
        torch.backends.cudnn.allow_tf32 = config.tf32
        torch.backends.cudnn.benchmark = config.cudnn_benchmark


def _compiled(module: nn.Module, variant: str, function: Function) -> Function:
    variants = module.__dict__.setdefault(_COMPILED, {})
    if variant not in variants:
        variants[variant] = torch.compile(function)
    return variants[variant]


@dataclass
class Accelerated:
    """The decoder and guide encoders of one generate call, with the settings' switches applied."""

    vqgan: VQGAN
    guides: list[ClipModel]
    channels_last: bool
    checkpointed: bool
    compile: bool

    @classmethod
    def build(cls, vqgan: VQGAN, guides: list[ClipModel], device: torch.device, config: Config, side: int) -> Accelerated:
        """Apply the settings to the models for images whose larger side is `side` pixels."""
        configure_backends(device, config)
        vqgan.decoder.to(memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
        for clip in guides:
            pack_attention(clip.model.visual, config.packed_attention)
        checkpointed = 0 < config.checkpoint_side <= side
        compile = config.compile and not cls.compile_failed(vqgan)
        return cls(vqgan, guides, config.channels_last, checkpointed, compile)

    @staticmethod
    def compile_failed(module: nn.Module) -> bool:
        """True once compiling this module failed in this process."""
        return module.__dict__.get(_FAILED, False)

    def fall_back_to_eager(self, error: BaseException) -> None:
        """Give up torch.compile for these models for the rest of the process."""
        first_line = next(iter(str(error).splitlines()), "")
        log.warning("torch.compile failed (%s: %s); running eagerly", type(error).__name__, first_line[:300])
        self.vqgan.__dict__[_FAILED] = True
        self.compile = False

    def decode(self, quantised: torch.Tensor) -> torch.Tensor:
        """Decode quantised latents (batch, dim, rows, cols) to images in roughly [-1, 1]."""
        if self.channels_last:
            quantised = quantised.contiguous(memory_format=torch.channels_last)

        run = functools.partial(self.vqgan.decode, checkpointed=self.checkpointed)
        # Only the optimisation steps are compiled: the final decode (no gradients) runs once per
        # batch and is not worth a second compilation.
        if self.compile and torch.is_grad_enabled():
            run = _compiled(self.vqgan, f"decode:{self.checkpointed}", run)
        return run(quantised)

    def embed(self, guide: int, cutouts: torch.Tensor) -> torch.Tensor:
        """Image embeddings of `cutouts` by guide number `guide`, keeping the graph for gradients."""
        clip = self.guides[guide]
        if self.compile:
            return _compiled(clip.model, "embed", clip.embed_images)(cutouts)
        return clip.embed_images(cutouts)
