"""`vqclip generate`, `models` and `fetch-models` as a user runs them: through a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from vqclip.media.png import read_png_metadata


def vqclip(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vqclip.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.mark.slow
def test_generate_writes_a_png_with_its_settings(tmp_path):
    out = tmp_path / "fox.png"
    done = vqclip("generate", "a red fox:1 | blurry:-0.5", "--preset", "tiny", "--size", "64x48", "--steps", "3", "--seed", "42", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout and "untrained random weights" in done.stdout
    meta = read_png_metadata(out.read_bytes())
    assert meta["seed"] == 42 and meta["width"] == 64 and meta["height"] == 48 and meta["steps"] == 3
    assert [p["text"] for p in meta["parts"]] == ["a red fox", "blurry"] and meta["parts"][1]["weight"] == -0.5
    assert meta["models"]["vqgan"] == "tiny_f8" and meta["synthetic"] and meta["engine"].startswith("vqclip ")


@pytest.mark.slow
def test_generate_rejects_bad_input_with_a_message_and_no_file(tmp_path):
    out = tmp_path / "x.png"
    for args, message in (
        (["a fox |", "--preset", "tiny"], "prompt part 2"),
        (["a fox", "--preset", "tiny", "--size", "60x64"], "multiples of 8"),
        (["a fox", "--preset", "nope"], "unknown preset 'nope'"),
        (["a fox", "--size", "big"], "WIDTHxHEIGHT"),
    ):
        done = vqclip("generate", *args, "--out", str(out))
        assert done.returncode != 0
        assert message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not out.exists()


def test_default_preset_offline_fails_fast_and_says_how_to_fix(tmp_path):
    started = time.monotonic()
    done = vqclip("generate", "a fox", "--out", str(tmp_path / "x.png"), env={"VQCLIP_OFFLINE": "1", "VQCLIP_CACHE_DIR": str(tmp_path / "cache")})
    assert time.monotonic() - started < 30  # interpreter start and imports included; the fetch itself fails at once
    assert done.returncode == 1
    assert str(tmp_path / "cache" / "vqgan" / "vqgan_imagenet_f16_16384.ckpt") in done.stderr
    assert "fetch-models" in done.stderr and "--preset tiny" in done.stderr


def test_models_lists_presets_and_cache_state(tmp_path):
    done = vqclip("models", env={"VQCLIP_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    for name in ("default", "tiny", "imagenet_f16_16384", "gumbel_f8_8192", "wikiart_f16_16384", "sflckr"):
        assert name in done.stdout
    assert "0/4" in done.stdout and "none needed" in done.stdout
