"""The reference's cut methods and augmentations, each property from a reading of nerdyrodent's VQGAN-CLIP
`generate.py`, measured over many draws on small tensors."""

from __future__ import annotations

import json
import math
from typing import get_args

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from vqclip import items as items_module
from vqclip.cli.main import app
from vqclip.engine import cutouts as cutouts_module
from vqclip.engine.augment import augment_per_item, chosen_augmentations
from vqclip.engine.cutouts import crop_sizes, make_cutouts, pooled, resample
from vqclip.engine.generate import generate
from vqclip.errors import ManifestError
from vqclip.items import AugmentCode, CutMethod, GenerationSettings, WorkItem
from vqclip.manifest import load_manifest
from vqclip.models.presets import models_for_preset

CUT = 16
ALL_CODES: tuple[AugmentCode, ...] = get_args(AugmentCode)
METHODS: tuple[CutMethod, ...] = get_args(CutMethod)


def generators(count: int, first: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(first + i) for i in range(count)]


def picture(side: int = 24, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """Random pixels in [0.2, 1], so that a pixel an erasing sets to 0 stands out."""
    return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.2


def test_latest_cutouts_before_augmentation_are_the_whole_image_at_clips_size_average_and_max_pooled_evenly():
    image = picture(side=32)
    blocks = image.view(1, 3, CUT, 2, CUT, 2)
    expected = (blocks.mean((3, 5)) + blocks.amax((3, 5))) / 2
    cutouts = make_cutouts(image, generators(1), 5, CUT, noise_fac=0.0, method="latest", augments=())
    assert cutouts.shape == (5, 3, CUT, CUT)
    for cutout in cutouts:
        torch.testing.assert_close(cutout[None], expected)
    uneven = picture(side=40)
    (cutout, *_) = make_cutouts(uneven, generators(1), 2, CUT, noise_fac=0.0, method="latest", augments=())
    torch.testing.assert_close(cutout[None], (F.adaptive_avg_pool2d(uneven, CUT) + F.adaptive_max_pool2d(uneven, CUT)) / 2)


def test_updatedpooling_pools_the_same_way_before_its_own_augmentations(monkeypatch):
    monkeypatch.setattr(cutouts_module, "pooling_update_augmentations", nn.Sequential)
    image = picture(side=32)
    cutouts = make_cutouts(image, generators(1), 3, CUT, noise_fac=0.0, method="updatedpooling")
    torch.testing.assert_close(cutouts, pooled(image, CUT).expand(3, -1, -1, -1))


def test_crop_sides_follow_min_plus_range_times_u_to_the_cut_pow():
    low, high = CUT, 256
    for cut_pow in (0.5, 1.0, 2.0):
        sides = np.array(crop_sizes(torch.Generator().manual_seed(1), 20_000, high, 320, CUT, cut_pow))
        assert sides.min() >= low and sides.max() <= high
        for q in (0.1, 0.25, 0.5, 0.75, 0.9):
            expected = low + (high - low) * q**cut_pow
            assert abs(np.quantile(sides, q) - expected) < 2.5, (cut_pow, q, np.quantile(sides, q), expected)


@pytest.mark.parametrize("method", ["original", "updated", "nrupdated"])
def test_the_crop_methods_resample_square_crops_of_those_sides_from_inside_the_image(method, monkeypatch):
    drawn, crops = [], []

    def sizes(*args) -> list[int]:
        drawn.extend(crop_sizes(*args))
        return drawn[-args[1] :]

    def recording(crop: torch.Tensor, size: int) -> torch.Tensor:
        crops.append(crop)
        return resample(crop, size)

    monkeypatch.setattr(cutouts_module, "crop_sizes", sizes)
    monkeypatch.setattr(cutouts_module, "resample", recording)
    image = picture(side=48)[:, :, :40]
    make_cutouts(image, generators(1), 12, CUT, 2.0, noise_fac=0.0, method=method, augments=())
    assert [tuple(crop.shape[2:]) for crop in crops] == [(side, side) for side in drawn]
    assert len(drawn) == 12 and all(CUT <= side <= 40 for side in drawn)


def test_resampling_keeps_a_flat_image_and_filters_detail_it_cannot_keep():
    flat = torch.full((1, 3, 40, 40), 0.6)
    torch.testing.assert_close(resample(flat, CUT), torch.full((1, 3, CUT, CUT), 0.6))
    stripes = (torch.arange(64) % 2).float().expand(1, 3, 64, 64)
    shrunk = resample(stripes, CUT)
    assert abs(shrunk.mean().item() - 0.5) < 0.05 and shrunk.std().item() < 0.05, "the lanczos prefilter removes the stripes"
    assert F.interpolate(stripes, CUT, mode="bicubic", align_corners=True).std().item() > 0.2, "bicubic alone aliases them"


def test_resampling_is_the_references_lanczos_prefilter_then_bicubic_interpolation():
    for side, size in ((57, CUT), (12, CUT), (40, 32)):
        crop = torch.rand(2, 3, side, side, dtype=torch.float64)
        planes = crop.reshape(6, 1, side, side)
        if size < side:
            ratio = size / side
            half = math.ceil(2 / ratio + 1) - 2
            x = torch.arange(-half, half + 1, dtype=torch.float64) * ratio
            taps = torch.where(x.abs() < 2, torch.sinc(x) * torch.sinc(x / 2), 0.0)
            taps = taps / taps.sum()
            planes = F.conv2d(F.pad(planes, (0, 0, half, half), mode="reflect"), taps[None, None, :, None])
            planes = F.conv2d(F.pad(planes, (half, half, 0, 0), mode="reflect"), taps[None, None, None, :])
        expected = F.interpolate(planes.view(2, 3, side, side), (size, size), mode="bicubic", align_corners=True)
        torch.testing.assert_close(resample(crop.float(), size), expected.float(), atol=1e-5, rtol=0)


def test_original_clamps_into_range_and_adds_no_noise():
    edges = (torch.arange(48) // 6 % 2).float().expand(1, 3, 48, 48).contiguous()
    cutouts = make_cutouts(edges, generators(1), 64, CUT, noise_fac=0.5, method="original")
    assert cutouts.min() >= 0 and cutouts.max() <= 1
    flat = make_cutouts(torch.full((1, 3, 48, 48), 0.6), generators(1), 8, CUT, noise_fac=0.5, method="original")
    torch.testing.assert_close(flat, torch.full_like(flat, 0.6))


PROBABILITY = {"Ji": 0.7, "Sh": 0.5, "Gn": 0.5, "Pe": 0.7, "Ro": 0.7, "Af": 0.7, "Et": 0.7, "Ts": 0.7, "Er": 0.7, "Re": 0.5}
SAME_FOR_AN_ITEMS_CUTOUTS = {"Ts", "Er", "Re"}
"""Augmentations whose one draw decides whether all of an item's cutouts change (kornia's same_on_batch or batch gate)."""


def draws(code: AugmentCode, method: CutMethod = "latest", items: int = 1, cutn: int = 600):
    """Per item (its own generator): the augmented cutouts, the pooled image they start from and kornia's parameters.

    The `latest` method's cutouts, or for `nrupdated` the same pooled cutouts through that method's variant.
    """
    image = picture()
    start = pooled(image, CUT)
    augmentations = chosen_augmentations((code,), CUT, method)
    runs = []
    for seed in range(items):
        if method == "latest":
            cutouts = make_cutouts(image, generators(1, seed), cutn, CUT, noise_fac=0.0, method=method, augments=(code,))
        else:
            cutouts = augment_per_item(augmentations, start.expand(cutn, -1, -1, -1).contiguous(), [seed])
        runs.append((cutouts, dict(augmentations[0]._params)))
    return runs, start


@pytest.mark.parametrize("code", sorted(PROBABILITY))
def test_each_augmentation_changes_a_cutout_with_the_reference_probability(code):
    runs, start = draws(code, items=150, cutn=2) if code in SAME_FOR_AN_ITEMS_CUTOUTS else draws(code)
    changed = torch.stack([(cutouts - start).abs().amax((1, 2, 3)) > 1e-6 for cutouts, _ in runs]).float()
    if code in SAME_FOR_AN_ITEMS_CUTOUTS:
        if code != "Re":  # a resized crop may happen to take a whole cutout, changing nothing
            assert (changed == changed[:, :1]).all(), "one draw for all of an item's cutouts"
        changed = changed.amax(1)
    p = PROBABILITY[code]
    assert abs(changed.mean().item() - p) < 4 * math.sqrt(p * (1 - p) / changed.numel()), changed.mean()


def test_the_reference_crop_augmentation_never_changes_a_cutout_of_clips_size():
    runs, start = draws("Cr")
    assert all(torch.equal(cutouts, start.expand_as(cutouts)) for cutouts, _ in runs)


def gathered(runs, name: str) -> torch.Tensor:
    return torch.cat([params[name].float() for _, params in runs])


@pytest.mark.parametrize("method, degrees, perspective", [("latest", 15, 0.7), ("nrupdated", 30, 0.5)])
def test_geometric_augmentations_draw_from_the_reference_ranges(method, degrees, perspective):
    affine, _ = draws("Af", method)
    angles = gathered(affine, "angle")
    assert angles.abs().max() <= degrees and angles.abs().max() > 0.9 * degrees
    assert gathered(affine, "translations").abs().max() <= 0.1 * CUT + 1e-4
    shear = gathered(affine, "shear_x").abs().max()
    assert 4.5 < shear <= 5
    warp, _ = draws("Pe", method)
    moved = (gathered(warp, "end_points") - gathered(warp, "start_points")).abs().max()
    assert 0.9 * perspective * CUT / 2 < moved <= perspective * CUT / 2 + 1e-4
    rotation, _ = draws("Ro")
    turned = gathered(rotation, "degrees").abs()
    assert 13.5 < turned.max() <= 15


def test_colour_sharpness_and_noise_augmentations_draw_from_the_reference_ranges():
    jitter, _ = draws("Ji")
    for name in ("brightness_factor", "contrast_factor", "saturation_factor"):
        factors = gathered(jitter, name)
        assert 0.9 <= factors.min() < 0.92 and 1.08 < factors.max() <= 1.1, name
    hue = gathered(jitter, "hue_factor")
    assert 0.08 < hue.abs().max() <= 0.1
    sharpness = gathered(draws("Sh")[0], "sharpness")
    assert sharpness.min() >= 0 and 0.27 < sharpness.max() <= 0.3
    noisy, start = draws("Gn", cutn=40)
    added = torch.cat([cutouts - start for cutouts, _ in noisy])
    added = added[added.abs().amax((1, 2, 3)) > 0]
    assert abs(added.std().item() - 1) < 0.05 and abs(added.mean().item()) < 0.05


def test_erasing_blanks_a_tenth_to_two_fifths_of_a_cutout_the_same_for_all_of_an_items_cutouts():
    runs, _ = draws("Er", items=60, cutn=3)
    fractions = []
    for cutouts, _ in runs:
        erased = (cutouts == 0).all(1)
        assert (erased == erased[:1]).all()
        if erased.any():
            fractions.append(erased[0].float().mean().item())
            rows, cols = erased[0].any(1).sum().item(), erased[0].any(0).sum().item()
            assert rows * cols == erased[0].sum().item(), "a rectangle"
            assert 0.3 * 0.8 <= rows / cols <= 1.25 / 0.3
    assert 0.1 * 0.8 <= min(fractions) and max(fractions) <= 0.4 * 1.2


def test_resized_crop_takes_a_tenth_to_all_of_a_cutout():
    runs, _ = draws("Re")
    boxes = gathered(runs, "src")
    sides = boxes[:, 2] - boxes[:, 0] + 1
    area = sides[:, 0] * sides[:, 1] / CUT**2
    assert area.min() >= 0.1 * 0.8 and area.max() <= 1


@pytest.mark.parametrize("method", METHODS)
def test_an_items_cutouts_do_not_depend_on_the_other_items_of_its_batch(method):
    images = picture(side=40, batch=3)
    before = torch.random.get_rng_state()
    together = make_cutouts(images, generators(3, 5), 4, CUT, 1.5, True, 0.1, method, ALL_CODES)
    alone = make_cutouts(images[1:2], generators(1, 6), 4, CUT, 1.5, True, 0.1, method, ALL_CODES)
    assert torch.equal(together[4:8], alone)
    other = make_cutouts(images[1:2], generators(1, 7), 4, CUT, 1.5, True, 0.1, method, ALL_CODES)
    assert not torch.equal(other, alone), "another seed draws other cutouts"
    assert torch.equal(torch.random.get_rng_state(), before), "torch's global generator is left as it was"


TINY = GenerationSettings(width=64, height=64, steps=3, cutouts=4, lr=0.2)


def tiny_item(prompt: str, seed: int, method: CutMethod, augments: tuple[AugmentCode, ...] = ("Af", "Pe", "Ji", "Er")) -> WorkItem:
    settings = TINY.model_copy(update={"cut_method": method, "augments": augments})
    return WorkItem(prompt_id="p", prompt=prompt, seed=seed, settings=settings, models=models_for_preset("tiny"))


@pytest.mark.parametrize("method", METHODS)
def test_every_cut_method_generates_a_finite_image(method, tiny_models):
    (result,) = generate([tiny_item("a red fox", 1, method)], tiny_models)
    assert result.ok and result.image.size == (64, 64) and math.isfinite(result.loss)


def test_manifests_choose_a_cut_method_and_augmentations_and_bad_ones_are_named():
    text = "defaults: {cut_method: nrupdated, augments: [Gn, Af]}\nprompts: [a fox, {text: a cat, cut_method: latest, augments: []}]\n"
    fox, cat = load_manifest(text.encode(), "m.yaml", preset="tiny").plan()
    assert (fox.settings.cut_method, fox.settings.augments) == ("nrupdated", ("Gn", "Af"))
    assert (cat.settings.cut_method, cat.settings.augments) == ("latest", ())
    (row,) = load_manifest(b"text,cut_method,augments\na fox,nrupdated,Gn; Af\n", "m.csv", preset="tiny").plan()
    assert row.settings == fox.settings
    with pytest.raises(ManifestError) as method:
        load_manifest(b"defaults: {cut_method: newest}\nprompts: [a fox]\n", "m.yaml", preset="tiny")
    assert "m.yaml:1: defaults.cut_method:" in str(method.value) and all(name in str(method.value) for name in METHODS)
    with pytest.raises(ManifestError) as code:
        load_manifest(b"prompts: [{text: a fox, augments: [Af, Xx]}]\n", "m.yaml", preset="tiny")
    assert "prompts[0].augments[1]:" in str(code.value) and "'Xx'" in str(code.value)
    assert all(f"'{name}'" in str(code.value) for name in ALL_CODES)


def test_the_new_settings_leave_the_ids_of_existing_items_as_they_were(monkeypatch):
    hashed = []

    class Recording:
        @staticmethod
        def dumps(identity, **kwargs) -> str:
            hashed.append(identity["settings"])
            return json.dumps(identity, **kwargs)

    monkeypatch.setattr(items_module, "json", Recording)
    item = WorkItem(prompt_id="p", prompt="a red fox", seed=3, settings=TINY, models=models_for_preset("tiny"))
    latest = item.model_copy(update={"settings": TINY.model_copy(update={"cut_method": "latest"})})
    fewer = item.model_copy(update={"settings": TINY.model_copy(update={"augments": ("Af",)})})
    assert len({item.item_id, latest.item_id, fewer.item_id}) == 3
    at_defaults, with_latest, with_fewer = hashed
    assert "cut_method" not in at_defaults and "augments" not in at_defaults, "hashed as before these settings existed"
    assert with_latest["cut_method"] == "latest" and with_fewer["augments"] == ["Af"]


def test_the_cli_names_a_bad_cut_method_or_augmentation():
    bad_method = CliRunner().invoke(app, ["generate", "a fox", "--preset", "tiny", "--cut-method", "newest"])
    assert bad_method.exit_code != 0 and "latest" in bad_method.output and "updatedpooling" in bad_method.output
    bad_code = CliRunner().invoke(app, ["generate", "a fox", "--preset", "tiny", "--augments", "Af,Zz"])
    assert bad_code.exit_code != 0 and "'Zz'" in bad_code.output and "Ji, Sh, Gn" in bad_code.output
