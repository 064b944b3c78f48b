"""A run's published outputs, derived from its sidecars: ranking.json, a contact sheet per prompt and gallery.html.

Images the zero-shot filter marked are left out here, in `build_ranking`, and everything below is
drawn from the ranking; so re-deriving after a re-filter needs only the sidecars.
"""

from __future__ import annotations

import io

from vqclip.media.png import decode_image
from vqclip.run import layout
from vqclip.run.records import ItemRecord, Ranking
from vqclip.run.report import contact_sheet, gallery_html
from vqclip.run.state import build_ranking, put_json
from vqclip.storage import ObjectStore


def write_outputs(store: ObjectStore, run_id: str, records: dict[str, ItemRecord]) -> Ranking:
    """Write ranking.json, a contact sheet per ranked prompt (deleting those of prompts with none left) and gallery.html."""
    ranking = build_ranking(run_id, records)
    put_json(store, layout.ranking_key(run_id), ranking)
    untrained = {r.item_id for r in records.values() if r.models.synthetic}
    sheets = set()
    for prompt in ranking.prompts:
        thumbs = [
            (decode_image(store.get_bytes(image.image_key)), f"#{image.rank} {image.score:.1f} seed {records[image.item_id].seed}")
            for image in prompt.images
        ]
        buffer = io.BytesIO()
        sheet = contact_sheet(thumbs, f"{prompt.prompt_id}: {prompt.prompt}", any(i.item_id in untrained for i in prompt.images))
        sheet.save(buffer, format="PNG")
        key = layout.sheet_key(run_id, prompt.prompt_id)
        sheets.add(key)
        store.put_bytes(key, buffer.getvalue(), content_type="image/png")
    for key in store.list(layout.sheets_prefix(run_id)):
        if key not in sheets:
            store.delete(key)  # a prompt whose every image is now filtered out
    page = gallery_html(run_id, ranking, records, layout.run_prefix(run_id), bool(untrained))
    store.put_bytes(layout.gallery_key(run_id), page.encode(), content_type="text/html; charset=utf-8")
    return ranking
