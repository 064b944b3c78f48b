"""Prompt manifests: the schema, loaders for YAML, JSON, JSONL and CSV, validation, and expansion into work items.

A manifest is a mapping (or, as shorthand, just its list of prompts)::

    version: 1
    name: lighthouses
    defaults: {preset: default, width: 256, height: 256, steps: 300, n: 2, shard_size: 4, seed: 7}
    prompts:
      - "a lighthouse at dawn:1 | blurry:-0.5"              # shorthand for {text: ...}
      - {id: storm, text: a lighthouse in a storm, n: 3, steps: 500}
      - {text: a red fox, seeds: [1, 2], image_prompts: ["fox.png:0.5", "store:inputs/fox.png"]}

The format follows the file extension:

- ``.yaml``/``.yml`` and ``.json``: the mapping or list above.
- ``.jsonl``: one prompt per line (an object, or a string of prompt text). The first line is instead a
  header of run-level fields when it holds ``version``, ``name`` or ``defaults``.
- ``.csv``: a header row, then one prompt per row. Columns are the prompt fields: ``text`` (required),
  ``id``, ``n``, ``seed``, ``seeds`` (separated by spaces or ``;``), ``image_prompts`` (``path:weight;path``),
  ``init_image``, ``noise_prompts`` (``seed:weight;seed``), and any override: ``preset``, ``vqgan``,
  ``guides`` (separated by ``;``), ``scorer`` and the generation settings (``width``, ``steps``, ...). An empty cell means "the default". CSV has no run level:
  defaults are the built-in ones and the preset given to the loader.

Models: the defaults, then the prompt, may each name a ``preset`` (replacing the models chosen so far) and
explicit ``vqgan``, ``guides``, ``scorer`` (replacing those parts); the start is the ``default`` preset. A
``preset`` passed to `load_manifest` replaces every model choice in the manifest, so any manifest can run
on, say, the tiny test models.

Seeds: a prompt's explicit ``seeds`` are used as given; otherwise image ``i`` of prompt ``P`` gets
``derive_seed(base, P.id, i)`` with ``base`` the prompt's or the defaults' ``seed`` (else 0). Default prompt
ids are ``p001``, ``p002``... by position, so reordering prompts without ids changes their seeds.

Image paths are relative to the manifest's folder and must exist there, or name an object store key as
``store:KEY``; a ``store:`` image is read, and its digest taken, by `Manifest.plan` through `read_source`.
Every image must decode: local ones are decoded at validation, ``store:`` ones when `Manifest.plan` reads them.

Filter: a run-level ``filter: {labels: [...], reject: [...], threshold: 0.5, templates: [...]}`` labels every
image by CLIP zero-shot classification and keeps images with a rejected label out of the ranking, sheets, gallery
and artifacts (vqclip.filter_spec). Without it, ``VQCLIP_FILTER`` gives the default; ``filter: false`` turns that off.
In JSONL the header line may hold it; CSV has only the default.

Admission: beyond the per-field limits, a manifest's total work (width x height x steps, summed over its
images) must stay within ``Config.max_megapixel_steps``.
"""

from vqclip.manifest.plan import Manifest, ManifestPrompt, derive_seed, describe_plan, shards
from vqclip.manifest.readers import check_size
from vqclip.manifest.schema import Defaults, ImageEntry, PromptEntry
from vqclip.manifest.sources import SourceReader, read_manifest_source, store_reader
from vqclip.manifest.validate import load_manifest, load_manifest_file

__all__ = [
    "Defaults", "ImageEntry", "Manifest", "ManifestPrompt", "PromptEntry", "SourceReader", "check_size",
    "derive_seed", "describe_plan", "load_manifest", "load_manifest_file", "read_manifest_source", "shards", "store_reader",
]
