"""Filtering a finished run again with new labels: its sidecars' marks, its outputs, index and search rows, no regeneration."""

from __future__ import annotations

import logging
from collections.abc import Callable

from vqclip.errors import VqclipError
from vqclip.filter_spec import FilterSpec
from vqclip.models.clip import ClipModel
from vqclip.run import layout
from vqclip.run.filtering import FilterReport, label_run, relabelled_index
from vqclip.run.outputs import write_outputs
from vqclip.run.progress import recently_moving_shards
from vqclip.run.records import Ranking
from vqclip.run.state import RunStore, put_json
from vqclip.search.index import add_run
from vqclip.storage import ObjectStore


def refilter_run(
    store: ObjectStore,
    run_id: str,
    spec: FilterSpec | None,
    load_scorer: Callable[[str], ClipModel],
    log: logging.Logger | logging.LoggerAdapter,
    busy_within: float,
) -> tuple[FilterReport | None, Ranking]:
    """Filter a finished run again by `spec` (None: no filter) and re-derive its ranking, sheets, gallery, index and search rows.

    A run whose shards recorded progress less than `busy_within` seconds ago is still generating
    (its own reports would overwrite these): refused with VqclipError.
    """
    moving = recently_moving_shards(store, run_id, busy_within)
    if moving:
        shard, age = min(moving.items(), key=lambda entry: entry[1])
        raise VqclipError(
            f"run {run_id} is still generating (shard {shard} recorded progress {age:.0f} s ago); "
            "filter it once it has finished, or set the filter in its manifest"
        )
    run = RunStore(store, run_id)
    index = run.load_index()
    records, report = label_run(store, run_id, spec, run.done_records(), load_scorer, log)
    ranking = write_outputs(store, run_id, records)
    put_json(store, layout.index_key(run_id), relabelled_index(index, records, ranking))
    add_run(store, run_id, load_scorer)
    return report, ranking
