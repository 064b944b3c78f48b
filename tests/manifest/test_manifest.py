"""Manifests: the examples load, bad manifests fail with precise messages, and expansion is deterministic."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.helpers.manifests import BAD, CAT, DOG, STORED, png
from vqclip.cli.main import app
from vqclip.config import Config, get_config
from vqclip.errors import ManifestError, ObjectNotFound
from vqclip.items import GenerationSettings, Video
from vqclip.manifest import (
    Defaults,
    PromptEntry,
    derive_seed,
    describe_plan,
    load_manifest,
    load_manifest_file,
    shards,
)
from vqclip.models.presets import models_for_preset
from vqclip.prompts import WeightedPrompt
from vqclip.storage import open_store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = ["quickstart.yaml", "prompts.json", "prompts.jsonl", "prompts.csv", "story.yaml"]


def load(text: str | bytes, name: str = "m.yaml", base_dir: Path | None = None, **kwargs):
    data = text.encode() if isinstance(text, str) else text
    return load_manifest(data, name, base_dir=base_dir, **kwargs)


def error_of(text: str | bytes, name: str = "m.yaml", base_dir: Path | None = None, **kwargs) -> str:
    with pytest.raises(ManifestError) as caught:
        load(text, name, base_dir, **kwargs)
    return str(caught.value)


# --- (a) the examples ---------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", [None, "tiny"])
@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_each_example_loads_and_plans(example, preset):
    manifest = load_manifest_file(EXAMPLES / example, preset=preset)
    items = manifest.plan()
    assert items and len({item.item_id for item in items}) == len(items)
    if preset:
        assert all(item.models == models_for_preset(preset) for item in items)


def test_quickstart_is_three_prompts_of_two_images_in_one_shard():
    manifest = load_manifest_file(EXAMPLES / "quickstart.yaml", preset="tiny")
    items = manifest.plan()
    assert [p.id for p in manifest.prompts] == ["lighthouse", "fox", "city"]
    assert len(items) == 6 and len(shards(items, manifest.shard_size)) == 1
    assert all("|" in item.prompt for item in items)


# --- (b) malformed manifests: each names the file and the line or field ---------------------------------


@pytest.mark.parametrize(("name", "content", "expected", "limits"), BAD)
def test_bad_manifest_is_reported_precisely(folder, name, content, expected, limits):
    message = error_of(content, name, base_dir=folder, config=Config(**limits))
    assert expected in message
    assert message.startswith(name)


def test_an_escaped_utf16_pair_is_the_character_it_stands_for():
    yaml_text = 'prompts:\n  - "a fox \\ud83e\\udd8a"\n'
    json_text = '{"prompts": ["a fox \\ud83e\\udd8a"]}'
    assert load(yaml_text).prompts[0].text == "a fox \N{FOX FACE}"
    assert load_manifest(json_text.encode(), "m.json", preset="tiny").prompts[0].text == "a fox \N{FOX FACE}"


def test_unknown_preset_override():
    assert "m.yaml: preset override: unknown preset 'huge'" in error_of("prompts: [a fox]\n", preset="huge")


def test_a_preset_with_another_factor_changes_what_sizes_are_allowed():
    text = "defaults: {width: 72, height: 64}\nprompts: [a fox]\n"
    assert "72 is not a multiple of 16, the pixels per latent cell of VQGAN imagenet_f16_16384" in error_of(text)
    assert load(text, preset="tiny").prompts[0].settings.width == 72


def test_local_paths_need_a_local_manifest():
    text = "prompts:\n  - {text: a fox, init_image: cat.png}\n"
    expected = "m.yaml:2: prompts[0].init_image: 'cat.png' is a local path, but m.yaml is not in a local folder"
    assert expected in error_of(text)


def test_a_link_out_of_the_folder_is_refused(folder, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    outside.write_bytes(b"secret")
    (folder / "link.png").symlink_to(outside)
    text = "prompts:\n  - {text: a fox, init_image: link.png}\n"
    assert "'link.png' links outside the manifest's folder" in error_of(text, base_dir=folder)


def test_load_manifest_file_reports_a_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="nope.yaml: cannot read the manifest"):
        load_manifest_file(tmp_path / "nope.yaml")


# --- (c) every error in one message -----------------------------------------------------------------


def test_all_errors_are_reported_together(folder):
    text = """\
defaults:
  width: 100
  stepz: 3
prompts:
  - id: fox
  - text: "a fox:0"
  - text: a cat
    init_image: ../cat.png
  - text: a dog
    seeds: [1, 1]
    n: 999
  - text: fine
"""
    message = error_of(text, base_dir=folder)
    expected = [
        # The defaults' other fields are still checked, in the same pass as the schema errors.
        "m.yaml:2: defaults.width: 100 is not a multiple of 16",
        "m.yaml:3: defaults.stepz: unknown field",
        "m.yaml:5: prompts[0].text: missing",
        "m.yaml:6: prompts[1].text: prompt part 1 ('a fox') has weight 0",
        "m.yaml:8: prompts[2].init_image: '../cat.png' leaves the manifest's folder",
        "m.yaml:10: prompts[3].seeds: seed 1 appears more than once",
        "m.yaml:11: prompts[3].n: 999 images per prompt",
        "m.yaml:11: prompts[3].n: n is 999 but 2 seeds are given",
    ]
    assert message.startswith(f"m.yaml: {len(expected)} errors, nothing was run:")
    positions = [message.index(fragment) for fragment in expected]
    assert positions == sorted(positions)


def test_errors_of_defaults_and_prompts_are_reported_together_when_defaults_are_valid(folder):
    text = """\
defaults:
  width: 100
prompts:
  - {text: a fox, init_image: nope.png}
  - {id: x, text: b}
  - {id: x, text: c}
"""
    message = error_of(text, base_dir=folder)
    for fragment in (
        "m.yaml:2: defaults.width: 100 is not a multiple of 16",
        "m.yaml:4: prompts[0].init_image",
        "m.yaml:6: prompts[2].id",
    ):
        assert fragment in message
    assert message.count("defaults.width") == 1


def test_a_broken_only_prompt_does_not_hide_the_defaults_size_rule():
    message = error_of("defaults: {width: 100}\nprompts:\n  - 'a fox:0'\n")
    assert message.startswith("m.yaml: 2 errors")
    assert "m.yaml:1: defaults.width: 100 is not a multiple of 16" in message
    assert "m.yaml:3: prompts[0].text: prompt part 1 ('a fox') has weight 0" in message


def test_a_wrong_field_is_reported_once_and_not_judged_again_through_its_stand_in():
    # The prompt's width and preset are wrong: no "not a multiple" error about a value nobody wrote.
    text = "defaults: {preset: tiny, width: 72}\nprompts:\n  - {text: a fox, width: wide, preset: huge, stepz: 3}\n"
    message = error_of(text)
    assert message.startswith("m.yaml: 3 errors")
    assert "multiple" not in message


def test_a_non_image_beside_the_manifest_is_reported_with_the_schema_errors(folder):
    (folder / "notes.png").write_text("not a picture")
    text = "prompts:\n  - {text: a fox, n: 0}\n  - {text: a cat, image_prompts: ['cat.png', 'notes.png:0.5']}\n"
    message = error_of(text, base_dir=folder)
    assert "m.yaml:2: prompts[0].n: Input should be greater than or equal to 1" in message
    assert (
        "m.yaml:3: prompts[1].image_prompts[1].path: notes.png is not an image (Pillow recognises no image format "
        "in it); replace it with a PNG or JPEG"
    ) in message


def test_a_truncated_image_is_refused(folder):
    noise = io.BytesIO()
    Image.frombytes("L", (64, 64), bytes(range(256)) * 16).save(noise, format="PNG")
    (folder / "cut.png").write_bytes(noise.getvalue()[: len(noise.getvalue()) // 2])
    message = error_of("prompts:\n  - {text: a fox, init_image: cut.png}\n", base_dir=folder)
    assert "m.yaml:2: prompts[0].init_image: cut.png is not a usable image (" in message


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f", "\x85", "\u202a", "\u202e", "\u2066", "\u2069"])
def test_control_characters_in_prompt_text_are_refused(char):
    escaped = char.encode("unicode_escape").decode().replace("\\x", "\\u00")
    text = f'{{"prompts": ["a fox", {{"id": "fox", "text": "a re{escaped}d fox"}}]}}'
    message = error_of(text, "m.json")
    assert message.startswith(f"m.json:1: prompts[1].text: character 5 is U+{ord(char):04X}")
    assert message.endswith(", a control character; remove it")


def test_a_control_character_in_a_csv_cell_names_its_row():
    message = error_of("text,n\na fox,1\na c\u202eat,2\n", "m.csv")
    assert message == "m.csv:3: prompts[1].text: character 4 is U+202E (RIGHT-TO-LEFT OVERRIDE), a control character; remove it"


def test_a_store_key_with_a_control_character_is_refused_at_validation():
    message = error_of('prompts:\n  - {text: a fox, init_image: "store:in/\\x01cat.png"}\n')
    assert "m.yaml:2: prompts[0].init_image: 'store:in/\\x01cat.png' is not a usable store key" in message
    assert "control" in message


def many(prompts: int, n: int, side: int, steps: int) -> str:
    lines = [f"defaults: {{width: {side}, height: {side}, steps: {steps}, n: {n}}}", "prompts:"]
    return "\n".join(lines + [f"  - a fox, study {k}" for k in range(prompts)]) + "\n"


def test_the_admission_cap_lets_a_large_batch_through():
    manifest = load(many(prompts=100, n=20, side=512, steps=1000))
    assert sum(len(p.seeds) for p in manifest.prompts) == 2000


def test_the_admission_cap_refuses_a_huge_batch_with_its_figures():
    message = error_of(many(prompts=1000, n=64, side=1024, steps=5000))
    assert message == (
        "m.yaml:2: prompts: 64,000 images of 320,000,000 steps in all, 335,544,320 megapixel-steps (width x height "
        "x steps, summed over the images), more than the 1,000,000 allowed (VQCLIP_MAX_MEGAPIXEL_STEPS); split the "
        "manifest or raise that limit"
    )


def test_the_admission_cap_counts_each_prompts_own_settings():
    text = "defaults: {width: 256, height: 256, steps: 100}\nprompts:\n  - a fox\n  - {text: a cat, n: 3, steps: 300}\n"
    # 256 x 256 x (100 + 3 x 300) = 65.5 million pixel-steps
    assert load(text, config=Config(max_megapixel_steps=66)).prompts
    assert "4 images of 1,000 steps in all, 66 megapixel-steps" in error_of(text, config=Config(max_megapixel_steps=65))
    one = "prompts: [{text: a fox, width: 1024, height: 1024, steps: 5000}]\n"
    assert "m.yaml:1: prompts: 1 image of 5,000 steps in all, 5,243 megapixel-steps" in error_of(
        one, config=Config(max_megapixel_steps=5000)
    )


def test_a_store_input_that_is_not_an_image_names_the_field_and_the_key(tmp_path):
    store = open_store(str(tmp_path / "store"))
    store.put_bytes("runs/old/manifest.yaml", b"prompts: [a fox]\n")
    store.put_bytes("inputs/fox.png", STORED)
    text = "prompts:\n  - a cat\n  - {text: a fox, image_prompts: ['store:inputs/fox.png', 'store:runs/old/manifest.yaml']}\n"
    manifest = load(text)
    with pytest.raises(ManifestError) as caught:
        manifest.plan(read_source=lambda source: store.get_bytes(source.removeprefix("store:")))
    assert str(caught.value) == (
        "m.yaml: prompts[1].image_prompts[1].path: store:runs/old/manifest.yaml is not an image (Pillow recognises "
        "no image format in it); upload a PNG or JPEG under that key or name another one"
    )


def test_a_missing_store_input_names_the_field(tmp_path):
    store = open_store(str(tmp_path / "store"))
    manifest = load("prompts:\n  - {text: a fox, init_image: 'store:inputs/gone.png'}\n")
    with pytest.raises(ManifestError) as caught:
        manifest.plan(read_source=lambda source: store.get_bytes(source.removeprefix("store:")))
    assert str(caught.value) == (
        "m.yaml: prompts[0].init_image: store:inputs/gone.png: no such object in the store; upload it or fix the key"
    )


@pytest.mark.parametrize("command", ["validate", "submit"])
def test_cli_refuses_an_over_cap_manifest_and_writes_nothing(tmp_path, monkeypatch, command):
    manifest = tmp_path / "big.yaml"
    manifest.write_text("defaults: {preset: tiny, width: 256, height: 256, steps: 300, n: 2}\nprompts: [a fox]\n")
    out = tmp_path / "out"
    monkeypatch.setenv("VQCLIP_MAX_MEGAPIXEL_STEPS", "10")
    get_config.cache_clear()
    try:
        result = CliRunner().invoke(app, [command, str(manifest), "--storage", str(out)])
    finally:
        get_config.cache_clear()
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert "big.yaml:2: prompts: 2 images of 600 steps in all, 40 megapixel-steps" in output
    assert "more than the 10 allowed (VQCLIP_MAX_MEGAPIXEL_STEPS); split the manifest or raise that limit" in output
    assert "Traceback" not in output
    assert not out.exists() or not any(out.rglob("*"))


def test_a_huge_number_of_errors_is_cut_short():
    text = "prompts:\n" + "".join(f"  - 'fox {i}:0'\n" for i in range(80))
    message = error_of(text)
    assert message.startswith("m.yaml: 80 errors") and "... and 30 more" in message


# --- the formats ----------------------------------------------------------------------------------------


def test_same_manifest_in_every_format_plans_the_same_items(folder):
    yaml_text = """\
name: same
defaults: {steps: 20, n: 2, seed: 5}
prompts:
  - {id: fox, text: "a fox:1 | blurry:-0.5", seeds: [3, 4], image_prompts: ["cat.png:0.5"]}
  - {id: cat, text: a cat, width: 320}
"""
    json_text = (
        '{"name": "same", "defaults": {"steps": 20, "n": 2, "seed": 5}, "prompts": ['
        '{"id": "fox", "text": "a fox:1 | blurry:-0.5", "seeds": [3, 4],'
        ' "image_prompts": [{"path": "cat.png", "weight": 0.5}]},'
        '{"id": "cat", "text": "a cat", "width": 320}]}'
    )
    jsonl_text = (
        '{"name": "same", "defaults": {"steps": 20, "n": 2, "seed": 5}}\n'
        '{"id": "fox", "text": "a fox:1 | blurry:-0.5", "seeds": [3, 4], "image_prompts": ["cat.png:0.5"]}\n'
        '{"id": "cat", "text": "a cat", "width": 320}\n'
    )
    csv_text = (
        "id,text,seeds,image_prompts,width,steps,n,seed\n"
        "fox,a fox:1 | blurry:-0.5,3 4,cat.png:0.5,,20,,\n"
        "cat,a cat,,,320,20,2,5\n"
    )
    plans = [
        [(i.item_id, i.prompt_id, i.seed) for i in load(text, name, base_dir=folder).plan()]
        for text, name in ((yaml_text, "m.yaml"), (json_text, "m.json"), (jsonl_text, "m.jsonl"), (csv_text, "m.csv"))
    ]
    assert len(plans[0]) == 4 and all(plan == plans[0] for plan in plans)


def test_jsonl_without_header_and_with_string_lines():
    manifest = load('"a fox"\n\n{"id": "cat", "text": "a cat"}\n', "m.jsonl")
    assert [p.id for p in manifest.prompts] == ["p001", "cat"] and manifest.name is None


def test_csv_lists_and_byte_order_mark(folder):
    text = "\ufeffText,Seeds,Image_Prompts,Guides\na fox,3;4 5,cat.png:0.5; sub/dog.png,ViT-B-32/openai;ViT-B-16/openai"
    prompt = load(text, "m.csv", base_dir=folder).prompts[0]
    assert prompt.seeds == (3, 4, 5)
    assert prompt.image_prompts == (("cat.png", 0.5, None), ("sub/dog.png", 1.0, None))
    assert prompt.models.guides == (("ViT-B-32/openai", 1.0), ("ViT-B-16/openai", 1.0))


def test_a_top_level_list_is_the_prompts():
    assert [p.text for p in load("- a fox\n- a cat\n").prompts] == ["a fox", "a cat"]
    assert [p.text for p in load('["a fox"]', "m.json").prompts] == ["a fox"]
    assert "m.yaml:2: prompts[1].text: prompt part 1 ('a cat') has weight 0" in error_of("- a fox\n- 'a cat:0'\n")
    assert "m.json:3: prompts[1].n: Input should be" in error_of('[\n  "a fox",\n  {"text": "a cat", "n": -1}\n]', "m.json")


def test_every_generation_setting_can_be_set_at_both_levels():
    for name in GenerationSettings.model_fields:
        assert name in Defaults.model_fields and name in PromptEntry.model_fields


def test_models_layer_defaults_then_prompt():
    text = """\
defaults:
  preset: tiny
  scorer: tiny-clip-a/random
prompts:
  - a fox
  - {text: a cat, guides: [{clip: tiny-clip-b/random, weight: 2}]}
  - {text: a dog, preset: default}
"""
    fox, cat, dog = load(text).prompts
    tiny = models_for_preset("tiny")
    assert fox.models == tiny.model_copy(update={"scorer": "tiny-clip-a/random"})
    assert cat.models.guides == (("tiny-clip-b/random", 2.0),) and cat.models.scorer == "tiny-clip-a/random"
    assert dog.models == models_for_preset("default")
    assert {p.models for p in load(text, preset="ensemble").prompts} == {models_for_preset("ensemble")}


def test_noise_prompts_come_from_defaults_or_the_prompt_and_decide_the_item_id():
    text = """\
defaults: {preset: tiny, noise_prompts: ["12:0.5", 7]}
prompts:
  - {id: fox, text: a fox}
  - {id: cat, text: a cat, noise_prompts: [{seed: 3, weight: -1}]}
  - {id: dog, text: a dog, noise_prompts: []}
"""
    fox, cat, dog = load(text).plan()
    assert [(p.seed, p.weight) for p in fox.noise_prompts] == [(12, 0.5), (7, 1.0)]
    assert [(p.seed, p.weight) for p in cat.noise_prompts] == [(3, -1.0)] and dog.noise_prompts == ()
    plain = load(text.replace('noise_prompts: ["12:0.5", 7]', "seed: 0")).plan()
    assert plain[2].item_id == dog.item_id, "items without noise prompts keep the ids they had"
    assert plain[0].item_id != fox.item_id and plain[1].item_id == cat.item_id
    other = load(text.replace('"12:0.5"', '"12:0.25"')).plan()
    assert other[0].item_id != fox.item_id
    (row,) = load("text,noise_prompts\na fox,12:0.5; 7\n", "m.csv", preset="tiny").plan()
    assert row.noise_prompts == fox.noise_prompts


def test_every_optimiser_of_the_engine_can_be_chosen():
    from typing import get_args

    from vqclip.engine.generate import OPTIMISERS
    from vqclip.items import Optimizer

    assert set(OPTIMISERS) == set(get_args(Optimizer))
    for name in OPTIMISERS:
        (prompt,) = load(f"defaults: {{optimizer: {name}}}\nprompts: [a fox]\n", preset="tiny").prompts
        assert prompt.settings.optimizer == name


# --- (d) expansion ----------------------------------------------------------------------------------------

PLAN = """\
defaults: {preset: tiny, width: 64, height: 64, steps: 10, n: 3, shard_size: 2}
prompts:
  - {id: fox, text: "a red fox:1 | blurry:-0.5"}
  - {id: sea, text: a blue sea, n: 2}
  - {id: sky, text: a grey sky, steps: 20, seeds: [7, 8, 9, 10]}
"""


def test_one_item_per_image_with_deterministic_seeds_and_ids():
    first, again = load(PLAN).plan(), load(PLAN).plan()
    assert [(i.prompt_id, i.index) for i in first] == [("fox", 0), ("fox", 1), ("fox", 2), ("sea", 0), ("sea", 1)] + [
        ("sky", k) for k in range(4)
    ]
    assert [(i.seed, i.item_id) for i in first] == [(i.seed, i.item_id) for i in again]
    assert [i.seed for i in first if i.prompt_id == "sky"] == [7, 8, 9, 10]
    assert [i.seed for i in first if i.prompt_id == "fox"] == [derive_seed(0, "fox", k) for k in range(3)]
    assert len({i.item_id for i in first}) == len(first)


def test_seeds_follow_the_base_seed_and_the_prompt_id():
    base = {i.item_id: i.seed for i in load(PLAN).plan()}
    reseeded = load(PLAN.replace("shard_size: 2}", "shard_size: 2, seed: 1}")).plan()
    assert all(i.seed != base.get(i.item_id) for i in reseeded if i.prompt_id != "sky")
    changed = load(PLAN.replace("a blue sea", "a green sea")).plan()
    sea_ids = {i.item_id for i in changed if i.prompt_id == "sea"}
    assert sea_ids.isdisjoint(base) and {i.item_id for i in changed if i.prompt_id == "fox"} <= set(base)


def test_derived_seeds_are_stable_across_versions():
    assert derive_seed(0, "p001", 0) == int.from_bytes(hashlib.sha256(b"0/p001/0").digest()[:4], "big")
    assert all(0 <= derive_seed(base, "x", k) < 2**32 for base in (0, 2**62) for k in range(50))


def test_shards_respect_shard_size_and_never_mix_settings():
    manifest = load(PLAN)
    items = manifest.plan()
    batches = shards(items, manifest.shard_size)
    assert all(1 <= len(batch) <= 2 for batch in batches)
    assert all(len({item.shard_key for item in batch}) == 1 for batch in batches)
    in_shards = [item for batch in batches for item in batch]
    assert [i for i in in_shards if i.prompt_id != "sky"] == [i for i in items if i.prompt_id != "sky"]
    assert sorted(i.item_id for i in in_shards) == sorted(i.item_id for i in items)
    assert len(batches) == 5  # fox+sea: 5 items -> 3 shards; sky (other steps): 4 items -> 2 shards


def test_batch_size_is_still_read_as_the_shard_size_but_not_beside_it():
    assert load(PLAN.replace("shard_size: 2", "batch_size: 2")).shard_size == 2
    message = error_of(PLAN.replace("shard_size: 2", "shard_size: 2, batch_size: 3"))
    assert message.startswith("m.yaml:1: defaults:") and "not both; keep shard_size" in message


def test_describe_plan():
    manifest = load(PLAN)
    summary = describe_plan(manifest.plan(), manifest.shard_size)
    assert (summary["images"], summary["shards"], summary["steps"]) == (9, 5, 5 * 10 + 4 * 20)
    assert [(row["prompt_id"], row["images"], row["size"], row["steps"]) for row in summary["prompts"]] == [
        ("fox", 3, "64x64", 10),
        ("sea", 2, "64x64", 10),
        ("sky", 4, "64x64", 20),
    ]
    assert summary["prompts"][0]["models"] == "tiny_f8 / tiny-clip-a/random"


def test_image_sources_are_hashed_locally_and_read_from_the_store(folder):
    text = """\
prompts:
  - text: a fox
    image_prompts: ["cat.png:0.5", {path: "store:inputs/cat.png", weight: -0.3}]
    init_image: sub/dog.png
  - {text: a dog, image_prompts: [cat.png]}
"""
    manifest = load(text, base_dir=folder)
    assert manifest.sources() == ["cat.png", "store:inputs/cat.png", "sub/dog.png"]
    with pytest.raises(ManifestError) as caught:
        manifest.plan()
    assert "m.yaml: prompts[0].image_prompts[1].path: store:inputs/cat.png is in the object store" in str(caught.value)
    asked = []
    items = manifest.plan(read_source=lambda source: asked.append(source) or STORED)
    assert asked == ["store:inputs/cat.png"]
    fox = items[0]
    assert [(p.source, p.digest, p.weight) for p in fox.image_prompts] == [
        ("cat.png", hashlib.sha256(CAT).hexdigest(), 0.5),
        ("store:inputs/cat.png", hashlib.sha256(STORED).hexdigest(), -0.3),
    ]
    assert fox.init_image.digest == hashlib.sha256(DOG).hexdigest()

    (folder / "cat.png").write_bytes(png("black"))
    assert manifest.plan(read_source=lambda source: STORED)[0].item_id != fox.item_id


def test_a_missing_store_object_is_a_manifest_error(folder):
    def missing(source: str) -> bytes:
        raise ObjectNotFound(source)

    manifest = load("- {text: a, init_image: 'store:in/a.png'}\n- {text: b, init_image: 'store:in/b.png'}\n")
    with pytest.raises(ManifestError) as caught:
        manifest.plan(read_source=missing)
    assert "prompts[0].init_image: store:in/a.png: no such object" in str(caught.value)
    assert "prompts[1].init_image: store:in/b.png: no such object" in str(caught.value)


def test_identical_images_from_explicit_seeds_are_refused():
    manifest = load("prompts:\n  - {text: a fox, seeds: [1, 2]}\n  - {text: a fox, seeds: [2, 3]}\n")
    with pytest.raises(ManifestError, match="prompt 'p002' image 0 would be identical to prompt 'p001' image 1"):
        manifest.plan()


# --- (e) YAML is loaded safely ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "!!python/object/apply:os.system ['touch pwned']",
        "!!python/object:builtins.object {}",
        "!!python/name:os.system",
    ],
)
def test_yaml_python_tags_are_refused(payload, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = error_of(f"prompts:\n  - text: a fox\n    id: {payload}\n")
    assert message.startswith("m.yaml:3: could not determine a constructor for the tag")
    assert "plain data only" in message
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("first", ["x", '"\\u00e9"'], ids=["plain", "escaped"])
def test_yaml_aliases_do_not_blow_up(first):
    lines = [f"a: &a [{first}, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + k)}: &{chr(98 + k)} [{', '.join(['*' + chr(97 + k)] * 9)}]" for k in range(8)]
    message = error_of("\n".join(lines) + "\nprompts: [a fox]\n")
    assert "m.yaml:1: a: unknown field" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("defaults: {video: 3, save_every: 5}\nprompts: [a fox]\n", "m.yaml:1: defaults.video: video is true, false or a mapping such as {fps: 12}, not 3"),
        ("prompts: [{text: a fox, save_every: 5, video: {fps: 0}}]\n", "prompts[0].video.fps: Input should be greater than 0"),
        ("prompts: [{text: a fox, save_every: 5, video: {rate: 3}}]\n", "prompts[0].video.rate: unknown field; allowed fields: fps"),
        ("prompts: [{text: a fox, video: true}]\n", "prompts[0].video: video is made of the frames, and save_every is 0"),
        ("prompts: ['a forest ^ a city']\n", "prompts[0].text: the text is a schedule of 2 prompts separated by '^', and change_every is 0"),
        ("defaults: {steps: 20, change_every: 20}\nprompts: ['a forest ^ a city']\n", "defaults.change_every: change_every is 20, not less than the 20 steps"),
        ("prompts: [{text: a fox, change_every: -1}]\n", "prompts[0].change_every: Input should be greater than or equal to 0"),
        ("prompts: [{text: 'a forest ^ ', change_every: 5}]\n", "prompts[0].text: scheduled prompt 2 of 2: the prompt is empty"),
        (f"prompts: [{{text: 'a forest ^ {'fox ' * 80}', change_every: 5}}]\n", "scheduled prompt 2 of 2: prompt part 1 is 80 CLIP tokens long"),
        ("prompts: [{text: \"a forest ^ a \\x01city\", change_every: 5}]\n", "prompts[0].text: character 14 is U+0001"),
    ],
)
def test_bad_video_and_prompt_schedules_are_reported(content, expected):
    assert expected in error_of(content)


def test_a_prompt_schedule_is_part_of_the_item_id_and_video_only_when_set():
    plain, scheduled, literal = load(
        "defaults: {steps: 20, change_every: 5}\nprompts: [a forest, 'a forest ^ a city', 'a forest \\^ a city']\n", preset="tiny"
    ).plan()
    assert scheduled.schedule[1][0].text == "a city" and literal.schedule == [[WeightedPrompt("a forest ^ a city")]]
    assert len({plain.item_id, scheduled.item_id, literal.item_id}) == 3
    video = plain.settings.model_copy(update={"save_every": 5, "video": Video()})
    assert plain.model_copy(update={"settings": video}).item_id != plain.item_id  # an item done without its video is not done
