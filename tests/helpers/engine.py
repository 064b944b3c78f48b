"""Work items for engine tests: small tiny-preset settings, an item maker and an image's pixels."""

from __future__ import annotations

import numpy as np

from vqclip.items import GenerationSettings, WorkItem
from vqclip.models.presets import models_for_preset

SETTINGS = GenerationSettings(width=64, height=64, steps=40, cutouts=8, lr=0.2)
# For properties that hold at every step (exact repeats, batch independence, isolation of a failure,
# equal results under a speed switch): a difference shows from the first steps, so 10 tell what 40 do.
FEW_STEPS = SETTINGS.model_copy(update={"steps": 10})


def item(prompt: str, seed: int = 0, settings: GenerationSettings = SETTINGS) -> WorkItem:
    return WorkItem(prompt_id="p", prompt=prompt, seed=seed, settings=settings, models=models_for_preset("tiny"))


def pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(int)
