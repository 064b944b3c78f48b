"""Human-facing outputs of a run: a contact sheet per prompt, an HTML gallery and inline thumbnails."""

from __future__ import annotations

import base64
import html
import io
import math
import string

from PIL import Image, ImageDraw, ImageFont

from vqclip.run import layout
from vqclip.run.records import ItemRecord, Ranking

THUMB = 192
LABEL = 18
COLUMNS = 4
SYNTHETIC_SHEET_LABEL = "synthetic (untrained models)"
SCORE_MEANING = (
    "The score is CLIPScore: 100 x the cosine similarity of the image's and the prompt's embeddings in the "
    "scoring CLIP model, floored at 0; higher means CLIP sees the prompt in the image more clearly. "
    "Compare scores of the same scorer only."
)


_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in string.punctuation})


def markdown_text(text: str) -> str:
    """`text` as literal markdown: every ASCII punctuation mark backslash-escaped, line breaks as spaces.

    CommonMark lets any punctuation be escaped, so no image, link, autolink (`http\\:`), HTML
    tag or table cell separator can be formed from user text, whatever renderer shows it.
    """
    return " ".join(text.translate(_MARKDOWN_SPECIAL).split())


def thumbnail_data_uri(image: Image.Image, side: int) -> str:
    """`image` shrunk to fit `side` pixels, as a JPEG `data:` URI (a self-contained link that never expires)."""
    thumb = image.convert("RGB")
    thumb.thumbnail((side, side))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=80, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def contact_sheet(images: list[tuple[Image.Image, str]], title: str, synthetic: bool = False) -> Image.Image:
    """A grid of thumbnails, best first, each labelled (e.g. rank, score and seed).

    A sheet of images from untrained models says so in a red band under the title.
    """
    columns = min(COLUMNS, max(1, len(images)))
    rows = math.ceil(len(images) / columns)
    top = LABEL * (2 if synthetic else 1)
    sheet = Image.new("RGB", (columns * THUMB, top + rows * (THUMB + LABEL)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((4, 3), title[:120], fill="black", font=font)
    if synthetic:
        draw.rectangle((0, LABEL, sheet.width, 2 * LABEL - 1), fill=(200, 0, 0))
        draw.text((4, LABEL + 3), SYNTHETIC_SHEET_LABEL, fill="white", font=font)
    for n, (image, label) in enumerate(images):
        x, y = (n % columns) * THUMB, top + (n // columns) * (THUMB + LABEL)
        thumb = image.copy()
        thumb.thumbnail((THUMB, THUMB))
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        draw.text((x + 4, y + THUMB + 3), label, fill="black", font=font)
    return sheet


def _relative(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def gallery_html(run_id: str, ranking: Ranking, records: dict[str, ItemRecord], relative_to: str, synthetic: bool) -> str:
    """A self-contained HTML page of every image by prompt, best first, with its score, settings and files.

    Links are relative to the gallery's own key, so the page works from a folder, a bucket or `vqclip serve`.
    """
    esc = html.escape

    def link(key: str) -> str:
        return esc(_relative(key, relative_to))

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>vqclip run {esc(run_id)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:.5em;width:260px;"
        "vertical-align:top}img{width:256px;image-rendering:pixelated}figcaption{font-size:.8em}</style>",
        f"</head><body><p><a href='../'>All runs</a></p><h1>Run {esc(run_id)}</h1>",
        f"<p>{esc(SCORE_MEANING)}</p>",
    ]
    if synthetic:
        parts.append("<p><strong>Synthetic:</strong> made with untrained random weights (test/smoke preset).</p>")
    for prompt in ranking.prompts:
        scorer = esc(prompt.scorer or "an unrecorded scorer")
        sheet = link(layout.sheet_key(run_id, prompt.prompt_id))
        parts.append(
            f"<section><h2>{esc(prompt.prompt_id)}: {esc(prompt.prompt)}</h2>"
            f"<p>Scored by {scorer}. <a href='{sheet}'>Contact sheet</a></p>"
        )
        for image in prompt.images:
            record = records[image.item_id]
            files = [
                f"<a href='{link(image.image_key)}'>image</a>",
                f"<a href='{link(layout.sidecar_key(run_id, record.item_id))}'>sidecar</a>",
            ]
            if record.frame_keys:
                files.append(f"<a href='{link(record.frame_keys[0].rsplit('/', 1)[0])}/'>frames</a>")
            if record.video_key:
                files.append(f"<a href='{link(record.video_key)}'>video</a>")
            parts.append(
                f"<figure><a href='{link(image.image_key)}'><img src='{link(image.image_key)}' alt='{esc(prompt.prompt)}'></a>"
                f"<figcaption>#{image.rank} score {image.score:.2f} | seed {record.seed} | "
                f"{record.settings.width}x{record.settings.height}, {record.settings.steps} steps | {esc(record.item_id)}<br>"
                f"{' | '.join(files)}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
