"""MP4 videos of an item's frames, encoded with PyAV, whose wheels carry their own FFmpeg (so it works offline)."""

from __future__ import annotations

import io

import av
from PIL import Image


def encode_mp4(images: list[Image.Image], fps: int) -> bytes:
    """The images, in order, as an H.264 MP4 at `fps` frames per second."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = images[0].size
        # yuv420p is the pixel format every player decodes; it needs even sides, which VQGAN sizes are.
        stream.pix_fmt = "yuv420p"
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_image(image.convert("RGB"))))
        container.mux(stream.encode())
    return buffer.getvalue()
