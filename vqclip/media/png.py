"""PNG encoding with the generation settings embedded as text chunks, and reading them back."""

from __future__ import annotations

import io
import json

from PIL import Image, PngImagePlugin

METADATA_KEY = "vqclip"
"""The text chunk that holds the full settings as JSON; other chunks repeat the main fields."""


def encode_png(image: Image.Image, metadata: dict) -> bytes:
    """The image as PNG bytes, with `metadata` as a JSON chunk and its scalar fields as text chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(metadata, sort_keys=True))
    for key, value in metadata.items():
        if isinstance(value, (str, int, float, bool)):
            info.add_itxt(key, str(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_metadata(data: bytes) -> dict:
    """The settings a PNG written by `encode_png` carries."""
    with Image.open(io.BytesIO(data)) as image:
        return json.loads(image.text[METADATA_KEY])


def decode_image(data: bytes) -> Image.Image:
    """Open image bytes fully into memory as RGB."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
