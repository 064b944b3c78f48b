"""Work items: what one image is made from, and the id that names it everywhere."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vqclip import __version__
from vqclip.models.spec import ModelSpec
from vqclip.prompts import MAX_WEIGHT, WeightedPrompt, final_prompt, format_schedule, parse_schedule
from vqclip.recipes import Recipe, apply_recipe

Optimizer = Literal["adam", "adamw", "adagrad", "adamax", "nadam", "radam", "rmsprop"]
"""The reference implementation's optimisers that torch.optim provides, by lower-case name."""

CutMethod = Literal["vqclip", "latest", "original", "updated", "nrupdated", "updatedpooling"]
"""How cutouts are taken: this engine's method (`vqclip`) or one of the reference implementation's five."""

AugmentCode = Literal["Ji", "Sh", "Gn", "Pe", "Ro", "Af", "Et", "Ts", "Cr", "Er", "Re"]
"""The reference implementation's cutout augmentations, by its two-letter codes."""

REFERENCE_AUGMENTS: tuple[AugmentCode, ...] = ("Af", "Pe", "Ji", "Er")
"""The reference implementation's default augmentations, in its order."""


def _names_type(annotation: Any, kinds: tuple[type, ...]) -> bool:
    """Whether `annotation`, its unions and containers unpacked, names one of `kinds`."""
    return any(annotation is kind for kind in kinds) or any(_names_type(arg, kinds) for arg in get_args(annotation))


class NoBooleanNumbers(BaseModel):
    """Refuses true and false in number fields, which pydantic's lax mode would read as 1 and 0 (`n: true`)."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        boolean = next((v for v in (value if isinstance(value, list) else [value]) if isinstance(v, bool)), None)
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        if boolean is not None and _names_type(annotation, (int, float)) and not _names_type(annotation, (bool,)):
            raise ValueError(f"{str(boolean).lower()} is not a number; write a number here")
        return value


class Video(NoBooleanNumbers):
    """An MP4 of an item's frames and final image; `true` in a manifest means the default frame rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fps: int = Field(12, gt=0, le=60, description="Frames per second.")


def _video_shorthand(value: Any) -> Any:
    if value is True:
        return Video()
    if value is False:
        return None
    if value is not None and not isinstance(value, (dict, Video)):
        raise ValueError(f"video is true, false or a mapping such as {{fps: 12}}, not {value!r}")
    return value


class Zoom(NoBooleanNumbers):
    """A zoom video: each frame starts from the previous one, zoomed about its centre and shifted, and is optimised further."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    frames: int = Field(ge=2, le=10_000, description="Frames of the video, the first (a normal generation of `steps` steps) included.")
    steps_per_frame: int = Field(25, gt=0, le=10_000, description="Optimisation steps of each frame after the first.")
    scale: float = Field(1.02, ge=0.5, le=2.0, description="Zoom per frame about the centre: above 1 zooms in, below 1 out.")
    shift_x: int = Field(0, description="Pixels each frame moves right (negative: left), wrapping around the edge.")
    shift_y: int = Field(0, description="Pixels each frame moves down (negative: up), wrapping around the edge.")
    fps: int = Field(12, gt=0, le=60, description="Frames per second of the MP4.")


class GenerationSettings(BaseModel):
    """Config shared by every item of one batch: they fix its tensor shapes and its schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(256, gt=0, description="Image width in pixels (a multiple of the VQGAN factor).")
    height: int = Field(256, gt=0, description="Image height in pixels (a multiple of the VQGAN factor).")
    steps: int = Field(300, gt=0, description="Optimisation steps.")
    cutouts: int = Field(32, gt=0, le=256, description="Random cutouts CLIP sees per step.")
    cut_pow: float = Field(1.0, gt=0, le=10, description="Cutout size exponent; above 1 favours small cutouts.")
    lr: float = Field(0.1, gt=0, le=10, description="Learning rate.")
    optimizer: Optimizer = Field("adam", description="Optimiser of the latent: adam, adamw, adagrad, adamax, nadam, radam or rmsprop.")
    augment: bool = Field(True, description="Flip, rotate, scale and shift cutouts (the vqclip cut method).")
    cut_method: CutMethod = Field("vqclip", description="vqclip (this engine's), or the reference's latest, original, updated, nrupdated or updatedpooling.")
    augments: tuple[AugmentCode, ...] = Field(REFERENCE_AUGMENTS, description="Augmentations of the latest and nrupdated cut methods, in order, by the reference's codes.")
    noise_fac: float = Field(0.1, ge=0, le=10, description="Largest std of the noise added to cutouts.")
    init: Literal["tokens", "noise", "gradient"] = Field(
        "tokens", description="Start from random codes, pixel noise or a random colour gradient (the last two through the VQGAN's encoder and quantiser)."
    )
    init_weight: float = Field(0.0, ge=0, le=1000, description="Weight of the pull on the latent (see init_weight_mode).")
    init_weight_mode: Literal["constant", "reference"] = Field(
        "constant",
        description="constant: pull towards the initial latent with init_weight; reference: pull towards zero with init_weight / (2 step + 1), as the reference scripts do.",
    )
    recipe: Recipe = Field("vqclip", description="vqclip or reference: whose defaults the settings left unset take (see vqclip.recipes).")
    save_every: int = Field(0, ge=0, description="Keep an intermediate frame every N steps (0: none).")
    change_every: int = Field(0, ge=0, description="Steps (frames, in a zoom video) each prompt of a '^' schedule guides before the next takes over.")
    video: Annotated[Video | None, BeforeValidator(_video_shorthand)] = Field(None, description="Assemble the frames and the final image into an MP4 (true, or {fps: N}).")
    zoom: Zoom | None = Field(None, description="Make a zoom video: {frames: N, steps_per_frame: K, scale: 1.02, shift_x: 0, shift_y: 0, fps: 12}.")

    @property
    def turns(self) -> int:
        """What a '^' schedule's change_every counts: the steps, or for a zoom video its frames."""
        return self.zoom.frames if self.zoom else self.steps

    @property
    def total_steps(self) -> int:
        """Optimisation steps of one item: `steps`, and for a zoom video those of its later frames."""
        return self.steps + (self.zoom.frames - 1) * self.zoom.steps_per_frame if self.zoom else self.steps

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, data: Any) -> Any:
        return apply_recipe(data) if isinstance(data, dict) else data


_ADDED_SETTINGS = {
    "change_every": 0,
    "video": None,
    "zoom": None,
    "cut_method": "vqclip",
    "augments": list(REFERENCE_AUGMENTS),
    "init_weight_mode": "constant",
    "recipe": "vqclip",
}
"""Config added after item ids were first handed out, with the values that leave those ids unchanged."""


class ImagePrompt(BaseModel):
    """An image that guides generation like a text prompt; `digest` is the sha256 of its bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    digest: str
    weight: float = 1.0
    stop: float | None = Field(None, description="As a text part's stop: below this signed distance it pulls no more (None: never stops).")


def _usable_weight(value: float) -> float:
    if value == 0:
        raise ValueError("weight 0 does nothing; use a positive weight, or a negative one to push away")
    if abs(value) > MAX_WEIGHT:
        raise ValueError(f"weight {value:g} is out of range; use a number from -{MAX_WEIGHT:g} to {MAX_WEIGHT:g}")
    return value


Weight = Annotated[float, AfterValidator(_usable_weight)]
"""A prompt's weight: a finite number from -MAX_WEIGHT to MAX_WEIGHT but 0 (negative pushes the image away)."""


class NoisePrompt(NoBooleanNumbers):
    """A random embedding drawn from `seed` that guides like a text prompt; "seed:weight" strings and bare seeds allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    seed: int = Field(ge=0, lt=2**63)
    weight: Weight = 1.0

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"seed": data}
        if isinstance(data, str):
            seed, sep, weight = data.partition(":")
            return {"seed": seed.strip(), "weight": weight.strip()} if sep else {"seed": data.strip()}
        return data


class WorkItem(BaseModel):
    """One image to make: a prompt, a seed, the settings and models, and optional image inputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_id: str
    index: int = Field(0, ge=0, description="Which image of its prompt this is (0-based).")
    prompt: str
    seed: int = Field(ge=0, lt=2**63)
    settings: GenerationSettings
    models: ModelSpec
    image_prompts: tuple[ImagePrompt, ...] = ()
    init_image: ImagePrompt | None = None
    noise_prompts: tuple[NoisePrompt, ...] = ()

    @property
    def schedule(self) -> list[list[WeightedPrompt]]:
        """The parsed weighted prompts that take turns (one for a prompt without '^')."""
        return parse_schedule(self.prompt)

    @property
    def parts(self) -> list[WeightedPrompt]:
        """The parsed weighted prompt that guides the last step: the one the final image shows."""
        return final_prompt(self.prompt, self.settings.turns, self.settings.change_every)

    @property
    def item_id(self) -> str:
        """A hash of everything that decides this item's pixels and which files it has (not its position in a manifest).

        The frames and the video decide no pixel, but they are outputs: an item done without them
        must not count as done for a manifest that asks for them, and done is keyed by this id.
        """
        settings = self.settings.model_dump(mode="json")
        for key, unset in _ADDED_SETTINGS.items():  # only when used, so that older ids stay as they were
            if settings[key] == unset:
                del settings[key]
        identity = {
            "prompt": format_schedule(self.schedule),
            "seed": self.seed,
            "settings": settings,
            "models": self.models.model_dump(mode="json", exclude={"scorer"}),
            "image_prompts": [(p.digest, p.weight) + (() if p.stop is None else (p.stop,)) for p in self.image_prompts],
            "init_image": self.init_image.digest if self.init_image else None,
            "engine": __version__,
        }
        if self.noise_prompts:  # only when used, so that the ids of items without them stay as they were
            identity["noise_prompts"] = [(p.seed, p.weight) for p in self.noise_prompts]
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    @property
    def inputs(self) -> list[ImagePrompt]:
        """Every image this item reads: its image prompts and its init image."""
        return list(self.image_prompts) + ([self.init_image] if self.init_image else [])

    @property
    def shard_key(self) -> tuple[str, str]:
        """Items with equal shard keys can share one batch."""
        return (
            self.settings.model_dump_json(),
            self.models.model_dump_json(),
        )
