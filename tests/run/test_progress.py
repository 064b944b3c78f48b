"""Live progress: steps and stored images counted per shard, carried across processes, shown by the CLI and the UI."""

from __future__ import annotations

import contextvars
import logging
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from vqclip.cli.progress import ProgressLines
from vqclip.errors import TransientStorageError
from vqclip.items import GenerationSettings, WorkItem
from vqclip.models.presets import models_for_preset
from vqclip.run import layout
from vqclip.run.progress import Progress, ProgressRecorder, RunProgress, ShardTracker
from vqclip.storage.local import LocalStore

LOG = logging.getLogger("tests.progress")
RUN = "live"

ONE_IMAGE = """\
defaults: {{preset: tiny, width: 64, height: 64, steps: {steps}, cutouts: 4, n: 1}}
prompts:
  - {{id: fox, text: a red fox}}
"""


def make_items(count: int, steps: int = 10, first_seed: int = 0) -> list[WorkItem]:
    settings = GenerationSettings(width=64, height=64, steps=steps, cutouts=2)
    seeds = range(first_seed, first_seed + count)
    return [WorkItem(prompt_id="fox", index=n, prompt="a red fox", seed=n, settings=settings, models=models_for_preset("tiny")) for n in seeds]


def commit_sidecar(store: LocalStore, item: WorkItem) -> None:
    store.put_bytes(layout.sidecar_key(RUN, item.item_id), b"{}")


class CountingStore(LocalStore):
    """A local store that counts its writes and can be told to fail them."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes = 0
        self.failing = False

    def put_bytes(self, key, data, content_type=None):
        if self.failing:
            raise TransientStorageError("injected: connection reset")
        self.writes += 1
        super().put_bytes(key, data, content_type)


def test_a_shard_counts_steps_per_item_restarts_and_stored_images():
    a, b, c = make_items(3)
    heard: list[Progress] = []
    tracker = ShardTracker([a, b, c], heard.append)
    tracker.done_before([a])
    tracker.steps([b, c], 4)
    assert (heard[-1].steps_done, heard[-1].steps_total, heard[-1].images_done, heard[-1].images_total) == (18, 30, 1, 3)
    tracker.steps([c], 1)  # c starts again alone (a restart at half the learning rate): its count starts again
    tracker.stored(b)
    assert (heard[-1].steps_done, heard[-1].images_done) == (15, 2)
    tracker.steps([b, c], 12)  # never more than an item's own steps
    assert heard[-1].steps_done == 30 and heard[-1].fraction == 1.0


def test_the_record_is_written_at_most_once_per_interval_its_last_count_at_the_end(tmp_path, caplog):
    store = CountingStore(tmp_path / "store")
    items = make_items(2, steps=100)
    reader = RunProgress(store, RUN, [items])
    started = time.monotonic()
    with ProgressRecorder(store, RUN, 0, LOG, every=0.2) as recorder:
        tracker = ShardTracker(items, recorder)
        for step in range(1, 101):
            tracker.steps(items, step)
            if step == 30:
                assert reader.read().steps_done == 60, "this process's readers see each step at once"
            time.sleep(0.005)
        elapsed = time.monotonic() - started
    assert 1 <= store.writes <= elapsed / 0.2 + 2, (store.writes, elapsed)
    record = Progress.model_validate_json(store.get_bytes(layout.progress_key(RUN, 0)))
    assert (record.steps_done, record.steps_total) == (200, 200)

    store.failing = True
    with caplog.at_level(logging.WARNING, logger=LOG.name), ProgressRecorder(store, RUN, 1, LOG, every=0.05) as recorder:
        for step in range(1, 6):
            ShardTracker(items, recorder).steps(items, step)
            time.sleep(0.06)
    assert len([r for r in caplog.records if "could not record progress" in r.getMessage()]) == 1, "one warning, and the shard goes on"


def test_the_run_sums_stored_items_records_from_other_processes_and_live_counts(tmp_path):
    store = LocalStore(tmp_path / "store")
    first, second, third = make_items(2), make_items(2, first_seed=2), make_items(1, first_seed=4)
    commit_sidecar(store, first[0])  # shard 0: one item stored by an earlier run, no record
    reader = RunProgress(store, RUN, [first, second, third], every=60)
    start = reader.read()
    assert (start.steps_done, start.images_done, start.steps_total, start.images_total) == (10, 1, 50, 5)

    # shard 1 runs in another process: only its record tells
    record = Progress(steps_done=7, steps_total=20, images_done=0, images_total=2, updated=time.time())
    store.put_bytes(layout.progress_key(RUN, 1), record.model_dump_json().encode())
    assert reader.read().steps_done == 10, "the store is read at most every `every` seconds"
    assert reader.read(fresh=True).steps_done == 17

    # shard 2 runs here: its live count is newer than the record it wrote
    with ProgressRecorder(store, RUN, 2, LOG, every=60) as recorder:
        tracker = ShardTracker(third, recorder)
        tracker.steps(third, 3)
        assert reader.read(fresh=True).steps_done == 20
        tracker.steps(third, 10)
        tracker.stored(third[0])
    final = reader.read(fresh=True)
    assert (final.steps_done, final.images_done, final.images_total) == (27, 2, 5)


def test_records_written_by_another_process_reach_a_reader_here_while_the_shard_runs(tmp_path):
    store = LocalStore(tmp_path / "store")
    items = make_items(1, steps=60)
    writer = textwrap.dedent(
        f"""
        import logging, time
        from tests.run.test_progress import RUN, make_items
        from vqclip.run.progress import ProgressRecorder, ShardTracker
        from vqclip.storage.local import LocalStore

        items = make_items(1, steps=60)
        with ProgressRecorder(LocalStore({str(store.root)!r}), RUN, 0, logging.getLogger(), every=0.1) as recorder:
            tracker = ShardTracker(items, recorder)
            for step in range(1, 61):
                tracker.steps(items, step)
                time.sleep(0.02)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", writer], cwd=Path(__file__).parents[2])
    reader = RunProgress(store, RUN, [items], every=0)
    seen = set()
    while process.poll() is None:
        seen.add(reader.read().steps_done)
        time.sleep(0.02)
    assert process.returncode == 0
    seen.add(reader.read().steps_done)
    assert len(seen - {0, 60}) >= 2 and 60 in seen, sorted(seen)


def test_without_a_terminal_a_line_comes_every_tenth_and_at_the_end_with_an_eta():
    console = Console(record=True, width=200, force_terminal=False)
    lines = ProgressLines(console)
    for done, at in [(0, 0.0), (3, 10.0), (8, 12.0), (10, 14.0), (11, 16.0), (100, 200.0)]:
        lines.show(Progress(steps_done=done, steps_total=100, images_done=0, images_total=2), now=at)
    lines.show(Progress(steps_done=100, steps_total=100, images_done=1, images_total=2), now=201.0)
    lines.show(Progress(steps_done=100, steps_total=100, images_done=2, images_total=2), now=202.0, final=True)
    text = console.export_text().splitlines()
    assert text == [
        "steps 0/100 (0%), images 0/2 stored",
        "steps 10/100 (10%), images 0/2 stored, about 0:00:51 left",  # 7 steps in 4 s since the steps first moved
        "steps 100/100 (100%), images 0/2 stored",
        "steps 100/100 (100%), images 2/2 stored",
    ]


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


@pytest.mark.slow
def test_run_on_a_terminal_shows_the_steps_move_before_the_first_image_is_stored(tmp_path):
    steps = 12
    manifest = tmp_path / "one.yaml"
    manifest.write_text(ONE_IMAGE.format(steps=steps))
    out = tmp_path / "out"
    items = out / "runs" / "tty" / "items"
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"}
    process = subprocess.Popen(
        [sys.executable, "-m", "vqclip.cli", "run", str(manifest), "--storage", str(out), "--run-id", "tty"],
        stdin=follower, stdout=follower, stderr=follower, env=env, start_new_session=True,
    )
    os.close(follower)
    shown, before_first_image = "", None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.05)
            if ready:
                try:
                    shown += os.read(leader, 65536).decode(errors="replace")
                except OSError:  # the process closed the terminal
                    break
            if before_first_image is None and list(items.glob("*.json")):
                before_first_image = _strip_ansi(shown)
            if process.poll() is not None and not ready:
                break
        assert process.wait(timeout=30) == 0, _strip_ansi(shown)[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
        os.close(leader)
    counts = {int(n) for n in re.findall(rf"(\d+)/{steps}(?!\d)", before_first_image or "")}
    assert len(counts) > 2, (sorted(counts), (before_first_image or "")[-2000:])
    assert re.search(rf"{steps}/{steps}.*images 1/1", _strip_ansi(shown)), _strip_ansi(shown)[-2000:]


def test_a_run_without_a_terminal_logs_progress_and_moves_the_ui_artifact_during_its_shard(tmp_path, prefect_api, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    from flows import progress as flow_progress
    from vqclip.cli.main import app

    monkeypatch.setattr(flow_progress, "ARTIFACT_SECONDS", 0.3)
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "CRITICAL")
    steps = 20
    manifest = tmp_path / "one.yaml"
    manifest.write_text(ONE_IMAGE.format(steps=steps))
    progress_only = ArtifactFilter(type=ArtifactFilterType(any_=["progress"]))
    with get_client(sync_client=True) as client:
        earlier = {a.id for a in client.read_artifacts(artifact_filter=progress_only)}
    values: set[float] = set()
    running = threading.Event()

    def watch() -> None:
        with get_client(sync_client=True) as client:
            while running.is_set():
                values.update(float(a.data) for a in client.read_artifacts(artifact_filter=progress_only) if a.id not in earlier)
                time.sleep(0.1)

    running.set()
    watcher = threading.Thread(target=contextvars.copy_context().run, args=(watch,))
    watcher.start()
    try:
        result = CliRunner().invoke(app, ["run", str(manifest), "--storage", str(tmp_path / "out"), "--run-id", "lines"])
    finally:
        running.clear()
        watcher.join()
    assert result.exit_code == 0, result.output
    shown = [int(n) for n in re.findall(rf"^steps (\d+)/{steps} ", result.output, flags=re.MULTILINE)]
    assert len([n for n in shown if 0 < n < steps]) >= 3 and shown[-1] == steps, result.output
    assert "images 1/1 stored" in result.output
    assert [v for v in values if 0 < v < 100] and 100.0 in values, sorted(values)  # it moved during the shard
    with get_client(sync_client=True) as client:
        (artifact,) = [a for a in client.read_artifacts(artifact_filter=progress_only) if a.id not in earlier]
    assert artifact.description == f"{steps} of {steps} optimisation steps done, 1 of 1 images stored (run lines)"
