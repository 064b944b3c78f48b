"""MP4 videos of an item's frames, encoded with PyAV, whose wheels carry their own FFmpeg (so it works offline)."""

from __future__ import annotations

import io
from collections.abc import Iterable

import av
from PIL import Image


def encode_mp4(images: Iterable[Image.Image], fps: int) -> bytes:
    """The images, in order, as an H.264 MP4 at `fps` frames per second; they are read one at a time, never all held."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = None
        for image in images:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height = image.size
                # yuv420p is the pixel format every player decodes; it needs even sides, which VQGAN sizes are.
                stream.pix_fmt = "yuv420p"
            container.mux(stream.encode(av.VideoFrame.from_image(image.convert("RGB"))))
        if stream is None:
            raise ValueError("a video needs at least one image")
        container.mux(stream.encode())
    return buffer.getvalue()
