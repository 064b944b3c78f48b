"""What a model is: the VQGAN, the weighted guiding CLIP ensemble and the scoring CLIP behind an image.

`ModelSpec` is the one description of the models everywhere: presets name one, manifests build one,
work items carry one (and hash it into their ids), the loader builds models from one.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, NamedTuple, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from vqclip.errors import ModelError
from vqclip.models.catalog import VqganSpec, get_vqgan_spec

RANDOM = "random"
"""The `pretrained` tag for deterministic random weights."""


def split_clip_name(name: str) -> tuple[str, str]:
    """Split ``"ViT-B-32/laion2b_s34b_b79k"`` into model and pretrained tag (or local weight file)."""
    model, sep, pretrained = name.partition("/")
    if not sep or not model or not pretrained:
        raise ModelError(
            f"CLIP model {name!r} must be written 'MODEL/PRETRAINED', e.g. 'ViT-B-32/laion2b_s34b_b79k' "
            f"or 'ViT-B-32/{RANDOM}' (see `open_clip.list_pretrained()`)"
        )
    return model, pretrained


def _clip_name(name: str) -> str:
    split_clip_name(name)
    return name


ClipName = Annotated[str, AfterValidator(_clip_name)]
"""A CLIP model written 'MODEL/PRETRAINED'."""

Name = TypeVar("Name", bound=str)


class Guide(NamedTuple, Generic[Name]):
    """One guiding CLIP model and its weight in the ensemble.

    A pair, so it is written `[clip, weight]` in JSON (item ids hash that form). The name's type is a
    parameter: a manifest asks for `Guide[a stricter name]`.
    """

    clip: Name
    weight: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0


def _guide_shorthand(value: Any) -> Any:
    weight = value.get("weight") if isinstance(value, dict) else value[1] if isinstance(value, (list, tuple)) and len(value) == 2 else None
    if isinstance(weight, bool):
        raise ValueError(f"{str(weight).lower()} is not a weight; write a number above 0")
    return {"clip": value} if isinstance(value, str) else value


GuideInput = Annotated[Guide[Name], BeforeValidator(_guide_shorthand)]
"""A Guide as written: a [clip, weight] pair, a {clip, weight} mapping, or a bare "MODEL/PRETRAINED" (weight 1)."""


class ModelSpec(BaseModel):
    """The models behind an image: VQGAN, weighted guiding CLIP ensemble, scoring CLIP."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vqgan: str
    guides: tuple[GuideInput[ClipName], ...]
    scorer: ClipName
    random_weights: bool = False

    @field_validator("vqgan")
    @classmethod
    def _known_vqgan(cls, value: str) -> str:
        get_vqgan_spec(value)
        return value

    @field_validator("guides")
    @classmethod
    def _some_guide(cls, value: tuple[Guide, ...]) -> tuple[Guide, ...]:
        if not value:
            raise ValueError("at least one guiding CLIP model is needed")
        return value

    @property
    def vqgan_spec(self) -> VqganSpec:
        """The catalog entry of the VQGAN."""
        return get_vqgan_spec(self.vqgan)

    @property
    def factor(self) -> int:
        """Pixels per latent cell (sizes must be multiples of it)."""
        return self.vqgan_spec.factor

    @property
    def synthetic(self) -> bool:
        """Whether images from these models come from untrained weights (label them as such)."""
        return self.random_weights or self.vqgan_spec.checkpoint is None
