"""The light commands (`validate`, `show`, `models`, `--help`) and the offline failure of `vqclip run` stay free of torch (and of boto3 on a local store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vqclip.run import layout
from vqclip.run.records import IndexEntry, PromptRanking, RankedImage, Ranking, RunIndex
from vqclip.run.state import put_json
from vqclip.storage import LocalStore

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "open_clip", "taming", "prefect", "vqclip.stack.api_server", "boto3")
RUN_ID = "quickstart-20261130-120000-abc123"
# Runs one command as `vqclip` does, then writes the names of every module it imported to the file named last.
WRAPPER = """
import json, sys
from vqclip.cli.main import app
*args, out = sys.argv[1:]
try:
    app(args, prog_name="vqclip")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
json.dump(sorted(sys.modules), open(out, "w"))
sys.exit(code)
"""


def vqclip(tmp_path: Path, *args: str, columns: int = 100) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run a vqclip command in a fresh interpreter with an empty model cache; return it and the modules it imported."""
    modules = tmp_path / "modules.json"
    env = {
        **os.environ,
        "COLUMNS": str(columns),
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "HF_HOME": str(tmp_path / "hf"),
        "VQCLIP_CACHE_DIR": str(tmp_path / "weights"),
        "VQCLIP_STORAGE": str(tmp_path / "store"),
    }
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args, str(modules)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    return done, set(json.loads(modules.read_text())) if modules.exists() else set()


@pytest.fixture
def stored_run(tmp_path: Path) -> tuple[str, str]:
    """A finished run's index and ranking in a folder store with a long path; returns the storage and the best image's path."""
    storage = tmp_path / "a-store-folder-with-a-rather-long-name" / "outputs"
    store = LocalStore(str(storage))
    image_key = layout.image_key(RUN_ID, "0123456789abcdef0123")
    entry = IndexEntry(item_id="0123456789abcdef0123", prompt_id="fox", index=0, seed=7, state="done", image_key=image_key, score=31.5, rank=1)
    put_json(store, layout.index_key(RUN_ID), RunIndex(run_id=RUN_ID, manifest="quickstart.yaml", complete=True, counts={"done": 1}, items=[entry]))
    best = RankedImage(rank=1, item_id=entry.item_id, score=31.5, image_key=image_key)
    put_json(store, layout.ranking_key(RUN_ID), Ranking(run_id=RUN_ID, prompts=[PromptRanking(prompt_id="fox", prompt="a red fox", images=[best])]))
    return str(storage), store.url(image_key)


@pytest.mark.parametrize(
    "args",
    [
        ("validate", "examples/quickstart.yaml"),
        ("validate", "examples/quickstart-tiny.yaml"),
        ("models",),
        ("--help",),
        ("run", "--help"),
        ("generate", "--help"),
        ("validate", "--help"),
        ("show", "--help"),
        ("models", "--help"),
    ],
    ids=" ".join,
)
def test_light_commands_answer_without_importing_torch_or_prefect(tmp_path, args):
    done, modules = vqclip(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert not [name for name in HEAVY if name in modules]


def test_show_prints_the_best_image_path_whole_in_a_narrow_terminal(tmp_path, stored_run):
    storage, best = stored_run
    done, modules = vqclip(tmp_path, "show", RUN_ID, "--storage", storage, columns=40)
    assert done.returncode == 0, done.stderr
    assert len(best) > 40 and f"best fox: {best}" in done.stdout.splitlines()
    assert "…" not in done.stdout
    assert not [name for name in HEAVY if name in modules]


def test_help_shows_placeholders_not_python_types_for_flags_and_arguments(tmp_path):
    done, _ = vqclip(tmp_path, "--help")
    assert "--debug" in done.stdout and "<bool>  Show tracebacks" not in done.stdout
    done, _ = vqclip(tmp_path, "run", "--help")
    assert "{MANIFEST}" in done.stdout and "{manifest}" not in done.stdout


def test_the_default_preset_without_weights_fails_before_the_api_server_and_torch(tmp_path):
    started = time.monotonic()
    done, modules = vqclip(tmp_path, "run", "examples/quickstart.yaml")
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    assert "model weights are missing from the cache" in done.stderr
    assert "vqclip fetch-models imagenet_f16_16384 ViT-B-32/laion2b_s34b_b79k ViT-B-16/laion2b_s34b_b88k" in done.stderr
    assert not [name for name in HEAVY if name in modules]
    assert elapsed < 30  # about a second on a quiet machine; the machine is shared (benchmarks/cli_latency.py measures it)


@pytest.mark.slow
def test_generate_takes_the_tiny_presets_defaults_and_explicit_options_win(tmp_path):
    from vqclip.media.png import decode_image, read_png_metadata

    out = tmp_path / "fox.png"
    done, _ = vqclip(tmp_path, "generate", "a red fox", "--preset", "tiny", "--steps", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert decode_image(out.read_bytes()).size == (128, 128)
    settings = read_png_metadata(out.read_bytes())["settings"]
    assert (settings["width"], settings["steps"], settings["cutouts"]) == (128, 2, 8)


def test_weight_locations_known_without_open_clip_match_open_clip():
    import open_clip

    from vqclip.models.presets import PRESETS
    from vqclip.models.spec import RANDOM
    from vqclip.models.weights import PRESET_WEIGHT_LOCATIONS, open_clip_models

    assert open_clip_models() == set(open_clip.list_models())
    named = {name for p in PRESETS.values() for name in [g.clip for g in p.models.guides] + [p.models.scorer] if not name.endswith(f"/{RANDOM}")}
    assert named <= set(PRESET_WEIGHT_LOCATIONS)
    for name, location in PRESET_WEIGHT_LOCATIONS.items():
        cfg = open_clip.get_pretrained_cfg(*name.split("/"))
        assert location == {key: cfg[key] for key in location}, name
    assert open_clip.constants.HF_WEIGHTS_NAME == "open_clip_pytorch_model.bin"


@pytest.mark.parametrize("text", ["a red fox", "x" * 75, "a,b.c;d!e?f'g\"h(i)j", "1234567890 " * 6, "it's-a_b/c\\d"])
def test_short_ascii_text_never_has_more_clip_tokens_than_characters(text):
    from vqclip.prompts import token_count

    assert token_count(text) <= len(text)


def validate_text(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess:
    """`vqclip validate` of a manifest holding `text`, in a wide terminal."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(text)
    return vqclip(tmp_path, "validate", str(manifest), *args, columns=200)[0]


def test_square_brackets_in_prompts_and_errors_are_printed_as_written(tmp_path):
    done = validate_text(tmp_path, 'prompts:\n  - text: "a [bold]castle[/bold] in [red] fog"\n', "--preset", "tiny")
    assert done.returncode == 0, done.stderr
    assert "a [bold]castle[/bold] in [red] fog" in done.stdout
    done = validate_text(tmp_path, 'prompts:\n  - text: a fox\n    vqgan: "[red]nope"\n')
    assert done.returncode == 1
    assert "unknown VQGAN '[red]nope'" in done.stderr


def test_validate_names_the_zero_shot_filter_a_run_will_apply(tmp_path):
    done = validate_text(tmp_path, "filter: {labels: [a photo, text], reject: [text], threshold: 0.6}\nprompts: [a fox]\n", "--preset", "tiny")
    assert done.returncode == 0, done.stderr
    assert "zero-shot filter: labels a photo, text; filtered out when labelled text; or reject labels' probability over 0.6" in done.stdout
    done = validate_text(tmp_path, "prompts: [a fox]\n", "--preset", "tiny")
    assert done.returncode == 0 and "zero-shot filter" not in done.stdout
