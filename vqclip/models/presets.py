"""Presets: named model specs, read from the data file `presets.yaml` (in the style of open_clip's model configs)."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from types import MappingProxyType
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from vqclip.errors import ModelError
from vqclip.models.spec import ModelSpec


class Preset(BaseModel):
    """A named ModelSpec and the generation settings it implies.

    `settings` are defaults of `GenerationSettings` that a manifest or the command line may override.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    models: ModelSpec
    settings: Annotated[Mapping[str, Any], AfterValidator(MappingProxyType)] = Field({}, validate_default=True)


def _read_presets() -> dict[str, Preset]:
    data = yaml.safe_load(files(__package__).joinpath("presets.yaml").read_text())
    return {name: Preset(name=name, **fields) for name, fields in data.items()}


PRESETS: dict[str, Preset] = _read_presets()


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a ModelError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def models_for_preset(name: str) -> ModelSpec:
    """The ModelSpec of a named preset."""
    return get_preset(name).models
