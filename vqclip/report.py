"""Human-facing outputs of a run: a contact sheet per prompt and an HTML gallery."""

from __future__ import annotations

import html
import math
import string

from PIL import Image, ImageDraw, ImageFont

from vqclip.records import ItemRecord, Ranking

THUMB = 192
LABEL = 18
COLUMNS = 4


_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in string.punctuation})


def markdown_text(text: str) -> str:
    """`text` as literal markdown: every ASCII punctuation mark backslash-escaped, line breaks as spaces.

    CommonMark lets any punctuation be escaped, so no image, link, autolink (`http\\:`), HTML
    tag or table cell separator can be formed from user text, whatever renderer shows it.
    """
    return " ".join(text.translate(_MARKDOWN_SPECIAL).split())


def contact_sheet(images: list[tuple[Image.Image, str]], title: str) -> Image.Image:
    """A grid of thumbnails, best first, each labelled (e.g. rank, score and seed)."""
    columns = min(COLUMNS, max(1, len(images)))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * THUMB, LABEL + rows * (THUMB + LABEL)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((4, 3), title[:120], fill="black", font=font)
    for n, (image, label) in enumerate(images):
        x, y = (n % columns) * THUMB, LABEL + (n // columns) * (THUMB + LABEL)
        thumb = image.copy()
        thumb.thumbnail((THUMB, THUMB))
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        draw.text((x + 4, y + THUMB + 3), label, fill="black", font=font)
    return sheet


def _relative(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def gallery_html(run_id: str, ranking: Ranking, records: dict[str, ItemRecord], relative_to: str, synthetic: bool) -> str:
    """A self-contained HTML page of every image by prompt, best first, with its score and settings.

    Image links are relative to the gallery's own key, so the page works from a folder or a bucket.
    """
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>vqclip run {esc(run_id)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:.5em;width:260px;"
        "vertical-align:top}img{width:256px;image-rendering:pixelated}figcaption{font-size:.8em}</style>",
        f"</head><body><h1>Run {esc(run_id)}</h1>",
    ]
    if synthetic:
        parts.append("<p><strong>Synthetic:</strong> made with untrained random weights (test/smoke preset).</p>")
    for prompt in ranking.prompts:
        scorer = esc(prompt.scorer or "an unrecorded scorer")
        parts.append(f"<section><h2>{esc(prompt.prompt_id)}: {esc(prompt.prompt)}</h2><p>Scored by {scorer}.</p>")
        for image in prompt.images:
            record = records[image.item_id]
            src = esc(_relative(image.image_key, relative_to))
            video = f" | <a href='{esc(_relative(record.video_key, relative_to))}'>video</a>" if record.video_key else ""
            parts.append(
                f"<figure><img src='{src}' alt='{esc(prompt.prompt)}'><figcaption>#{image.rank} score "
                f"{image.score:.2f} | seed {record.seed} | {record.settings.width}x{record.settings.height}, "
                f"{record.settings.steps} steps | {esc(record.item_id)}{video}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
