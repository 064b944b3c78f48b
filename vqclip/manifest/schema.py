"""The manifest's schema: the fields of the run, its defaults and each prompt, with their bounds."""

from __future__ import annotations

import re
from typing import Annotated, Any, Callable, Literal

from pydantic import AfterValidator, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

from vqclip.errors import ModelError, PromptError
from vqclip.items import GenerationSettings, NoBooleanNumbers, NoisePrompt, Weight
from vqclip.models.catalog import get_vqgan_spec
from vqclip.models.names import check_clip_name
from vqclip.models.presets import get_preset
from vqclip.models.spec import GuideInput
from vqclip.prompts import parse_schedule

_SLUG = re.compile(r"[a-z0-9_-]{1,64}")


class _Strict(NoBooleanNumbers):
    # Unknown fields are typos until proven otherwise; non-finite numbers are never meant.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _as_value_error(check: Callable[[str], object], value: str) -> str:
    try:
        check(value)
    except (ModelError, PromptError) as exc:
        raise ValueError(str(exc)) from None
    return value


KnownClipName = Annotated[str, AfterValidator(lambda name: _as_value_error(check_clip_name, name))]
"""A CLIP name a manifest may use: a known open_clip model with a known pretrained tag, or random weights."""


class ImageEntry(_Strict):
    """An image prompt: a path under the manifest's folder or ``store:KEY``; "path:weight" and "path:weight:stop" strings allowed."""

    path: str = Field(min_length=1)
    weight: Weight = 1.0
    stop: float | None = Field(None, description="Where the image stops pulling, as a text part's stop (none by default).")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        pieces = data.split(":")
        numbers: list[str] = []
        # Up to two trailing numbers are the weight and the stop; a trailing ":word" belongs to the path
        # (as in "store:inputs/cat.png").
        while len(pieces) > 1 and len(numbers) < 2 and _is_number(pieces[-1]):
            numbers.insert(0, pieces.pop())
        return {"path": ":".join(pieces), **dict(zip(("weight", "stop"), numbers))}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _Shared(_Strict):
    """Fields that the defaults and each prompt may set (a prompt's value wins)."""

    n: int | None = Field(None, ge=1, description="Images per prompt.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Base of the derived seeds.")
    preset: str | None = None
    vqgan: str | None = None
    guides: Annotated[list[GuideInput[KnownClipName]], Field(min_length=1)] | None = None
    scorer: str | None = None
    noise_prompts: list[NoisePrompt] | None = Field(
        None, description='Random embeddings that guide like prompts, as "seed:weight" (weight 1 if left out).'
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        return value if value is None else _as_value_error(get_preset, value)

    @field_validator("vqgan")
    @classmethod
    def _known_vqgan(cls, value: str | None) -> str | None:
        return value if value is None else _as_value_error(get_vqgan_spec, value)

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, value: str | None) -> str | None:
        return value if value is None else _as_value_error(check_clip_name, value)


def _optional(info: FieldInfo) -> tuple[Any, Any]:
    annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return annotation | None, Field(None, description=info.description)


# Built from GenerationSettings so that every setting, with its bounds, can be overridden and none is forgotten.
_Overrides = create_model(
    "_Overrides",
    __base__=_Shared,
    **{name: _optional(info) for name, info in GenerationSettings.model_fields.items()},
)


class Defaults(_Overrides):
    """Run-level defaults: models, generation settings, images per prompt, shard size, base seed."""

    shard_size: int = Field(4, ge=1, description="Work items per shard (the unit a worker runs).")

    @model_validator(mode="before")
    @classmethod
    def _old_shard_size_name(cls, data: Any) -> Any:
        """Accept `batch_size`, the former name of `shard_size`, unless both are given."""
        if isinstance(data, dict) and "batch_size" in data:
            if "shard_size" in data:
                raise ValueError("give shard_size or its former name batch_size, not both; keep shard_size")
            data = {("shard_size" if key == "batch_size" else key): value for key, value in data.items()}
        return data


class PromptEntry(_Overrides):
    """One prompt as written: its text, id, seeds, image inputs and overrides of the defaults."""

    id: str | None = None
    text: str
    seeds: Annotated[list[Annotated[int, Field(ge=0, lt=2**63)]], Field(min_length=1)] | None = None
    image_prompts: list[ImageEntry] = []
    init_image: str | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"text": data}
        if not isinstance(data, dict):
            raise ValueError(f"a prompt is a string or a mapping with a 'text' field, not {type(data).__name__}")
        return data

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str | None) -> str | None:
        if value is not None and not _SLUG.fullmatch(value):
            raise ValueError(f"id {value!r} is not allowed; use 1 to 64 of a-z, 0-9, '_' and '-', e.g. 'red-fox'")
        return value

    @field_validator("text")
    @classmethod
    def _weighted(cls, value: str) -> str:
        return _as_value_error(lambda text: parse_schedule(text, check_tokens=True), value)


class Header(_Strict):
    """The run level. Defaults and each prompt are validated on their own, so that one bad prompt
    does not hide the problems of the others."""

    version: Literal[1] = 1
    name: str | None = None
    defaults: Any = None
    filter: Any = None
    prompts: Annotated[list[Any], Field(min_length=1)]
