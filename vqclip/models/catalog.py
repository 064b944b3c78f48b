"""The catalog of models known by name: VQGAN checkpoints and tiny CLIP architectures.

VQGAN `architecture` dicts mirror the `model.params` of the checkpoints' own YAML configs; they are
used to build a model with random weights (tests, benchmarks) and to size images before download.
Once a config YAML is downloaded, it is the authority.
"""

from __future__ import annotations

from dataclasses import dataclass

from vqclip.errors import ModelError

_HEIBOX = "https://heibox.uni-heidelberg.de/d"

VQMODEL_TARGET = "taming.models.vqgan.VQModel"
GUMBEL_TARGET = "taming.models.vqgan.GumbelVQ"
NET2NET_TARGET = "taming.models.cond_transformer.Net2NetTransformer"
"""The `model.target` of taming's configs: a plain VQGAN, a Gumbel-quantised one, and a conditional
transformer whose first stage is a VQGAN."""


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
    """None for an architecture without trained weights: it always gets deterministic random weights."""
    approx_size_mb: int = 0

    @property
    def factor(self) -> int:
        """Pixels per latent cell along each side (16 for an f16 model)."""
        return 2 ** (len(self.architecture["ddconfig"]["ch_mult"]) - 1)


def _heibox(name: str, folder: str, config_path: str, ckpt_path: str, mirrors: tuple[tuple[str, str], ...] = ()):
    config_urls = (f"{_HEIBOX}/{folder}/files/?p={config_path}&dl=1",) + tuple(m[0] for m in mirrors)
    ckpt_urls = (f"{_HEIBOX}/{folder}/files/?p={ckpt_path}&dl=1",) + tuple(m[1] for m in mirrors)
    return RemoteFile(f"{name}.yaml", config_urls), RemoteFile(f"{name}.ckpt", ckpt_urls)


_VQGANS: list[VqganSpec] = []


def _register_vqgan(spec: VqganSpec) -> None:
    _VQGANS.append(spec)


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
        VQMODEL_TARGET,
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
        VQMODEL_TARGET,
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
        GUMBEL_TARGET,
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
        VQMODEL_TARGET,
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
        NET2NET_TARGET,
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
        VQMODEL_TARGET,
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


def get_vqgan_spec(name: str) -> VqganSpec:
    """The VQGAN called `name`, or a ModelError listing the known ones."""
    try:
        return VQGANS[name]
    except KeyError:
        raise ModelError(f"unknown VQGAN {name!r}; known VQGANs: {', '.join(VQGANS)}") from None
