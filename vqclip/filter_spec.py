"""The zero-shot filter's settings: labels, the rejected ones, an optional threshold and prompt templates.

A manifest's ``filter:`` section, or the run-level default in ``VQCLIP_FILTER`` (inline JSON, or the
path of a YAML or JSON file), holds::

    filter: {labels: [landscape, text, person], reject: [text], threshold: 0.5}

Every reject label must also be one of ``labels`` (a misspelt reject label is an error, not a new
label). ``templates`` each hold ``{}`` once, where the label goes; without them, open_clip's seven
short ImageNet templates are used ("itap of a {}.", "art of the {}.", ...).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vqclip.errors import VqclipError

Label = Annotated[str, Field(min_length=1, max_length=200)]


class FilterSpec(BaseModel):
    """Which zero-shot labels an image may get, and which of them keep it out of the published outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: list[Label] = Field(min_length=2, max_length=1000, description="Every label an image may get.")
    reject: list[Label] = Field(min_length=1, description="Labels that filter an image out when they are its top label.")
    threshold: float | None = Field(
        None, gt=0, le=1, description="Also filter an image whose reject labels' summed probability is over this."
    )
    templates: list[str] | None = Field(
        None, min_length=1, max_length=100, description="Prompt templates, `{}` the label; None: open_clip's short ImageNet set."
    )

    @field_validator("labels", "reject")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        stripped = [value.strip() for value in values]
        if any(not value for value in stripped):
            raise ValueError("a label is blank; give every label some words")
        repeated = sorted({value for value in stripped if stripped.count(value) > 1})
        if repeated:
            raise ValueError(f"{', '.join(map(repr, repeated))} given more than once; list each label once")
        return stripped

    @field_validator("templates")
    @classmethod
    def _one_placeholder(cls, values: list[str] | None) -> list[str] | None:
        for template in values or ():
            if template.count("{}") != 1 or template.count("{") != 1 or template.count("}") != 1:
                raise ValueError(f"template {template!r} must hold '{{}}' exactly once (where the label goes) and no other braces")
        return values

    @model_validator(mode="after")
    def _reject_among_labels(self) -> FilterSpec:
        unknown = [label for label in self.reject if label not in self.labels]
        if unknown:
            raise ValueError(
                f"reject label(s) {', '.join(map(repr, unknown))} not among labels {self.labels}; add them to labels or fix the spelling"
            )
        if set(self.reject) == set(self.labels):
            raise ValueError("every label is rejected, so every image would be filtered; keep at least one label out of reject")
        return self

    @property
    def version(self) -> str:
        """A short hash of the labels, reject labels, threshold and templates: which filter marked an image."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def filter_problems(error: ValidationError) -> str:
    """A pydantic error on a filter section as one line per field."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'filter'}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors())


def parse_filter(data: object, where: str) -> FilterSpec:
    """A filter spec from plain data, or a VqclipError that names `where` and each bad field."""
    try:
        return FilterSpec.model_validate(data)
    except ValidationError as exc:
        raise VqclipError(f"{where}: {filter_problems(exc)}") from None


def default_filter(value: str | None) -> FilterSpec | None:
    """The run-level default filter from VQCLIP_FILTER: inline JSON (starting with '{'), or a YAML or JSON file's path."""
    if not value or not value.strip():
        return None
    text, where = value, "VQCLIP_FILTER"
    if not value.lstrip().startswith("{"):
        path = Path(value)
        try:
            text = path.read_text()
        except OSError as exc:
            raise VqclipError(f"VQCLIP_FILTER={value}: cannot read it ({exc.strerror or exc}); give a YAML/JSON file's path or inline JSON") from None
        where = f"VQCLIP_FILTER file {path}"
    try:
        data = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise VqclipError(f"{where}: not valid YAML or JSON ({exc})") from None
    if isinstance(data, dict) and set(data) == {"filter"}:
        data = data["filter"]
    return parse_filter(data, where)


class FilterLabel(BaseModel):
    """An image's zero-shot label and whether the filter keeps it out of the published outputs."""

    label: str
    probability: float
    """The top label's probability."""
    reject_probability: float
    """The summed probability of the reject labels."""
    probabilities: dict[str, float]
    filtered: bool
    labels_version: str
    """`FilterSpec.version` of the filter that made this label."""
