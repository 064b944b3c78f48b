"""The registry of named models: VQGAN checkpoints, tiny test architectures and presets.

In the style of open_clip's model registry: a name in, everything needed to fetch and build it out.
VQGAN `architecture` dicts mirror the `model.params` of the checkpoints' own YAML configs; they are
used to build a model with random weights (tests, benchmarks) and to size images before download.
Once a config YAML is downloaded, it is the authority.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vqclip.errors import ModelError

_HEIBOX = "https://heibox.uni-heidelberg.de/d"


@dataclass(frozen=True)
class RemoteFile:
    """A file known by name, fetched from the first URL that answers, verified by sha256 when pinned."""

    filename: str
    urls: tuple[str, ...]
    sha256: str | None = None


def _ddconfig(ch_mult: list[int], attn: list[int], ch: int = 128, z_channels: int = 256, res_blocks: int = 2) -> dict:
    return {
        "double_z": False,
        "z_channels": z_channels,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": ch,
        "ch_mult": ch_mult,
        "num_res_blocks": res_blocks,
        "attn_resolutions": attn,
        "dropout": 0.0,
    }


@dataclass(frozen=True)
class VqganSpec:
    """A named VQGAN: where its config and checkpoint live, and its architecture."""

    name: str
    description: str
    target: str
    architecture: dict
    config: RemoteFile | None = None
    checkpoint: RemoteFile | None = None
    approx_size_mb: int = 0

    @property
    def factor(self) -> int:
        """Pixels per latent cell along each side (16 for an f16 model)."""
        return 2 ** (len(self.architecture["ddconfig"]["ch_mult"]) - 1)

    @property
    def synthetic(self) -> bool:
        """True when no trained weights exist: the model always has deterministic random weights."""
        return self.checkpoint is None


def _heibox(name: str, folder: str, config_path: str, ckpt_path: str, mirrors: tuple[tuple[str, str], ...] = ()):
    config_urls = (f"{_HEIBOX}/{folder}/files/?p={config_path}&dl=1",) + tuple(m[0] for m in mirrors)
    ckpt_urls = (f"{_HEIBOX}/{folder}/files/?p={ckpt_path}&dl=1",) + tuple(m[1] for m in mirrors)
    return RemoteFile(f"{name}.yaml", config_urls), RemoteFile(f"{name}.ckpt", ckpt_urls)


_VQGANS: list[VqganSpec] = []


def _register_vqgan(spec: VqganSpec) -> None:
    _VQGANS.append(spec)


_VQ = "taming.models.vqgan.VQModel"
_GUMBEL = "taming.models.vqgan.GumbelVQ"
_NET2NET = "taming.models.cond_transformer.Net2NetTransformer"

_cfg, _ckpt = _heibox(
    "vqgan_imagenet_f16_16384",
    "a7530b09fed84f80a887",
    "%2Fconfigs%2Fmodel.yaml",
    "%2Fckpts%2Flast.ckpt",
    mirrors=(
        (
            "https://github.com/mehdidc/feed_forward_vqgan_clip/releases/download/0.1/vqgan_imagenet_f16_16384.yaml",
            "https://github.com/mehdidc/feed_forward_vqgan_clip/releases/download/0.1/vqgan_imagenet_f16_16384.ckpt",
        ),
    ),
)
_register_vqgan(
    VqganSpec(
        "imagenet_f16_16384",
        "ImageNet, f16, 16384 codes: the usual VQGAN+CLIP model",
        _VQ,
        {"embed_dim": 256, "n_embed": 16384, "ddconfig": _ddconfig([1, 1, 2, 2, 4], [16])},
        _cfg,
        _ckpt,
        980,
    )
)
_cfg, _ckpt = _heibox("vqgan_imagenet_f16_1024", "8088892a516d4e3baf92", "%2Fconfigs%2Fmodel.yaml", "%2Fckpts%2Flast.ckpt")
_register_vqgan(
    VqganSpec(
        "imagenet_f16_1024",
        "ImageNet, f16, 1024 codes",
        _VQ,
        {"embed_dim": 256, "n_embed": 1024, "ddconfig": _ddconfig([1, 1, 2, 2, 4], [16])},
        _cfg,
        _ckpt,
        958,
    )
)
_cfg, _ckpt = _heibox("gumbel_f8_8192", "2e5662443a6b4307b470", "%2Fconfigs%2Fmodel.yaml", "%2Fckpts%2Flast.ckpt")
_register_vqgan(
    VqganSpec(
        "gumbel_f8_8192",
        "OpenImages, f8, 8192 codes, Gumbel quantiser",
        _GUMBEL,
        {"embed_dim": 256, "n_embed": 8192, "kl_weight": 1.0e-08, "ddconfig": _ddconfig([1, 1, 2, 4], [32])},
        _cfg,
        _ckpt,
        376,
    )
)
_register_vqgan(
    VqganSpec(
        "wikiart_f16_16384",
        "WikiArt, f16, 16384 codes",
        _VQ,
        {"embed_dim": 256, "n_embed": 16384, "ddconfig": _ddconfig([1, 1, 2, 2, 4], [16])},
        RemoteFile(
            "wikiart_f16_16384.yaml",
            (
                "http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.yaml",
                "https://github.com/Eleiber/VQGAN-Mirrors/releases/download/0.0.1/wikiart_16384.yaml",
            ),
        ),
        RemoteFile(
            "wikiart_f16_16384.ckpt",
            (
                "http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.ckpt",
                "https://github.com/Eleiber/VQGAN-Mirrors/releases/download/0.0.1/wikiart_16384.ckpt",
            ),
        ),
        958,
    )
)
_cfg, _ckpt = _heibox(
    "sflckr",
    "73487ab6e5314cb5adba",
    "%2Fconfigs%2F2020-11-09T13-31-51-project.yaml",
    "%2Fcheckpoints%2Flast.ckpt",
)
_register_vqgan(
    VqganSpec(
        "sflckr",
        "S-FLCKR landscapes, f16, 1024 codes (first stage of a conditional transformer checkpoint)",
        _NET2NET,
        {"embed_dim": 256, "n_embed": 1024, "ddconfig": _ddconfig([1, 1, 2, 2, 4], [16])},
        _cfg,
        _ckpt,
        4000,
    )
)
_register_vqgan(
    VqganSpec(
        "tiny_f8",
        "tiny VQGAN (f8, 64 codes) with deterministic random weights: tests and offline smoke runs only",
        _VQ,
        {
            "embed_dim": 8,
            "n_embed": 64,
            "ddconfig": _ddconfig([1, 1, 2, 2], [], ch=32, z_channels=8, res_blocks=1),
        },
    )
)

VQGANS: dict[str, VqganSpec] = {spec.name: spec for spec in _VQGANS}

TINY_CLIPS: dict[str, dict] = {
    "tiny-clip-a": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "tiny-clip-b": {
        "embed_dim": 48,
        "vision_cfg": {"image_size": 48, "layers": 3, "width": 96, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}
"""Tiny CLIP architectures (open_clip's CLIP class at toy widths); their weights are always random."""

RANDOM = "random"
"""The `pretrained` tag for deterministic random weights."""


@dataclass(frozen=True)
class GuideSpec:
    """One CLIP model that guides generation, with its weight in the ensemble."""

    clip: str
    weight: float = 1.0


@dataclass(frozen=True)
class Preset:
    """A named set of models (the VQGAN, the guiding CLIP ensemble and the scoring CLIP) and the generation settings it implies.

    `settings` are defaults of `GenerationSettings` that a manifest or the command line may override.
    """

    name: str
    description: str
    vqgan: str
    guides: tuple[GuideSpec, ...]
    scorer: str
    random_weights: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    @property
    def synthetic(self) -> bool:
        """True when the preset's images come from untrained weights (label them as such)."""
        return self.random_weights or VQGANS[self.vqgan].synthetic


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "default",
            "ImageNet f16 16384 VQGAN, guided by ViT-B-32 (LAION-2B), scored by ViT-B-16 (LAION-2B)",
            "imagenet_f16_16384",
            (GuideSpec("ViT-B-32/laion2b_s34b_b79k"),),
            "ViT-B-16/laion2b_s34b_b88k",
        ),
        Preset(
            "ensemble",
            "ImageNet f16 16384 VQGAN, guided by ViT-B-32 and ViT-B-16 (OpenAI), scored by ViT-L-14 (LAION-2B)",
            "imagenet_f16_16384",
            (GuideSpec("ViT-B-32/openai", 1.0), GuideSpec("ViT-B-16/openai", 1.0)),
            "ViT-L-14/laion2b_s32b_b82k",
        ),
        Preset(
            "reference",
            "the reference scripts' recipe and defaults (nerdyrodent's VQGAN-CLIP generate.py): ImageNet f16 16384 VQGAN, "
            "guided by OpenAI's ViT-B/32, 500 steps at 512x512, the latest cut method; scored by ViT-B-16 (LAION-2B)",
            "imagenet_f16_16384",
            (GuideSpec("ViT-B-32/openai"),),
            "ViT-B-16/laion2b_s34b_b88k",
            settings=MappingProxyType({"recipe": "reference"}),
        ),
        Preset(
            "default-random",
            "the default preset's architectures with deterministic random weights (benchmarks; no download)",
            "imagenet_f16_16384",
            (GuideSpec(f"ViT-B-32/{RANDOM}"),),
            f"ViT-B-16/{RANDOM}",
            random_weights=True,
        ),
        Preset(
            "tiny",
            "tiny architectures with deterministic random weights (tests, offline smoke runs; images are noise-like)",
            "tiny_f8",
            (GuideSpec(f"tiny-clip-a/{RANDOM}"),),
            f"tiny-clip-b/{RANDOM}",
            random_weights=True,
            # Random weights make noise at any size or length: a smoke run (`make demo PRESET=tiny`) takes seconds.
            settings=MappingProxyType({"width": 128, "height": 128, "steps": 30, "cutouts": 8}),
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a ModelError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def get_vqgan_spec(name: str) -> VqganSpec:
    """The VQGAN called `name`, or a ModelError listing the known ones."""
    try:
        return VQGANS[name]
    except KeyError:
        raise ModelError(f"unknown VQGAN {name!r}; known VQGANs: {', '.join(VQGANS)}") from None


def split_clip_name(name: str) -> tuple[str, str]:
    """Split ``"ViT-B-32/laion2b_s34b_b79k"`` into model and pretrained tag (or local weight file)."""
    model, sep, pretrained = name.partition("/")
    if not sep or not model or not pretrained:
        raise ModelError(
            f"CLIP model {name!r} must be written 'MODEL/PRETRAINED', e.g. 'ViT-B-32/laion2b_s34b_b79k' "
            f"or 'ViT-B-32/{RANDOM}' (see `open_clip.list_pretrained()`)"
        )
    return model, pretrained
