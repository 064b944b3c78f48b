"""The planning task: read and validate the manifest, plan its items, and stage the run's inputs."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from pydantic import BaseModel

from tasks.retry import retried
from vqclip.filter_spec import FilterSpec
from vqclip.items import WorkItem
from vqclip.manifest import load_manifest, read_manifest_source, store_reader
from vqclip.run import layout
from vqclip.run.state import RunStore, new_run_id
from vqclip.storage import open_store


class PreparedRun(BaseModel):
    """A validated, planned run whose manifest and image inputs are in the store."""

    run_id: str
    manifest_name: str
    items: list[WorkItem]
    shard_size: int
    filter: FilterSpec | None = None


@task(**retried("prepare-run"))
def prepare_run(manifest: str, storage: str, run_id: str | None, preset: str | None) -> PreparedRun:
    """Validate the whole manifest before writing anything, then keep a copy of it and its images in the run."""
    store = open_store(storage)
    data, name, base_dir = read_manifest_source(manifest, store)
    parsed = load_manifest(data, name, base_dir=base_dir, preset=preset)
    read_store = store_reader(store)
    items = parsed.plan(read_source=read_store)
    run_id = layout.check_run_id(run_id or new_run_id(name, data))
    store.put_bytes(layout.manifest_key(run_id, Path(name).suffix.lower()), data)
    RunStore(store, run_id).stage_inputs(items, lambda source: parsed.read_bytes(source, read_store))
    return PreparedRun(run_id=run_id, manifest_name=name, items=items, shard_size=parsed.shard_size, filter=parsed.filter)
