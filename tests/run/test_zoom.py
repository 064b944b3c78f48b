"""Zoom videos: the zoom transform, the frames and MP4 a zoom item makes, and a stopped video resumed frame by frame."""

from __future__ import annotations

import io
import logging
import signal
import subprocess
import sys
import threading

import av
import numpy as np
import pytest
from PIL import Image

from tests.helpers.processes import kill_once_stored
from vqclip import shutdown
from vqclip.config import Config
from vqclip.errors import Interrupted, ManifestError
from vqclip.items import GenerationSettings, WorkItem
from vqclip.manifest import load_manifest
from vqclip.media.png import decode_image
from vqclip.models.presets import models_for_preset
from vqclip.run import layout, shard
from vqclip.run.state import RunStore
from vqclip.run.zoom import frame_seed, zoom_image
from vqclip.storage.local import LocalStore

RUN = "zoom"
LOG = logging.getLogger("tests.zoom")


def ramp(size: int) -> Image.Image:
    """Red grows 3 levels per pixel to the right, green 3 per pixel downwards."""
    x, y = np.meshgrid(np.arange(size), np.arange(size))
    return Image.fromarray(np.stack([3 * x, 3 * y, np.full_like(x, 90)], axis=-1).astype(np.uint8))


@pytest.mark.parametrize("scale", [1.25, 0.8])
def test_zoom_image_magnifies_about_the_centre_then_shifts_with_wrap_around(scale):
    size, shift_x, shift_y = 64, 5, -3
    out = np.asarray(zoom_image(ramp(size), scale, shift_x, shift_y)).astype(float)
    # Independently: output pixel (x, y) shows, before the shift, the input point whose pixel centre
    # is (x + 0.5 - c) / scale + c, with c the image's centre; on a linear ramp that point's value is exact.
    unshifted = np.roll(out, (-shift_y, -shift_x), axis=(0, 1))
    centre = size / 2
    source = (np.arange(size) + 0.5 - centre) / scale + centre - 0.5
    inside = (source >= 3) & (source <= size - 4)  # away from the edges, where the ramp or the black border ends
    expected_red = 3 * source[None, :].repeat(size, 0)
    expected_green = 3 * source[:, None].repeat(size, 1)
    rows, cols = np.ix_(inside, inside)
    assert np.abs(unshifted[rows, cols, 0] - expected_red[rows, cols]).max() <= 1.5
    assert np.abs(unshifted[rows, cols, 1] - expected_green[rows, cols]).max() <= 1.5
    if scale < 1:  # zooming out shows beyond the image: that border starts black
        assert unshifted[0, 0].tolist() == [0, 0, 0]


def zoom_item(frames: int = 3) -> WorkItem:
    zoom = {"frames": frames, "steps_per_frame": 1, "scale": 1.5, "shift_x": 2, "shift_y": -1, "fps": 5}
    settings = GenerationSettings(width=32, height=32, steps=2, cutouts=2, change_every=1, zoom=zoom)
    return WorkItem(prompt_id="fox", prompt="a red fox ^ a city at night", seed=4, settings=settings, models=models_for_preset("tiny"))


class CountingEngine:
    """The real engine, recording each frame it is asked for (seed, prompt, init image) and asking to stop after `stop_after`."""

    def __init__(self, generate, stop_after: int | None = None) -> None:
        self.generate, self.stop_after, self.calls = generate, stop_after, []

    def __call__(self, items, models, config, images=None, progress=None):
        (item,) = items
        init = images[item.init_image.source] if item.init_image else None
        self.calls.append((item.seed, item.prompt, init))
        results = self.generate(items, models, config, images=images, progress=progress)
        if len(self.calls) == self.stop_after:
            shutdown.request(signal.SIGTERM)  # as a signal would: the next frame stops at its first step
        return results


@pytest.fixture
def stop_flag(monkeypatch):
    """A private stop flag, so that a stop asked for here ends no other test."""
    monkeypatch.setattr(shutdown, "_stop", threading.Event())
    monkeypatch.setattr(shutdown, "_received", [])
    return shutdown._stop


def run(item, store, models, engine, monkeypatch):
    monkeypatch.setattr(shard.engine, "generate", engine)
    return shard.run_shard([item], RunStore(store, RUN), lambda _: models, Config(), LOG)


def frame_pixels(store, item) -> list[np.ndarray]:
    keys = [layout.zoom_frame_key(RUN, item.item_id, n) for n in range(item.settings.zoom.frames)]
    return [np.asarray(decode_image(store.get_bytes(key))) for key in keys if store.exists(key)]


def test_a_zoom_item_stores_each_frame_then_its_image_mp4_and_sidecar(tmp_path, tiny_models, monkeypatch, stop_flag):
    item, store = zoom_item(), LocalStore(tmp_path / "store")
    written = []
    put = LocalStore.put_bytes
    monkeypatch.setattr(LocalStore, "put_bytes", lambda self, key, *a, **k: written.append(key) or put(self, key, *a, **k))
    engine = CountingEngine(shard.engine.generate)
    assert run(item, store, tiny_models, engine, monkeypatch).done == [item.item_id]

    record = RunStore(store, RUN).record(item.item_id)
    frames = [layout.zoom_frame_key(RUN, item.item_id, n) for n in range(3)]
    assert record.frame_keys == frames and record.video_key == layout.video_key(RUN, item.item_id)
    assert written == [*frames, record.image_key, record.video_key, layout.sidecar_key(RUN, item.item_id)]
    with av.open(io.BytesIO(store.get_bytes(record.video_key))) as video:
        decoded = [frame.to_image() for frame in video.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].size == (32, 32)
    pixels = frame_pixels(store, item)
    assert np.array_equal(np.asarray(decode_image(store.get_bytes(record.image_key))), pixels[-1])  # the image is the last frame
    # Frame 0 is the item's own generation; each later frame starts from the one before, zoomed and shifted,
    # with its own seed, and the '^' schedule takes a turn per frame.
    assert [(seed, prompt) for seed, prompt, _ in engine.calls] == [
        (4, "a red fox:1"), (frame_seed(4, 1), "a city at night:1"), (frame_seed(4, 2), "a red fox:1")
    ]
    assert engine.calls[0][2] is None
    for n in (1, 2):
        expected = zoom_image(Image.fromarray(pixels[n - 1]), 1.5, 2, -1)
        assert np.array_equal(np.asarray(engine.calls[n][2]), np.asarray(expected))
    assert [p.text for p in record.parts] == ["a red fox"]  # the last frame's prompt


def test_a_video_stopped_mid_way_resumes_at_its_first_missing_frame_and_matches_an_uninterrupted_run(
    tmp_path, tiny_models, monkeypatch, stop_flag
):
    item = zoom_item(frames=4)
    whole = LocalStore(tmp_path / "whole")
    run(item, whole, tiny_models, CountingEngine(shard.engine.generate), monkeypatch)

    store = LocalStore(tmp_path / "stopped")
    real = shard.engine.generate
    with pytest.raises(Interrupted):
        run(item, store, tiny_models, CountingEngine(real, stop_after=2), monkeypatch)
    assert len(frame_pixels(store, item)) == 2 and RunStore(store, RUN).record(item.item_id) is None
    assert not store.exists(layout.video_key(RUN, item.item_id))
    kept = {n: (store.root / layout.zoom_frame_key(RUN, item.item_id, n)).stat().st_mtime_ns for n in (0, 1)}

    stop_flag.clear()
    resumed = CountingEngine(real)
    assert run(item, store, tiny_models, resumed, monkeypatch).done == [item.item_id]
    assert [seed for seed, _, _ in resumed.calls] == [frame_seed(4, 2), frame_seed(4, 3)]  # no frame made twice
    assert kept == {n: (store.root / layout.zoom_frame_key(RUN, item.item_id, n)).stat().st_mtime_ns for n in (0, 1)}
    assert all(np.array_equal(a, b) for a, b in zip(frame_pixels(store, item), frame_pixels(whole, item), strict=True))
    record = RunStore(store, RUN).record(item.item_id)
    with av.open(io.BytesIO(store.get_bytes(record.video_key))) as video:
        assert sum(1 for _ in video.decode(video=0)) == 4


BAD_ZOOMS = [
    ("text: a fox, zoom: {frames: 1}", "m.yaml:4: prompts[0].zoom.frames: Input should be greater than or equal to 2 (got 1)"),
    ("text: a fox, zoom: {frames: 3, scale: 3}", "prompts[0].zoom.scale: Input should be less than or equal to 2 (got 3)"),
    ("text: a fox, zoom: {steps_per_frame: 5}", "prompts[0].zoom.frames: missing; this field is required"),
    ("text: a fox, zoom: {frames: 3, zoom: 2}", "prompts[0].zoom.zoom: unknown field; allowed fields: fps, frames, scale, shift_x, shift_y, steps_per_frame"),
    ("text: a fox, zoom: {frames: 3, shift_y: -64}", "prompts[0].zoom.shift_y: -64 pixels, not less than the 64 px height; use -63 to 63"),
    ("text: a fox, zoom: {frames: 3}, save_every: 5", "prompts[0].zoom: a zoom video stores every frame and makes its own MP4; drop save_every and video"),
    ("text: 'a ^ b', zoom: {frames: 3}, change_every: 3", "change_every is 3, not less than the 3 frames of the zoom video"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_ZOOMS)
def test_a_bad_zoom_setting_is_a_validation_error_naming_its_field(fields, message):
    text = f"version: 1\ndefaults: {{width: 64, height: 64, steps: 4}}\nprompts:\n  - {{{fields}}}\n"
    with pytest.raises(ManifestError) as error:
        load_manifest(text.encode(), "m.yaml", preset="tiny")
    assert message in str(error.value)


def test_zoom_decides_the_item_id_and_its_steps_count_towards_the_work_cap():
    def plan(zoom: str) -> list[WorkItem]:
        text = f"defaults: {{width: 64, height: 64, steps: 10, seed: 1}}\nprompts:\n  - {{text: a fox, {zoom}}}\n"
        return load_manifest(text.encode(), "m.yaml", preset="tiny", config=Config(max_megapixel_steps=1)).plan()

    still, zoomed = plan("n: 1"), plan("zoom: {frames: 5, steps_per_frame: 10}")
    assert still[0].item_id != zoomed[0].item_id and zoomed[0].settings.total_steps == 50
    with pytest.raises(ManifestError, match="more than the 1 allowed"):
        plan("zoom: {frames: 30, steps_per_frame: 10}")  # 64 x 64 x 300 steps: over one megapixel-step


KILLED_ZOOM = """\
defaults: {preset: tiny, width: 32, height: 32, steps: 2, cutouts: 2}
prompts:
  - id: fox
    text: a red fox
    zoom: {frames: 6, steps_per_frame: 3, scale: 1.2, fps: 6}
"""


@pytest.mark.slow
def test_a_zoom_run_killed_mid_video_resumes_without_making_a_stored_frame_again(tmp_path):
    """SIGKILL `vqclip run` once two frames are stored, run it again: the stored frames stay, the rest follow."""
    manifest = tmp_path / "zoom.yaml"
    manifest.write_text(KILLED_ZOOM)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vqclip.cli", "run", str(manifest), "--storage", str(out), "--run-id", "z1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    frames = out / "runs" / "z1" / "items"
    kill_once_stored(first, frames, "*/zoom/*.png", 2, "frame", poll=0.05)
    stored = {p: p.stat().st_mtime_ns for p in frames.glob("*/zoom/*.png")}
    assert 2 <= len(stored) < 6 and not list(frames.glob("*.json")), "the item must not be finished yet"

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in stored} == stored, "a stored frame was made again"
    assert sorted(p.name for p in frames.glob("*/zoom/*.png")) == [f"{n:05d}.png" for n in range(6)]
    (video,) = frames.glob("*/video.mp4")
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6
