"""VQGAN built from `taming.modules`, with attribute names that match the original checkpoints."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from taming.modules.diffusionmodules.model import Decoder, Encoder, ResnetBlock
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2
from torch import nn
from torch.utils.checkpoint import checkpoint

from vqclip.errors import ModelError
from vqclip.models.catalog import GUMBEL_TARGET, NET2NET_TARGET
from vqclip.models.checkpoint import load_assigned, load_state_dict, meta_parameters


class VQGAN(nn.Module):
    """Encoder, quantiser and decoder of a taming VQGAN, without its training losses."""

    def __init__(self, params: dict, gumbel: bool = False) -> None:
        super().__init__()
        ddconfig = params["ddconfig"]
        embed_dim, n_embed = params["embed_dim"], params["n_embed"]
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        if gumbel:
            self.quantize = GumbelQuantize(
                ddconfig["z_channels"], embed_dim, n_embed=n_embed, kl_weight=params.get("kl_weight", 1e-8)
            )
        else:
            self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.factor = 2 ** (len(ddconfig["ch_mult"]) - 1)

    @property
    def codebook(self) -> torch.Tensor:
        """The code vectors, shape (n_embed, embed_dim)."""
        embedding = self.quantize.embed if isinstance(self.quantize, GumbelQuantize) else self.quantize.embedding
        return embedding.weight

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous latents (before quantisation) of images in [0, 1]."""
        return self.quant_conv(self.encoder(images * 2 - 1))

    def quantised_codes(self, images: torch.Tensor) -> torch.Tensor:
        """The code indices (batch, rows, cols) the quantiser picks for images in [0, 1] (the reference's init).

        The plain quantiser picks the code nearest to each encoded latent (taming's own call). The Gumbel
        quantiser picks the code of highest logit: its choice without the Gumbel noise that taming adds to
        every call, which comes from no seed and would make the start unrepeatable.
        """
        latents = self.encode(images)
        if isinstance(self.quantize, GumbelQuantize):
            return self.quantize.proj(latents).argmax(1)
        _, _, (_, _, indices) = self.quantize(latents)
        return indices.view(latents.shape[0], *latents.shape[2:])

    def decode(self, z_q: torch.Tensor, checkpointed: bool = False) -> torch.Tensor:
        """Images in roughly [-1, 1] from quantised latents.

        The same computation as taming's `Decoder.forward`, with the swish as one fused `silu` (it
        keeps one tensor per activation for the backward pass instead of two). `checkpointed`
        recomputes each block's activations during the backward pass instead of keeping them.
        """

        def run(fn: Callable[..., torch.Tensor], *args: object) -> torch.Tensor:
            if checkpointed and torch.is_grad_enabled():
                return checkpoint(fn, *args, use_reentrant=False)
            return fn(*args)

        decoder = self.decoder
        h = decoder.conv_in(self.post_quant_conv(z_q))
        h = run(_resnet_block, decoder.mid.block_1, h)
        h = run(decoder.mid.attn_1, h)
        h = run(_resnet_block, decoder.mid.block_2, h)
        for level in reversed(range(decoder.num_resolutions)):
            up = decoder.up[level]
            for index, block in enumerate(up.block):
                h = run(_resnet_block, block, h)
                if len(up.attn) > 0:
                    h = run(up.attn[index], h)
            if level != 0:
                h = run(up.upsample, h)
        return decoder.conv_out(F.silu(decoder.norm_out(h)))


def _resnet_block(block: ResnetBlock, x: torch.Tensor) -> torch.Tensor:
    """taming's `ResnetBlock.forward` without a timestep embedding, with a fused swish."""
    h = block.conv1(F.silu(block.norm1(x)))
    h = block.conv2(block.dropout(F.silu(block.norm2(h))))
    if block.in_channels != block.out_channels:
        x = block.conv_shortcut(x) if block.use_conv_shortcut else block.nin_shortcut(x)
    return x + h


def read_config(path: Path) -> tuple[dict, str]:
    """Read a taming YAML config; return the VQGAN's `params` and the checkpoint key prefix."""
    try:
        config = yaml.safe_load(path.read_text())
        target = config["model"]["target"]
        params = config["model"]["params"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ModelError(f"{path} is not a taming VQGAN config (model.target, model.params): {exc}") from None
    if target == NET2NET_TARGET:
        stage = params["first_stage_config"]
        return {**stage["params"], "target": stage["target"]}, "first_stage_model."
    return {**params, "target": target}, ""


def build_vqgan(params: dict, target: str) -> VQGAN:
    """A VQGAN with fresh weights for the given `model.params` and `model.target`."""
    # taming's Decoder prints the latent shape on construction; keep stdout clean for the CLI.
    with contextlib.redirect_stdout(io.StringIO()):
        return VQGAN(params, gumbel=target == GUMBEL_TARGET)


def load_vqgan(config_path: Path, checkpoint_path: Path) -> VQGAN:
    """Build a VQGAN from a taming config and load its checkpoint (losses' weights are skipped)."""
    params, prefix = read_config(config_path)
    with meta_parameters():
        model = build_vqgan(params, params["target"])
    state = load_state_dict(checkpoint_path, prefix=prefix)
    missing = [key for key in model.state_dict() if key not in state]
    if missing:
        raise ModelError(
            f"{checkpoint_path} does not match {config_path}: {len(missing)} weights missing "
            f"(first: {', '.join(missing[:3])}); fetch the matching pair again"
        )
    try:
        load_assigned(model, {key: state[key] for key in model.state_dict()})
    except RuntimeError as exc:
        raise ModelError(f"{checkpoint_path} does not match {config_path}: {exc}") from None
    return model
