"""Named recipes: the generation settings a recipe stands for when a manifest or preset leaves them unset.

`vqclip` is this engine's own recipe (the plain `GenerationSettings` defaults). `reference` is the
default recipe of nerdyrodent's VQGAN-CLIP `generate.py` (its argparse defaults): 500 iterations,
512x512 (its size on a GPU with more than 8 GB), learning rate 0.1 with Adam, 32 cutouts at cut
power 1, the `latest` cut method with the augmentations Af, Pe, Ji, Er, and its init weight formula.
"""

from __future__ import annotations

from typing import Any, Literal

Recipe = Literal["vqclip", "reference"]

RECIPES: dict[str, dict[str, Any]] = {
    "vqclip": {},
    "reference": {
        "steps": 500,
        "width": 512,
        "height": 512,
        "lr": 0.1,
        "optimizer": "adam",
        "cutouts": 32,
        "cut_pow": 1.0,
        "cut_method": "latest",
        "augments": ["Af", "Pe", "Ji", "Er"],
        "noise_fac": 0.1,
        "init_weight_mode": "reference",
    },
}
"""Per recipe, the settings it gives when they are not set explicitly."""


def apply_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """Config `data` with its recipe's values filled in wherever `data` leaves them out.

    An unknown recipe fills in nothing, so that validation reports it as the wrong value it is.
    """
    recipe = data.get("recipe")
    return {**RECIPES.get(recipe if isinstance(recipe, str) else "vqclip", {}), **data}
