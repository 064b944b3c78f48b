"""The batch flow into a real SeaweedFS bucket (credentials enforced): outputs agree, bad credentials fail
fast and write nothing, and a server restart mid-run neither loses nor duplicates an item."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.batch import batch_generate
from tasks import generation
from tests.helpers.runs import ITEMS, MANIFEST, check_complete_run, item_ids
from vqclip.manifest import load_manifest
from vqclip.run import layout
from vqclip.storage import S3Store, open_store

DOWNTIME_S = 3.0


@pytest.fixture
def planned_ids() -> list[str]:
    """The item ids the test manifest plans (ids do not depend on the manifest's name or store)."""
    return sorted(item.item_id for item in load_manifest(MANIFEST.encode(), "batch.yaml").plan())


@pytest.fixture
def s3_requests(monkeypatch) -> list[tuple[str, str]]:
    """Every HTTP attempt (method, url) that any S3Store made during the test, retries included."""
    sent: list[tuple[str, str]] = []
    original = S3Store.__init__

    def counting_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self._client.meta.events.register("before-send.s3", lambda request, **_: sent.append((request.method, request.url)))

    monkeypatch.setattr(S3Store, "__init__", counting_init)
    return sent


@pytest.fixture
def shard_attempts(monkeypatch) -> list[int]:
    """How many times the generate-shard task body ran (first tries and Prefect retries alike)."""
    calls: list[int] = []
    original = generation.generate_shard.fn

    def counting(*args, **kwargs):
        calls.append(len(args[0]) if args else len(kwargs["items"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(generation.generate_shard, "fn", counting)
    return calls


def bucket_of(s3_uri: str) -> str:
    return s3_uri[len("s3://") :].split("/", 1)[0]


def run(manifest: str, storage: str, run_id: str):
    return batch_generate(manifest=manifest, storage=storage, run_id=run_id, return_state=True)


def check_items_exactly(store, run_id: str, planned: list[str]) -> None:
    """Nothing lost, nothing duplicated: exactly one PNG and one sidecar per planned item, nothing else."""
    keys = store.list(layout.items_prefix(run_id))
    assert len(keys) == 2 * len(planned), keys
    assert item_ids(store, run_id, ".png") == planned
    assert item_ids(store, run_id, ".json") == planned


def flow_artifacts(state) -> dict:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    return {a.type: a for a in found}


@pytest.mark.slow
def test_end_to_end_into_s3(manifest, s3_bucket, planned_ids):
    state = run(str(manifest), s3_bucket, "s3-e2e")
    assert state.is_completed(), state.message
    store = open_store(s3_bucket)
    check_complete_run(store, "s3-e2e", ITEMS)
    check_items_exactly(store, "s3-e2e", planned_ids)
    assert store.get_bytes(layout.manifest_key("s3-e2e", ".yaml")) == manifest.read_bytes()

    summary = state.result()
    assert summary.index == f"{s3_bucket}/{layout.index_key('s3-e2e')}"
    by_type = flow_artifacts(state)
    assert {"table", "markdown", "progress"} <= set(by_type)
    table = json.loads(by_type["table"].data) if isinstance(by_type["table"].data, str) else by_type["table"].data
    assert sorted(row["item_id"] for row in table) == planned_ids
    assert all(row["image"].replace("\\", "").startswith(f"{s3_bucket}/runs/s3-e2e/items/") for row in table)  # as markdown text


@pytest.mark.slow
def test_manifest_given_as_an_s3_object(prefect_api, s3_bucket, seaweedfs, planned_ids):
    bucket = bucket_of(s3_bucket)
    seaweedfs.client().put_object(Bucket=bucket, Key="manifests/x.yaml", Body=MANIFEST.encode())
    source = f"s3://{bucket}/manifests/x.yaml"

    state = run(source, s3_bucket, "s3-manifest")
    assert state.is_completed(), state.message
    store = open_store(s3_bucket)
    index = check_complete_run(store, "s3-manifest", ITEMS)
    check_items_exactly(store, "s3-manifest", planned_ids)
    assert index.manifest == source
    assert store.get_bytes(layout.manifest_key("s3-manifest", ".yaml")) == MANIFEST.encode()


@pytest.mark.parametrize("wrong", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_wrong_credentials_fail_fast_and_write_nothing(
    wrong, manifest, s3_bucket, seaweedfs, monkeypatch, s3_requests, shard_attempts
):
    bad_value = "VQWRONG" + "x" * 13 if wrong == "AWS_ACCESS_KEY_ID" else "not-the-secret-0123456789abcdef"
    monkeypatch.setenv(wrong, bad_value)
    bucket = bucket_of(s3_bucket)

    started = time.monotonic()
    state = run(str(manifest), s3_bucket, "s3-badcreds")
    elapsed = time.monotonic() - started

    assert state.is_failed(), state.message
    message = state.message or ""
    assert repr(bucket) in message or bucket in message, message
    assert re.search(r"credentials", message) and re.search(r"reject|refuse", message), message
    for secret in (seaweedfs.secret_key, seaweedfs.access_key, bad_value):
        assert secret not in message and secret not in repr(state)
    assert elapsed < 8, f"a refused credential must fail at once, took {elapsed:.1f} s"
    # No retry storm: the flow ran once, no request went out twice, the shard task never ran twice.
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(state.state_details.flow_run_id).run_count == 1
    assert s3_requests, "the run never reached S3"
    assert len(s3_requests) == len(set(s3_requests)) <= 3, s3_requests
    assert len(shard_attempts) <= 1, shard_attempts
    # Nothing was written, as the right identity sees it.
    assert seaweedfs.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.slow
def test_s3_restart_mid_run_loses_and_duplicates_nothing(
    manifest, s3_bucket, seaweedfs, monkeypatch, planned_ids, s3_requests, shard_attempts
):
    """Right after the first item is committed (its sidecar written) the server goes down for a few
    seconds, then comes back; boto3's and Prefect's retries must carry the run through."""
    run_id = "s3-restart"
    stopped, thread_errors = threading.Event(), []
    outage: dict[str, float | int] = {}

    def outage_cycle():
        try:
            seaweedfs.stop()
            outage["stopped_at"], outage["requests_at_stop"] = time.monotonic(), len(s3_requests)
            stopped.set()
            time.sleep(DOWNTIME_S)
            outage["requests_while_down"] = len(s3_requests) - outage["requests_at_stop"]
            seaweedfs.start()
            outage["up_at"] = time.monotonic()
        except BaseException as exc:  # reported by the test, not lost in this thread
            thread_errors.append(exc)
        finally:
            stopped.set()

    cycler = threading.Thread(target=outage_cycle, name="seaweedfs-restart", daemon=True)
    original_put, first_commit = S3Store.put_bytes, threading.Lock()

    def put_then_outage(self, key, data, content_type=None):
        original_put(self, key, data, content_type)
        # Several upload threads write sidecars at once: only the first to commit starts the outage.
        if key.startswith(layout.items_prefix(run_id)) and key.endswith(".json") and first_commit.acquire(blocking=False):
            cycler.start()
            assert stopped.wait(30), "the S3 server did not stop"

    monkeypatch.setattr(S3Store, "put_bytes", put_then_outage)

    started = time.monotonic()
    try:
        state = run(str(manifest), s3_bucket, run_id)
    finally:
        if cycler.ident is not None:
            cycler.join(60)
        if not seaweedfs.running:
            seaweedfs.start()
    elapsed = time.monotonic() - started

    assert not thread_errors, thread_errors
    assert cycler.ident is not None, "no item was committed, so the server was never stopped"
    assert outage["requests_while_down"] > 0, "the run made no S3 request while the server was down"
    assert state.is_completed(), state.message
    store = open_store(s3_bucket)
    check_complete_run(store, run_id, ITEMS)
    check_items_exactly(store, run_id, planned_ids)
    assert elapsed < 90, f"the run took {elapsed:.1f} s to ride out {DOWNTIME_S:.0f} s of downtime"
