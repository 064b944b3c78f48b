"""Zoom videos, as in the reference tools: each frame starts from the previous one's pixels, zoomed and shifted.

Frame 0 is a normal generation of `steps` steps from the item's seed. Frame n > 0 starts from frame
n-1 zoomed about its centre by `scale` and moved by (shift_x, shift_y) pixels, encoded back into the
VQGAN's latent as an init image, and is optimised for `steps_per_frame` steps with the seed
`frame_seed(seed, n)`. A '^' schedule's prompts take turns per frame: `change_every` counts frames.

Every frame is stored before the next starts, and frame n depends only on the item and the stored,
lossless PNG of frame n-1 (never on state kept in memory), so a run resumed after a kill continues
at the first missing frame and makes the frames an uninterrupted run makes: exactly on a CPU, and on
CUDA as closely as two uninterrupted runs agree (see vqclip.engine.generate). The item's image (the last
frame), its MP4 and then its sidecar are committed once every frame exists.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from functools import partial

from PIL import Image, ImageChops, ImageOps

from vqclip.engine.generate import GenerationResult, ProgressCallback
from vqclip.items import ImagePrompt, WorkItem
from vqclip.media.png import decode_image, encode_png, read_png_metadata
from vqclip.media.video import encode_mp4
from vqclip.prompts import format_prompt, stage_at
from vqclip.retry import retry_transient
from vqclip.run import layout
from vqclip.run.records import item_settings
from vqclip.run.state import item_record, read_inputs, write_record
from vqclip.storage import ObjectStore

FrameGenerator = Callable[[WorkItem, Mapping[str, Image.Image], ProgressCallback | None], GenerationResult]
"""Generates one frame's work item with these images (by source), reporting its steps to the callback."""

Log = logging.Logger | logging.LoggerAdapter


def zoom_image(image: Image.Image, scale: float, shift_x: int = 0, shift_y: int = 0) -> Image.Image:
    """`image` magnified `scale` times about its centre (Lanczos), then moved (shift_x, shift_y) pixels, wrapping around.

    Zooming out (`scale` below 1) shows more than the image holds: that border starts black.
    """
    width, height = image.size
    view_width, view_height = width / scale, height / scale
    pad_x, pad_y = (max(0, math.ceil((view - side) / 2)) for view, side in ((view_width, width), (view_height, height)))
    if pad_x or pad_y:
        image = ImageOps.expand(image, border=(pad_x, pad_y), fill="black")
    centre_x, centre_y = image.width / 2, image.height / 2
    box = (centre_x - view_width / 2, centre_y - view_height / 2, centre_x + view_width / 2, centre_y + view_height / 2)
    zoomed = image.resize((width, height), Image.Resampling.LANCZOS, box=box)
    return ImageChops.offset(zoomed, shift_x, shift_y)


def frame_seed(seed: int, frame: int) -> int:
    """The seed of frame `frame`: the item's own for the first, then a hash of the item's seed and the frame number."""
    if frame == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/zoom/{frame}".encode()).digest()[:8], "big") >> 1


def frame_item(item: WorkItem, frame: int, previous: bytes | None) -> tuple[WorkItem, dict[str, Image.Image]]:
    """The work item the engine generates as frame `frame` of `item`, and its init image by source.

    `previous` is the stored PNG of frame `frame` - 1 (None for the first frame).
    """
    settings = item.settings
    schedule = item.schedule
    prompt = format_prompt(schedule[stage_at(frame, settings.change_every, len(schedule))])
    single = settings.model_copy(update={"zoom": None, "change_every": 0})
    if previous is None:
        return item.model_copy(update={"prompt": prompt, "settings": single}), {}
    zoom = settings.zoom
    source = f"zoom frame {frame - 1}"
    init = ImagePrompt(source=source, digest=hashlib.sha256(previous).hexdigest())
    start = zoom_image(decode_image(previous), zoom.scale, zoom.shift_x, zoom.shift_y)
    update = {
        "prompt": prompt,
        "seed": frame_seed(item.seed, frame),
        "settings": single.model_copy(update={"steps": zoom.steps_per_frame}),
        "init_image": init,
    }
    return item.model_copy(update=update), {source: start}


def make_video(
    item: WorkItem,
    run_id: str,
    store: ObjectStore,
    generate: FrameGenerator,
    device: str,
    log: Log,
    progress: ProgressCallback | None = None,
) -> str | None:
    """Make `item`'s zoom video from its first frame not yet stored, then commit the item; return why it failed, or None.

    A frame whose loss turns non-finite runs again once at half the learning rate; if it fails again,
    the frames before it stay stored and the item fails with the reason.
    """
    zoom = item.settings.zoom
    keys = [layout.zoom_frame_key(run_id, item.item_id, n) for n in range(zoom.frames)]
    stored = set(store.list(layout.zoom_frames_prefix(run_id, item.item_id)))
    start = next((n for n, key in enumerate(keys) if key not in stored), zoom.frames)
    if start:
        log.info("item %s: frames 0-%d of its zoom video are stored; resuming at frame %d", item.item_id, start - 1, start)
    inputs = read_inputs(store, run_id, [item])
    previous = store.get_bytes(keys[start - 1]) if 0 < start < zoom.frames else None
    for n in range(start, zoom.frames):
        frame, images = frame_item(item, n, previous)
        heard = _video_progress(progress, item, n)
        result, attempt = generate(frame, {**inputs, **images}, heard), 1
        if not result.ok:
            slower = frame.settings.model_copy(update={"lr": frame.settings.lr / 2})
            log.warning("item %s frame %d: %s; restarting the frame at lr %g", item.item_id, n, result.error, slower.lr)
            result, attempt = generate(frame.model_copy(update={"settings": slower}), {**inputs, **images}, heard), 2
            if not result.ok:
                return f"zoom frame {n}: {result.error} (after a restart at half the learning rate)"
        previous = encode_png(result.image, _frame_metadata(item, n, result, attempt))
        retry_transient(partial(store.put_bytes, keys[n], previous, content_type="image/png"), f"storing frame {n} of item {item.item_id}", log)
    retry_transient(lambda: commit_video(store, run_id, item, device), f"storing item {item.item_id}", log)
    return None


def _video_progress(progress: ProgressCallback | None, item: WorkItem, frame: int) -> ProgressCallback | None:
    """`progress` hearing frame `frame`'s steps as steps of the whole video."""
    if progress is None:
        return None
    zoom, total = item.settings.zoom, item.settings.total_steps
    before = 0 if frame == 0 else item.settings.steps + (frame - 1) * zoom.steps_per_frame
    return lambda step, _: progress(before + step, total)


def _frame_metadata(item: WorkItem, frame: int, result: GenerationResult, attempt: int) -> dict:
    """What a frame's PNG carries: the item's settings, the frame's seed, and what the item's sidecar later sums up."""
    return {
        **item_settings(item),
        "zoom_frame": frame,
        "frame_seed": frame_seed(item.seed, frame),
        "loss": result.loss,
        "guide_similarity": result.similarity,
        "first_guide_similarity": result.first_similarity,
        "seconds": result.seconds,
        "attempt": attempt,
        "lr_used": result.item.settings.lr,
    }


def commit_video(store: ObjectStore, run_id: str, item: WorkItem, device: str) -> None:
    """Write the item's image (its last frame) and its MP4 from the stored frames, then its sidecar."""
    zoom = item.settings.zoom
    frame_keys = [layout.zoom_frame_key(run_id, item.item_id, n) for n in range(zoom.frames)]
    frames: list[dict] = []

    def read_frames() -> Iterator[Image.Image]:
        for key in frame_keys:  # one at a time: a long video need not fit in memory
            data = store.get_bytes(key)
            frames.append(read_png_metadata(data))
            yield decode_image(data)

    video = encode_mp4(read_frames(), zoom.fps)
    last, image = frames[-1], decode_image(store.get_bytes(frame_keys[-1]))
    image_key, video_key = layout.image_key(run_id, item.item_id), layout.video_key(run_id, item.item_id)
    store.put_bytes(image_key, encode_png(image, {**item_settings(item), "lr_used": last["lr_used"]}), content_type="image/png")
    store.put_bytes(video_key, video, content_type="video/mp4")
    summary = GenerationResult(
        item=item.model_copy(update={"settings": item.settings.model_copy(update={"lr": last["lr_used"]})}),
        image=image,
        loss=last["loss"],
        similarity=last["guide_similarity"],
        first_similarity=frames[0]["first_guide_similarity"],
        seconds=sum(frame["seconds"] for frame in frames),
    )
    attempt = max(frame["attempt"] for frame in frames)
    write_record(store, run_id, item_record(item, summary, device, attempt, image_key, frame_keys, video_key))
