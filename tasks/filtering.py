"""The filtering task: label every scored image by CLIP zero-shot classification and mark the rejected ones."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.reporting import artifact_key
from tasks.retry import retried
from vqclip.filter_spec import FilterSpec
from vqclip.models.loader import load_scorer
from vqclip.run.filtering import label_run
from vqclip.run.records import ItemRecord
from vqclip.storage import open_store


@task(**retried("filter-images"))
def filter_images(storage: str, run_id: str, spec: FilterSpec, records: dict[str, ItemRecord]) -> dict[str, ItemRecord]:
    """Label each scored image from its kept embedding, mark those `spec` rejects, and publish the filter report."""
    records, report = label_run(open_store(storage), run_id, spec, records, load_scorer, get_run_logger())
    create_markdown_artifact(report.markdown(), key=f"filter-{artifact_key(run_id)}", description=f"Images the zero-shot filter left out of run {run_id}")
    return records
