"""Work items for engine tests: small tiny-preset settings, an item maker and an image's pixels."""

from __future__ import annotations

import numpy as np

from vqclip.items import GenerationSettings, WorkItem
from vqclip.models.presets import models_for_preset

SETTINGS = GenerationSettings(width=64, height=64, steps=40, cutouts=8, lr=0.2)


def item(prompt: str, seed: int = 0, settings: GenerationSettings = SETTINGS) -> WorkItem:
    return WorkItem(prompt_id="p", prompt=prompt, seed=seed, settings=settings, models=models_for_preset("tiny"))


def pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(int)
