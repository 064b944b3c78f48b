"""The inbox watcher on the ephemeral API: each manifest is claimed once, even with two watchers at once, and no
bad inbox object (hostile key, binary, oversize, over the work cap, non-image input) stops the others."""

from __future__ import annotations

import io
import re
import threading
import time

import pytest
from PIL import Image

from flows import watch
from vqclip.config import get_config
from vqclip.errors import StorageError
from vqclip.run import layout
from vqclip.storage import LocalStore, open_store

GOOD = "defaults: {{preset: tiny, width: 64, height: 64, steps: 2}}\nprompts: ['{text}']\n"
REJECTED_NAME = re.compile(r"manifests/rejected/(?P<stem>[A-Za-z0-9_-]+)-[0-9a-f]{8}-[0-9a-f]{6}(?P<suffix>\.[a-z0-9]+)?")


@pytest.fixture
def started(monkeypatch):
    """Every batch run the watcher starts, as (deployment, manifest URL, run id); nothing really starts."""
    calls, lock = [], threading.Lock()

    def record(name, parameters, idempotency_key, timeout):
        with lock:
            calls.append((name, parameters["manifest"], parameters["run_id"]))

    monkeypatch.setattr(watch, "run_deployment", record)
    return calls


@pytest.fixture
def inbox(tmp_path, prefect_api):
    store = open_store(str(tmp_path / "store"))
    for n in range(4):
        store.put_bytes(f"{layout.INBOX}batch-{n}.yaml", GOOD.format(text=f"a red fox, study {n}").encode())
    store.put_bytes(f"{layout.INBOX}broken.yaml", b"prompts:\n  - text: 'a fox |'\n")
    return store


def rejections(store) -> dict[str, str]:
    """The rejected objects' notes, by the original key each names."""
    notes = {}
    for key in store.list(layout.REJECTED):
        if key.endswith(".errors.txt"):
            assert store.exists(key.removesuffix(".errors.txt")), f"{key} has no rejected object beside it"
            note = store.get_bytes(key).decode()
            original = re.match(r"inbox object: (.*)\n", note).group(1)
            notes[eval(original)] = note  # the note holds repr(key): a literal, safe to read back
        else:
            assert REJECTED_NAME.fullmatch(key), key
    return notes


def test_two_watchers_at_once_start_each_manifest_exactly_once(inbox, started):
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
    assert sum(len(r.rejected) for r in reports) == 1
    notes = rejections(inbox)
    assert list(notes) == [f"{layout.INBOX}broken.yaml"]
    assert "broken.yaml:2: prompts[0].text" in notes[f"{layout.INBOX}broken.yaml"]
    assert [REJECTED_NAME.fullmatch(k)["stem"] for k in inbox.list(layout.REJECTED) if k.endswith(".yaml")] == ["broken"]
    assert inbox.list("runs/") == []


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    return buffer.getvalue()


HOSTILE = f"{layout.INBOX}\x01x.yaml"
POISON = {
    HOSTILE: "is not allowed: it contains control or other unprintable characters",
    f"{layout.INBOX}payload.bin": "payload.bin: unknown manifest format '.bin'",
    f"{layout.INBOX}photo.yaml": "photo.yaml: a binary file, not a text manifest",
    f"{layout.INBOX}huge.yaml": "huge.yaml: 3001 bytes, more than the 3000 allowed (VQCLIP_MAX_MANIFEST_BYTES)",
    f"{layout.INBOX}greedy.yaml": "greedy.yaml:2: prompts: 2 images of 600 steps in all, 40 megapixel-steps",
    f"{layout.INBOX}notes.yaml": "notes.yaml: prompts[0].init_image: store:inputs/notes.txt is not an image",
    f"{layout.INBOX}gone.yaml": "gone.yaml: prompts[0].init_image: store:inputs/gone.png: no such object in the store",
}


def fill_inbox(store, put_hostile) -> None:
    """Two valid manifests and one object of each kind in POISON."""
    store.put_bytes("inputs/fox.png", png())
    store.put_bytes("inputs/notes.txt", b"prompts: [a fox]\n")
    store.put_bytes(f"{layout.INBOX}fox.yaml", GOOD.format(text="a red fox").encode())
    with_input = GOOD.format(text="a cat").replace("'a cat'", "{text: a cat, init_image: 'store:inputs/fox.png'}")
    store.put_bytes(f"{layout.INBOX}cat.yaml", with_input.encode())
    store.put_bytes(f"{layout.INBOX}café.yaml", GOOD.format(text="a café").encode())  # run ids are ASCII: caf-...
    put_hostile(HOSTILE, GOOD.format(text="a hidden fox").encode())
    store.put_bytes(f"{layout.INBOX}payload.bin", bytes(range(256)) * 4)
    store.put_bytes(f"{layout.INBOX}photo.yaml", png())
    store.put_bytes(f"{layout.INBOX}huge.yaml", (GOOD.format(text="a big fox") + "#" * 3001).encode()[:3000] + b"\n")
    greedy = "defaults: {preset: tiny, width: 256, height: 256, steps: 300, n: 2}\nprompts: [a greedy fox]\n"
    store.put_bytes(f"{layout.INBOX}greedy.yaml", greedy.encode())
    store.put_bytes(f"{layout.INBOX}notes.yaml", with_input.replace("fox.png", "notes.txt").encode())
    store.put_bytes(f"{layout.INBOX}gone.yaml", with_input.replace("fox.png", "gone.png").encode())


@pytest.fixture
def limits(monkeypatch):
    monkeypatch.setenv("VQCLIP_MAX_MANIFEST_BYTES", "3000")
    monkeypatch.setenv("VQCLIP_MAX_MEGAPIXEL_STEPS", "10")
    get_config.cache_clear()
    yield
    get_config.cache_clear()


def check_one_pass(store, report, started) -> None:
    assert sorted(report.started) == ["café.yaml", "cat.yaml", "fox.yaml"], report
    assert report.started["café.yaml"].startswith("caf-")
    assert sorted(run_id for _, _, run_id in started) == sorted(report.started.values())
    assert sorted(manifest for _, manifest, _ in started) == sorted(store.url(key) for key in store.list(layout.CLAIMED))
    notes = rejections(store)
    assert sorted(notes) == sorted(POISON)
    for key, reason in POISON.items():
        assert reason in notes[key], notes[key]
    assert sorted(report.rejected) == sorted(key.rpartition("/")[2] for key in POISON)
    assert report.failed == [] and store.list(layout.INBOX) == []
    assert [key for key in store.list() if key.startswith("runs/")] == []


def test_bad_objects_are_moved_aside_and_the_good_ones_start_in_one_pass(tmp_path, prefect_api, limits, started):
    store = open_store(str(tmp_path / "store"))
    # A local file whose name the store's key rules refuse, as another program could write it.
    fill_inbox(store, lambda key, data: (store.root / key).write_bytes(data))
    assert HOSTILE in store.list(layout.INBOX)
    report = watch.watch_inbox(storage=str(store.root))
    check_one_pass(store, report, started)


def test_bad_objects_in_s3_are_moved_aside_and_the_good_ones_start_in_one_pass(s3_bucket, seaweedfs, prefect_api, limits, started):
    store = open_store(s3_bucket)
    client = seaweedfs.client()
    # Plain boto3 takes keys our store refuses.
    fill_inbox(store, lambda key, data: client.put_object(Bucket=store.bucket, Key=store.prefix + key, Body=data))
    assert HOSTILE in store.list(layout.INBOX)
    report = watch.watch_inbox(storage=s3_bucket)
    check_one_pass(store, report, started)


def test_an_object_that_cannot_even_be_moved_is_given_up_once_and_blocks_nothing(tmp_path, prefect_api, started, monkeypatch):
    store = open_store(str(tmp_path / "store"))
    (store.root / layout.INBOX).mkdir(parents=True)
    (store.root / HOSTILE).write_bytes(b"prompts: [a fox]\n")
    tries = []
    evict = LocalStore.evict

    def failing_evict(self, listed_key, dst_key):
        if listed_key == HOSTILE:
            tries.append(listed_key)
            raise StorageError("cannot move it: the disk refused")
        return evict(self, listed_key, dst_key)

    monkeypatch.setattr(LocalStore, "evict", failing_evict)
    store.put_bytes(f"{layout.INBOX}broken.yaml", b"prompts: []\n")

    def upload_later() -> None:
        time.sleep(0.5)
        store.put_bytes(f"{layout.INBOX}fox.yaml", GOOD.format(text="a red fox").encode())

    uploader = threading.Thread(target=upload_later)
    uploader.start()
    report = watch.watch_inbox(storage=str(store.root), poll_seconds=0.1, duration_seconds=2)
    uploader.join()
    assert tries == [HOSTILE] and report.failed == ["\x01x.yaml"]
    assert list(report.started) == ["fox.yaml"] and report.rejected == ["broken.yaml"]
    assert store.list(layout.INBOX) == [HOSTILE]


def test_a_polling_watcher_claims_an_upload_within_seconds(tmp_path, prefect_api, monkeypatch):
    store = open_store(str(tmp_path / "store"))
    started_at, uploaded_at = [], []
    monkeypatch.setattr(watch, "run_deployment", lambda *args, **kwargs: started_at.append(time.monotonic()))

    def upload_later() -> None:
        time.sleep(1.0)
        store.put_bytes(f"{layout.INBOX}fox.yaml", GOOD.format(text="a red fox").encode())
        uploaded_at.append(time.monotonic())

    uploader = threading.Thread(target=upload_later)
    uploader.start()
    report = watch.watch_inbox(storage=str(store.root), poll_seconds=0.25, duration_seconds=4)
    ended = time.monotonic()
    uploader.join()
    assert list(report.started) == ["fox.yaml"] and len(started_at) == 1
    assert store.list(layout.INBOX) == [] and len(store.list(layout.CLAIMED)) == 1
    assert started_at[0] - uploaded_at[0] < 2.0  # a pass every 0.25 s, not a new flow run a minute later
    assert ended - uploaded_at[0] > 1.5  # and it went on polling after the claim, to its end


def test_rejected_names_are_safe_and_never_collide():
    keys = [f"{layout.INBOX}a\x01.yaml", f"{layout.INBOX}a\x02.yaml", f"{layout.INBOX}a_.yaml", f"{layout.INBOX}a\u202e.yaml"]
    names = [watch.rejected_key(key) for key in keys] + [watch.rejected_key(keys[0])]
    assert len(set(names)) == len(names)
    assert all(REJECTED_NAME.fullmatch(name) and name.endswith(".yaml") for name in names)
    assert REJECTED_NAME.fullmatch(watch.rejected_key(f"{layout.INBOX}../..\x00")).group("stem") == "object"


def test_the_batch_flow_applies_the_work_cap_to_its_manifest_parameter(tmp_path, prefect_api, limits):
    from flows.batch import batch_generate

    manifest = tmp_path / "greedy.yaml"
    manifest.write_text("defaults: {preset: tiny, width: 256, height: 256, steps: 300, n: 2}\nprompts: [a greedy fox]\n")
    store = open_store(str(tmp_path / "store"))
    state = batch_generate(manifest=str(manifest), storage=str(store.root), return_state=True)
    assert state.is_failed()
    assert "40 megapixel-steps" in state.message and "VQCLIP_MAX_MEGAPIXEL_STEPS" in state.message
    assert store.list() == []
