"""The reference scripts' recipe on the tiny models: init through the quantiser, the init weight formula,
image prompts through cutouts with a stop, gradient init, and the `reference` preset's settings."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vqclip.engine import generate as generate_module
from vqclip.engine.generate import generate, gradient_image, init_weight_loss
from vqclip.errors import ModelError
from vqclip.items import GenerationSettings, ImagePrompt, WorkItem
from vqclip.manifest import load_manifest
from vqclip.models.catalog import VQGANS
from vqclip.models.loader import Models, load_models
from vqclip.models.presets import PRESETS, models_for_preset
from vqclip.models.vqgan import build_vqgan

SETTINGS = GenerationSettings(width=32, height=32, steps=5, cutouts=4, lr=0.2)


def item(prompt: str = "a red fox", seed: int = 3, settings: GenerationSettings = SETTINGS, **update) -> WorkItem:
    work = WorkItem(prompt_id="p", prompt=prompt, seed=seed, settings=settings, models=models_for_preset("tiny"))
    return work.model_copy(update=update)


def pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(int)


def tiny_vqgan(target: str) -> torch.nn.Module:
    """The tiny preset's architecture as a plain or Gumbel VQGAN, with codes spread as the tiny preset spreads them."""
    torch.manual_seed(0)
    model = build_vqgan(VQGANS["tiny_f8"].architecture, target)
    torch.nn.init.normal_(model.codebook)
    if target.endswith("GumbelVQ"):
        # Sharp logits: taming's quantiser adds Gumbel noise to every call, and this keeps its pick on the most likely code.
        model.quantize.proj.weight.data.mul_(1000)
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("target", ["taming.models.vqgan.VQModel", "taming.models.vqgan.GumbelVQ"])
@pytest.mark.parametrize("init", ["image", "gradient"])
def test_an_init_starts_from_the_codes_the_vqgans_quantiser_picks(target, init):
    model = tiny_vqgan(target)
    models = Models(spec=models_for_preset("tiny"), vqgan=model, guides=[], scorer=None, device=torch.device("cpu"))
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    settings = SETTINGS.model_copy(update={"init": "gradient" if init == "gradient" else "tokens"})
    work = item(seed=5, settings=settings, init_image=ImagePrompt(source="init.png", digest="x") if init == "image" else None)
    start = generate_module._initial_latents([work], models, [torch.Generator().manual_seed(5)], {"init.png": photo}, settings)
    if init == "image":
        image = torch.from_numpy(np.array(photo)).permute(2, 0, 1).float().div(255)
    else:
        image = gradient_image(32, 32, torch.Generator().manual_seed(5))
    # taming's own encode: encoder, quant_conv, then the quantiser, whose third output ends in the code indices.
    _, _, (_, _, codes) = model.quantize(model.quant_conv(model.encoder(image[None] * 2 - 1)))
    expected = model.codebook[codes.view(4, 4)].permute(2, 0, 1)
    assert torch.equal(start[0], expected)


def test_the_gradient_init_is_the_references_random_gradient():
    for seed in range(20):
        image = gradient_image(48, 32, torch.Generator().manual_seed(seed)) * 255
        red, green, blue = image
        assert torch.equal(image, image.round()), "whole levels of 255, truncated as the reference's uint8 image"
        assert (red == red[:1]).all() and red[0, 0] == 0 and 1 <= red[0, -1] <= 254 and (red[0].diff() >= 0).all()
        assert (green == green[:, :1]).all() and green[0, 0] == 0 and 2 <= green[-1, 0] <= 254
        assert (blue == blue[:, :1]).all() and 0 <= blue[0, 0] <= 254 and 3 <= blue[-1, 0] <= 127
    first, again = (gradient_image(16, 16, torch.Generator().manual_seed(7)) for _ in range(2))
    assert torch.equal(first, again)


def test_the_init_weight_term_at_steps_0_1_and_10():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 8, 4, 4, generator=generator, dtype=torch.float64)
    z_init = torch.randn(2, 8, 4, 4, generator=generator, dtype=torch.float64)
    weight = 0.8
    for step in (0, 1, 10):
        # The reference: mse_loss(z, zeros) * ((1 / (2 i + 1)) * init_weight) / 2, i the 0-based iteration.
        reference = init_weight_loss(z, z_init, weight, "reference", step)
        expected = [(zi**2).mean() * weight / (2 * (2 * step + 1)) for zi in z]
        assert torch.allclose(reference, torch.stack(expected), rtol=1e-12)
        constant = init_weight_loss(z, z_init, weight, "constant", step)
        assert torch.allclose(constant, ((z - z_init) ** 2).mean((1, 2, 3)) * weight / 2, rtol=1e-12)
    assert torch.allclose(init_weight_loss(z, z_init, weight, "reference", 10) * 42, (z**2).mean((1, 2, 3)) * weight)


@pytest.mark.slow
def test_an_image_prompt_whose_stop_is_above_every_distance_changes_no_pixel(tiny_models):
    """Distances lie in [0, pi**2 / 2]: an image prompt that stops above that pulls nothing, whatever the image."""
    images = {"red.png": Image.new("RGB", (40, 40), (220, 30, 30)), "sea.png": Image.new("RGB", (48, 32), (20, 60, 200))}

    def with_image(source: str, stop: float | None) -> WorkItem:
        return item(image_prompts=(ImagePrompt(source=source, digest=source, weight=2.0, stop=stop),))

    stopped = generate([with_image("red.png", 5.0), with_image("sea.png", 5.0)], tiny_models, images=images)
    assert np.array_equal(pixels(stopped[0]), pixels(stopped[1]))
    pulling = generate([with_image("red.png", None), with_image("sea.png", None)], tiny_models, images=images)
    assert not np.array_equal(pixels(pulling[0]), pixels(pulling[1])), "without a stop the image matters"


def test_an_image_prompt_is_embedded_through_the_cutouts_and_its_item_is_the_same_alone_or_in_a_batch(tiny_models, monkeypatch):
    seen = []
    real_targets = generate_module._targets

    def recording(*args):
        targets = real_targets(*args)
        seen.append(targets)
        return targets

    monkeypatch.setattr(generate_module, "_targets", recording)
    images = {"red.png": Image.new("RGB", (40, 40), (220, 30, 30))}
    imaged = item(prompt="a castle", seed=4, image_prompts=(ImagePrompt(source="red.png", digest="r", weight=1.0),))
    batch = generate([item("a red fox", 1), imaged], tiny_models, images=images)
    (alone,) = generate([imaged], tiny_models, images=images)
    assert seen[0].counts[1, 0].tolist() == [1, SETTINGS.cutouts], "the text has one view, the image one per cutout"
    assert seen[0].embeds.shape[3] == SETTINGS.cutouts and not torch.equal(seen[0].embeds[1, 0, 1, 0], seen[0].embeds[1, 0, 1, 1])
    assert np.array_equal(pixels(batch[1]), pixels(alone)) and batch[1].loss == alone.loss
    assert "tiny-clip-a/random: image:red.png" in alone.similarity


def test_the_reference_recipe_is_the_reference_scripts_defaults():
    """Each value from the argparse defaults of nerdyrodent's VQGAN-CLIP generate.py."""
    recipe = GenerationSettings(recipe="reference")
    assert recipe.steps == 500  # -i/--iterations: default=500
    assert (recipe.width, recipe.height) == (512, 512)  # -s/--size: default_image_size, 512 on a GPU of more than 8 GB
    assert recipe.lr == 0.1  # -lr/--learning_rate: default=0.1
    assert recipe.optimizer == "adam"  # -opt/--optimiser: default='Adam'
    assert recipe.cutouts == 32  # -cuts/--num_cuts: default=32
    assert recipe.cut_pow == 1.0  # -cutp/--cut_power: default=1.
    assert recipe.cut_method == "latest"  # -cutm/--cut_method: default='latest'
    assert recipe.augments == ("Af", "Pe", "Ji", "Er")  # -aug: when none given, [['Af', 'Pe', 'Ji', 'Er']]
    assert recipe.noise_fac == 0.1  # MakeCutouts: self.noise_fac = 0.1
    assert recipe.init_weight == 0.0 and recipe.init_weight_mode == "reference"  # -iw/--init_weight: default=0.
    assert GenerationSettings(recipe="reference", steps=20, cut_method="vqclip").model_dump() == {
        **recipe.model_dump(), "steps": 20, "cut_method": "vqclip"
    }, "explicit settings win over the recipe's"
    preset = PRESETS["reference"]
    assert preset.models.guides[0].clip == "ViT-B-32/openai"  # -m/--clip_model: default='ViT-B/32' (OpenAI's CLIP)
    assert preset.models.vqgan == "imagenet_f16_16384"  # -ckpt: default checkpoints/vqgan_imagenet_f16_16384.ckpt
    assert GenerationSettings().recipe == "vqclip" and GenerationSettings().steps == 300, "our defaults stay ours"


def test_a_manifest_on_the_reference_preset_keeps_its_recipe_on_the_tiny_models():
    manifest = "defaults: {preset: reference}\nprompts:\n  - a red fox\n  - {text: a castle, steps: 20, init_weight: 0.5}\n"
    fox, castle = load_manifest(manifest.encode(), "m.yaml", preset="tiny").plan()
    assert fox.models == models_for_preset("tiny")
    # The override's own settings (the tiny preset's small size) go on top of the manifest's preset's recipe.
    assert fox.settings == GenerationSettings(recipe="reference", **PRESETS["tiny"].settings)
    assert fox.settings.cut_method == "latest" and fox.settings.init_weight_mode == "reference"
    assert castle.settings.steps == 20 and castle.settings.cut_method == "latest" and castle.settings.init_weight == 0.5
    (plain,) = load_manifest(b"prompts: [a red fox]\n", "m.yaml", preset="reference").plan()
    assert plain.settings == GenerationSettings(recipe="reference"), "a preset override brings its recipe"
    (ours,) = load_manifest(b"prompts: [a red fox]\n", "m.yaml", preset="tiny").plan()
    assert ours.settings == GenerationSettings(**PRESETS["tiny"].settings) and ours.settings.recipe == "vqclip"


def test_a_tiny_run_with_the_reference_recipe_gradient_init_and_init_weight(tiny_models):
    settings = GenerationSettings(recipe="reference", width=32, height=32, steps=4, cutouts=4, init="gradient", init_weight=1.0)
    (result,) = generate([item(settings=settings)], tiny_models)
    assert result.ok and result.image.size == (32, 32)


def test_the_reference_preset_needs_openai_vit_b_32_and_says_where_to_get_it(settings):
    with pytest.raises(ModelError) as error:
        load_models("reference", settings.model_copy(update={"offline": True}), device="cpu")
    message = str(error.value)
    assert "vit_base_patch32_clip_224.openai" in message and "vqclip fetch-models" in message


def test_image_prompt_entries_take_a_stop_that_joins_the_item_id():
    manifest = (
        "prompts:\n"
        "  - {text: a fox, image_prompts: ['store:in/cat.png:0.5:0.8', {path: 'store:in/cat.png', weight: 2}]}\n"
        "  - {text: a fox, seed: 1, image_prompts: ['store:in/cat.png:0.5']}\n"
    )
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    with_stop, without = load_manifest(manifest.encode(), "m.yaml", preset="tiny").plan(lambda source: buffer.getvalue())
    first, second = with_stop.image_prompts
    assert (first.source, first.weight, first.stop) == ("store:in/cat.png", 0.5, 0.8)
    assert (second.weight, second.stop) == (2.0, None) and without.image_prompts[0].stop is None
    unstopped = with_stop.model_copy(update={"image_prompts": (first.model_copy(update={"stop": None}), second)})
    assert with_stop.item_id != unstopped.item_id


def test_the_new_settings_at_their_defaults_leave_item_ids_as_they_were(monkeypatch):
    monkeypatch.setattr("vqclip.items.__version__", "0.2.0")
    work = item(settings=GenerationSettings(width=64, height=64, steps=10, cutouts=8), image_prompts=())
    assert work.item_id == "25af95ddf61e5452ddaa", "the id this item had with engine 0.2.0"
    for changed in ({"init_weight_mode": "reference"}, {"recipe": "reference"}, {"init": "gradient"}):
        assert work.model_copy(update={"settings": work.settings.model_copy(update=changed)}).item_id != work.item_id
