"""The inbox watcher on the ephemeral API: each manifest is claimed once, even with two watchers at once."""

from __future__ import annotations

import threading

import pytest

from flows import watch
from vqclip import layout
from vqclip.storage import open_store

GOOD = "defaults: {{preset: tiny, width: 64, height: 64, steps: 2}}\nprompts: ['{text}']\n"


@pytest.fixture
def inbox(tmp_path, prefect_api):
    store = open_store(str(tmp_path / "store"))
    for n in range(4):
        store.put_bytes(f"{layout.INBOX}batch-{n}.yaml", GOOD.format(text=f"a red fox, study {n}").encode())
    store.put_bytes(f"{layout.INBOX}broken.yaml", b"prompts:\n  - text: 'a fox |'\n")
    return store


def test_two_watchers_at_once_start_each_manifest_exactly_once(inbox, monkeypatch):
    started, lock = [], threading.Lock()

    def record(name, parameters, idempotency_key, timeout):
        with lock:
            started.append((name, parameters["manifest"], parameters["run_id"]))

    monkeypatch.setattr(watch, "run_deployment", record)
    reports = []
    watchers = [threading.Thread(target=lambda: reports.append(watch.watch_inbox(storage=inbox.uri))) for _ in range(2)]
    for thread in watchers:
        thread.start()
    for thread in watchers:
        thread.join(120)

    assert len(started) == 4, started
    claimed = inbox.list(layout.CLAIMED)
    assert len(claimed) == 4 and inbox.list(layout.INBOX) == []
    assert sorted(inbox.url(key) for key in claimed) == sorted(manifest for _, manifest, _ in started)
    assert all(name == "batch-generate/batch-generate" for name, _, _ in started)
    assert sum(len(r.started) for r in reports) == 4
    assert inbox.list(layout.REJECTED) == [f"{layout.REJECTED}broken.yaml", f"{layout.REJECTED}broken.yaml.errors.txt"]
    errors = inbox.get_bytes(f"{layout.REJECTED}broken.yaml.errors.txt").decode()
    assert "broken.yaml:2: prompts[0].text" in errors
    assert inbox.list("runs/") == []
