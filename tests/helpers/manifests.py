"""Manifest test data: small real PNGs, and malformed manifests with the error each must give."""

from __future__ import annotations

import io

import pytest
from PIL import Image


def png(colour: str) -> bytes:
    """A small real PNG of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


CAT, DOG, STORED = png("orange"), png("brown"), png("grey")


LONG = " ".join(["word"] * 80)


def case(case_id: str, content: str | bytes, expected: str, name: str = "m.yaml", **limits):
    """A malformed manifest, the fragment its error must contain, and Config limits to load it under."""
    return pytest.param(name, content, expected, limits, id=case_id)


BAD = [
    case(
        "unpaired surrogate in JSON",
        '{"prompts": [{"text": "a fox"},\n  {"text": "a \\ud800 cat"}]}',
        "m.json:2: an escape (\\ud800) stands for half of a UTF-16 pair",
        name="m.json",
    ),
    case("unpaired surrogate in YAML", 'prompts:\n  - "a fox \\udc00"\n', "m.yaml:2: an escape (\\udc00) stands for half of a UTF-16 pair"),
    case("learning rate too high", "prompts:\n  - text: a fox\n    lr: 1e308\n", "m.yaml:3: prompts[0].lr: Input should be less than or equal to 10"),
    case("cut_pow too high", "defaults:\n  cut_pow: 1e9\nprompts: [a fox]\n", "m.yaml:2: defaults.cut_pow: Input should be less than or equal to 10"),
    case("init_weight too high", "prompts:\n  - {text: a fox, init_weight: 1e6}\n", "m.yaml:2: prompts[0].init_weight: Input should be less than or equal to 1000"),
    # true and false are not numbers, though pydantic's lax mode would read them as 1 and 0.
    case("n: true", "defaults: {n: true}\nprompts: [a fox]\n", "m.yaml:1: defaults.n: true is not a number; write a number here"),
    case("a seed of false", "prompts:\n  - {text: a fox, seeds: [3, false]}\n", "m.yaml:2: prompts[0].seeds: false is not a number"),
    case("zoom frames: true", "defaults: {zoom: {frames: true}}\nprompts: [a fox]\n", "m.yaml:1: defaults.zoom.frames: true is not a number"),
    case("a guide weight of true", "defaults: {guides: [[tiny-clip-a/random, true]]}\nprompts: [a fox]\n", "defaults.guides[0]: true is not a weight"),
    # json keeps the last of a repeated key without a word; YAML's reader refuses it, and so do these.
    case("a repeated key in JSON", '{"prompts": ["a fox"],\n "defaults": {"n": 1,\n  "n": 50}}', "m.json:3: key 'n' appears twice in one mapping; keep one", name="m.json"),
    case("a repeated key in JSONL", '{"text": "a fox"}\n{"text": "a cat", "n": 1, "n": 50}\n', "m.jsonl:2: key 'n' appears twice in one mapping", name="m.jsonl"),
    # Weights far beyond any useful ratio overflow the loss: the item would only fail, step after step.
    case("text weight 1e308", 'prompts: ["a fox:1e308"]\n', "m.yaml:1: prompts[0].text: prompt part 1 ('a fox') has weight 1e+308; use a number from -1000 to 1000"),
    case("noise weight -1e9", "defaults: {noise_prompts: ['7:-1e9']}\nprompts: [a fox]\n", "defaults.noise_prompts[0].weight: weight -1e+09 is out of range"),
    # Counts far over the limit are refused at once, not expanded first (a billion seeds derived, or
    # every seed of a long list compared with every other, took minutes).
    case("a billion images", "prompts:\n  - {text: a fox, n: 1000000000}\n", "m.yaml:2: prompts[0].n: 1000000000 images per prompt, more than the 64 allowed"),
    case(
        "a hundred thousand seeds",
        "prompts:\n  - text: a fox\n    seeds: [" + ", ".join(map(str, range(100_000))) + "]\n",
        "m.yaml:3: prompts[0].seeds: 100000 images per prompt, more than the 64 allowed",
    ),
    case(
        "wrong type",
        "prompts:\n  - text: a fox\n    steps: many\n",
        "m.yaml:3: prompts[0].steps: Input should be a valid integer",
    ),
    case(
        "unknown top field",
        "colour: red\nprompts: [a fox]\n",
        "m.yaml:1: colour: unknown field; allowed fields: defaults, filter, name, prompts, version",
    ),
    case(
        "unknown defaults field",
        "defaults:\n  stepz: 10\nprompts: [a fox]\n",
        "m.yaml:2: defaults.stepz: unknown field; allowed fields: augment",
    ),
    case(
        "unknown prompt field",
        "prompts:\n  - text: a fox\n    weight: 2\n",
        "m.yaml:3: prompts[0].weight: unknown field",
    ),
    case(
        "unknown image field",
        "prompts:\n  - text: a fox\n    image_prompts:\n      - {path: cat.png, wieght: 1}\n",
        "m.yaml:4: prompts[0].image_prompts[0].wieght: unknown field; allowed fields: path, stop, weight",
    ),
    case(
        "unknown guide field",
        "defaults:\n  guides:\n    - {clip: ViT-B-32/openai, w: 1}\nprompts: [a fox]\n",
        "m.yaml:3: defaults.guides[0].w: unknown field; allowed fields: clip, weight",
    ),
    case("missing text", "prompts:\n  - id: fox\n", "m.yaml:2: prompts[0].text: missing"),
    case("prompt is a number", "prompts:\n  - 42\n", "m.yaml:2: prompts[0]: a prompt is a string or a mapping"),
    case("weight zero", "prompts:\n  - 'a fox:0'\n", "m.yaml:2: prompts[0].text: prompt part 1 ('a fox') has weight 0"),
    case(
        "empty prompt part",
        "prompts:\n  - 'a fox | | blurry'\n",
        "m.yaml:2: prompts[0].text: prompt part 2 ('') has no text",
    ),
    case(
        "nan weight",
        "prompts:\n  - 'a fox:nan'\n",
        "m.yaml:2: prompts[0].text: prompt part 1 ('a fox') has weight nan",
    ),
    case(
        "infinite weight",
        "prompts:\n  - 'a fox:inf'\n",
        "m.yaml:2: prompts[0].text: prompt part 1 ('a fox') has weight inf",
    ),
    case(
        "over-long prompt",
        f"prompts:\n  - {LONG}\n",
        "m.yaml:2: prompts[0].text: prompt part 1 is 80 CLIP tokens long",
    ),
    case(
        "too many prompts",
        "prompts: [a, b, c]\n",
        "m.yaml:1: prompts: 3 prompts, more than the 2 allowed",
        max_prompts=2,
    ),
    case("no prompts", "prompts: []\n", "m.yaml:1: prompts: List should have at least 1 item"),
    case(
        "huge width",
        "defaults:\n  width: 4096\nprompts: [a fox]\n",
        "m.yaml:2: defaults.width: 4096 pixels, more than the 1024 allowed",
    ),
    case(
        "too many steps",
        "prompts:\n  - {text: a fox, steps: 9000}\n",
        "m.yaml:2: prompts[0].steps: 9000 steps, more than the 5000 allowed",
    ),
    case(
        "not a multiple of 16",
        "defaults:\n  height: 200\nprompts: [a fox]\n",
        "m.yaml:2: defaults.height: 200 is not a multiple of 16",
    ),
    case(
        "zero size",
        "prompts:\n  - {text: a fox, width: 0}\n",
        "m.yaml:2: prompts[0].width: Input should be greater than 0",
    ),
    case(
        "duplicate ids",
        "prompts:\n  - {id: fox, text: a fox}\n  - {id: fox, text: a red fox}\n",
        "m.yaml:3: prompts[1].id: id 'fox' is already used by prompts[0]",
    ),
    case(
        "id clashes with a default id",
        "prompts:\n  - {id: p002, text: a fox}\n  - a cat\n",
        "m.yaml:3: prompts[1]: default id (from its position) 'p002' is already used by prompts[0]",
    ),
    case(
        "bad id",
        "prompts:\n  - {id: Red Fox, text: a fox}\n",
        "m.yaml:2: prompts[0].id: id 'Red Fox' is not allowed",
    ),
    case(
        "parent path",
        "prompts:\n  - text: a fox\n    image_prompts: ['../cat.png']\n",
        "m.yaml:3: prompts[0].image_prompts[0].path: '../cat.png' leaves the manifest's folder",
    ),
    case(
        "hidden parent path",
        "prompts:\n  - text: a fox\n    init_image: sub/../../cat.png\n",
        "m.yaml:3: prompts[0].init_image: 'sub/../../cat.png' leaves the manifest's folder",
    ),
    case(
        "absolute path",
        "prompts:\n  - text: a fox\n    init_image: /etc/passwd\n",
        "m.yaml:3: prompts[0].init_image: '/etc/passwd' is an absolute path",
    ),
    case(
        "https URL",
        "prompts:\n  - text: a fox\n    image_prompts: ['https://example.com/cat.png:0.5']\n",
        "m.yaml:3: prompts[0].image_prompts[0].path: 'https://example.com/cat.png' is a URL",
    ),
    case(
        "file URL",
        "prompts:\n  - text: a fox\n    init_image: file:///etc/passwd\n",
        "m.yaml:3: prompts[0].init_image: 'file:///etc/passwd' is a URL",
    ),
    case(
        "missing file",
        "prompts:\n  - text: a fox\n    init_image: nope.png\n",
        "m.yaml:3: prompts[0].init_image: 'nope.png': no such file",
    ),
    case(
        "store key escapes",
        "prompts:\n  - text: a fox\n    init_image: store:inputs/../../secret\n",
        "m.yaml:3: prompts[0].init_image: 'store:inputs/../../secret' is not a usable store key",
    ),
    case(
        "image weight zero",
        "prompts:\n  - text: a fox\n    image_prompts: ['cat.png:0']\n",
        "m.yaml:3: prompts[0].image_prompts[0].weight: weight 0 does nothing",
    ),
    case(
        "duplicate seeds",
        "prompts:\n  - text: a fox\n    seeds: [3, 4, 3]\n",
        "m.yaml:3: prompts[0].seeds: seed 3 appears more than once",
    ),
    case(
        "negative seed",
        "prompts:\n  - text: a fox\n    seeds: [-1]\n",
        "m.yaml:3: prompts[0].seeds[0]: Input should be greater than or equal to 0 (got -1)",
    ),
    case(
        "negative base seed",
        "defaults:\n  seed: -5\nprompts: [a fox]\n",
        "m.yaml:2: defaults.seed: Input should be greater than or equal to 0 (got -5)",
    ),
    case(
        "n and seeds disagree",
        "prompts:\n  - text: a fox\n    n: 3\n    seeds: [1, 2]\n",
        "m.yaml:3: prompts[0].n: n is 3 but 2 seeds are given",
    ),
    case(
        "n too large",
        "prompts:\n  - {text: a fox, n: 65}\n",
        "m.yaml:2: prompts[0].n: 65 images per prompt, more than the 64 allowed",
    ),
    case(
        "too many seeds",
        "prompts:\n  - {text: a fox, seeds: [1, 2, 3]}\n",
        "m.yaml:2: prompts[0].seeds: 3 images per prompt, more than the 2 allowed",
        max_images_per_prompt=2,
    ),
    case(
        "unknown preset",
        "defaults:\n  preset: huge\nprompts: [a fox]\n",
        "m.yaml:2: defaults.preset: unknown preset 'huge'; known presets: default",
    ),
    case(
        "unknown vqgan",
        "prompts:\n  - {text: a fox, vqgan: imagenet_f99}\n",
        "m.yaml:2: prompts[0].vqgan: unknown VQGAN 'imagenet_f99'",
    ),
    case(
        "unknown clip model",
        "defaults:\n  guides: [ViT-Q-99/openai]\nprompts: [a fox]\n",
        "m.yaml:2: defaults.guides[0].clip: unknown CLIP model 'ViT-Q-99'",
    ),
    case(
        "unknown pretrained tag",
        "defaults:\n  scorer: ViT-B-32/imaginary\nprompts: [a fox]\n",
        "m.yaml:2: defaults.scorer: 'imaginary' is not a pretrained tag of ViT-B-32",
    ),
    case(
        "guide weight zero",
        "defaults:\n  guides:\n    - {clip: ViT-B-32/openai, weight: 0}\nprompts: [a fox]\n",
        "m.yaml:3: defaults.guides[0].weight: Input should be greater than 0",
    ),
    case("bad version", "version: 2\nprompts: [a fox]\n", "m.yaml:1: version: Input should be 1"),
    case(
        "bad optimizer",
        "defaults:\n  optimizer: sgd\nprompts: [a fox]\n",
        "m.yaml:2: defaults.optimizer: Input should be 'adam', 'adamw', 'adagrad', 'adamax', 'nadam', 'radam' or 'rmsprop' (got 'sgd')",
    ),
    case("duplicate yaml key", "prompts:\n  - text: a fox\n    n: 1\n    n: 2\n", "m.yaml:4: key 'n' appears twice"),
    case("top level scalar", "42\n", "m.yaml: the top level is a int; make it a mapping"),
    case("binary garbage", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "m.yaml: a binary file, not a text manifest"),
    case("not utf-8", b"prompts:\n  - caf\xe9\n", "m.yaml:2: not UTF-8 text (byte 0xe9)"),
    case("empty file", "  \n\n", "m.yaml: the manifest is empty"),
    case("only comments", "# nothing here\n", "m.yaml: the manifest has only comments"),
    case("too large", "prompts: [a fox, a cat]\n", "m.yaml: 24 bytes, more than the 10 allowed", max_manifest_bytes=10),
    case(
        "unknown extension",
        "prompts: [a fox]\n",
        "m.txt: unknown manifest format '.txt'; use one of .yaml, .yml, .json",
        "m.txt",
    ),
    case("yaml unclosed bracket", "prompts:\n  - [a fox\n  - b\n", "m.yaml:2: YAML syntax error: while parsing a flow sequence"),
    case("yaml unterminated quote", 'name: x\nprompts:\n  - "a fox\n  - b\n', "m.yaml:3: YAML syntax error: while scanning a quoted"),
    case("yaml bad escape", 'prompts:\n  - a fox\n  - "a \\q cat"\n', "m.yaml:3: YAML syntax error"),
    case("yaml bad indentation", "prompts:\n  - a fox\n bad: 1\n", "m.yaml:3: YAML syntax error"),
    case(
        "noise prompt weight",
        "defaults:\n  noise_prompts: ['12:0']\nprompts: [a fox]\n",
        "m.yaml:2: defaults.noise_prompts[0].weight: weight 0 does nothing",
    ),
    case(
        "noise prompt seed",
        "prompts:\n  - {text: a fox, noise_prompts: [x]}\n",
        "m.yaml:2: prompts[0].noise_prompts[0].seed: Input should be a valid integer",
    ),
    case(
        "json syntax error",
        '{"prompts": [\n  "a fox",\n]\n}\n',
        "m.json:3: JSON syntax error: Expecting value",
        "m.json",
    ),
    case(
        "json schema error",
        '{\n  "prompts": [\n    {"text": "a fox",\n     "steps": "many"}\n  ]\n}\n',
        "m.json:4: prompts[0].steps: Input should be a valid integer",
        "m.json",
    ),
    case("jsonl bad line", '{"text": "a fox"}\n{"text": \n', "m.jsonl:2: not valid JSON", "m.jsonl"),
    case(
        "jsonl schema error",
        '{"defaults": {"steps": 10}}\n\n{"text": "a fox", "n": 0}\n',
        "m.jsonl:3: prompts[0].n: Input should be greater than or equal to 1",
        "m.jsonl",
    ),
    case(
        "jsonl prompts in header",
        '{"name": "x", "prompts": ["a"]}\n"a fox"\n',
        "m.jsonl:1: the header cannot hold prompts",
        "m.jsonl",
    ),
    case(
        "csv unknown column",
        "id,txt\nfox,a fox\n",
        "m.csv:1: unknown column 'txt'; allowed columns (separated by commas): ",
        "m.csv",
    ),
    case("csv without text", "id,n\nfox,1\n", "m.csv:1: the header row has no 'text' column", "m.csv"),
    case(
        "csv bad int",
        "text,n\na fox,2\na cat,two\n",
        "m.csv:3: prompts[1].n: Input should be a valid integer, unable to parse string as an integer (got 'two')",
        "m.csv",
    ),
    case(
        "csv bad seed",
        "text,seeds\na fox,1;x\n",
        "m.csv:2: prompts[0].seeds[1]: Input should be a valid integer",
        "m.csv",
    ),
    case(
        "csv extra cells",
        "text,n\na fox, with a comma,2\n",
        "m.csv:2: 3 cells but the header has 2 columns",
        "m.csv",
    ),
    case(
        "csv multiline cell keeps line numbers",
        'text,n\n"a fox\nin the snow",1\na cat,-1\n',
        "m.csv:4: prompts[1].n",
        "m.csv",
    ),
]
