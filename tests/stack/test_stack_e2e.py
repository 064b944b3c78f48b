"""Scale-out end to end on one machine: a real Prefect server, SeaweedFS (credentials enforced), a cpu worker
and two gpu-pool process workers (CPU-only here), the deployments of deployments/prefect.yaml, manifests
sent with `vqclip submit`. A worker and its flow-run process killed mid-shard lose and duplicate nothing."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import httpx
import pytest
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    DeploymentFilter,
    DeploymentFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType

from flows.lineage import RESUMED_TAG
from tests.helpers.chromium import CHROMIUM, Browser
from tests.helpers.runs import check_complete_run, item_ids
from tests.helpers.stack import ZOMBIE_AFTER_S, stack_logs
from vqclip.config import get_config
from vqclip.run import layout
from vqclip.stack.control import (
    StackState,
    client_env,
    load_state,
    prefect_client,
    start_stack,
    stop_stack,
    zombie_automation,
)
from vqclip.stack.processes import descendants, is_alive
from vqclip.storage import open_store

pytestmark = pytest.mark.slow

# shard_size 1: every item is a shard of its own, and two shards at once go to both gpu workers (each runs one at a time).
MANIFEST = """\
name: stack {name}
defaults: {{preset: tiny, width: 64, height: 64, steps: {steps}, cutouts: 4, n: 1, shard_size: 1}}
prompts:
  - {{id: fox, text: "a red fox:1 | blurry:-0.5"}}
  - {{id: sea, text: a blue sea}}
"""
ITEMS = 2
RUN_TIMEOUT_S = 240.0
# Killed flow runs are marked Crashed ZOMBIE_AFTER_S after their last heartbeat, plus up to 5 s of
# trigger evaluation; the re-dispatched shard then needs a worker poll, a process start and the steps.
FAULT_RUN_TIMEOUT_S = 330.0

T = TypeVar("T")

# The batch flow run the first test completed, for later tests that only need a finished run.
COMPLETED_BATCH: dict[str, Any] = {}


@pytest.fixture
def stack(local_stack: StackState, monkeypatch: pytest.MonkeyPatch) -> Iterator[StackState]:  # noqa: F811
    """The session's stack, with this process's S3 settings pointed at its store."""
    for name, value in local_stack.client_env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    get_config.cache_clear()
    yield local_stack
    get_config.cache_clear()


def api_auth(state: StackState) -> tuple[str, str]:
    """The stack's Prefect credentials as HTTP basic auth ("user:password", the form the UI asks for)."""
    user, _, password = state.auth_string.partition(":")
    return user, password


def wait_until(what: str, check: Callable[[], T | None], timeout: float, state: StackState, every: float = 1.0) -> T:
    """Poll `check` until it returns something other than None; fail with the stack's logs after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: nothing after {timeout:.0f} s\n{stack_logs(state)}")
        time.sleep(every)


def vqclip(state: StackState, *args: str) -> str:
    """Run the `vqclip` command line as a user would, with the environment `vqclip up` prints."""
    env = {**client_env(state), "COLUMNS": "250"}
    result = subprocess.run([sys.executable, "-m", "vqclip.cli", *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"vqclip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def flow_runs(state: StackState, deployment: str, run_id: str | None = None) -> list[FlowRun]:
    """Flow runs of the deployment named `deployment` (of this vqclip run, when given), oldest first."""
    with prefect_client(state) as client:
        found = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])))
    found = [r for r in found if run_id is None or r.parameters.get("run_id") == run_id]
    return sorted(found, key=lambda r: r.created)


def read_flow_run(state: StackState, flow_run_id: UUID) -> FlowRun:
    with prefect_client(state) as client:
        return client.read_flow_run(flow_run_id)


def final(state: StackState, flow_run_id: UUID) -> FlowRun | None:
    run = read_flow_run(state, flow_run_id)
    return run if run.state is not None and run.state.is_final() else None


def worker_of(run: FlowRun) -> str | None:
    """The worker that ran a flow run: Prefect 3.9's workers label each run they submit."""
    return run.labels.get("prefect.worker.name")


def heartbeats(state: StackState, flow_run_id: UUID) -> list[dict[str, Any]]:
    """The `prefect.flow-run.heartbeat` events the server has for one flow run."""
    since = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    body = {
        "filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
            "occurred": {"since": since},
        },
        "limit": 50,
    }
    response = httpx.post(f"{state.api_url}/events/filter", json=body, timeout=10, auth=api_auth(state))
    response.raise_for_status()
    return response.json()["events"]


def check_items_exactly(store, run_id: str, expected: int) -> None:
    """Exactly one PNG and one sidecar per planned item, nothing else under items/."""
    keys = store.list(layout.items_prefix(run_id))
    assert len(keys) == 2 * expected, keys
    assert item_ids(store, run_id, ".png") == item_ids(store, run_id, ".json")


def vqclip_status(state: StackState) -> str | None:
    """`vqclip status`'s output when it exits 0 (every piece up, API, store and workers answering), else None."""
    env = {**client_env(state), "COLUMNS": "250"}
    result = subprocess.run([sys.executable, "-m", "vqclip.cli", "status", "--state-dir", state.state_dir], env=env,
                            capture_output=True, text=True, timeout=60)
    return result.stdout if result.returncode == 0 else None


def artifacts_by_type(state: StackState, flow_run_id: UUID) -> dict[str, Any]:
    with prefect_client(state) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {artifact.type: artifact for artifact in found}


def start_watcher(state: StackState) -> UUID:
    """Run the watch-inbox deployment now instead of waiting for its schedule."""
    with prefect_client(state) as client:
        deployment = client.read_deployment_by_name("watch-inbox/watch-inbox")
        return client.create_flow_run_from_deployment(deployment.id).id


def test_submitted_manifest_is_claimed_and_generated_across_both_gpu_workers(stack: StackState, tmp_path: Path):
    started = time.monotonic()
    manifest = tmp_path / "e2e-watch.yaml"
    manifest.write_text(MANIFEST.format(name="watch", steps=4))
    out = vqclip(stack, "submit", str(manifest))
    assert f"{stack.storage}/{layout.INBOX}e2e-watch.yaml" in out, out

    def claimed_batch_run() -> FlowRun | None:
        runs = [r for r in flow_runs(stack, "batch-generate") if str(r.parameters.get("run_id", "")).startswith("e2e-watch-")]
        return runs[0] if runs else None

    # A scheduled watcher tick may claim it first; a manual run that collides with one is cancelled
    # (the deployment's concurrency limit is 1, CANCEL_NEW), so start another until a batch run exists.
    batch = None
    deadline = time.monotonic() + 150
    while batch is None:
        if time.monotonic() > deadline:
            pytest.fail(f"no batch run was started for the submitted manifest\n{stack_logs(stack)}")
        watcher = start_watcher(stack)
        wait_until("the watcher to end or a batch run to start", lambda: claimed_batch_run() or final(stack, watcher), 120, stack)
        batch = claimed_batch_run()
    run_id = batch.parameters["run_id"]
    assert batch.parameters["shard_deployment"] == "generate-shard/generate-shard"
    assert batch.parameters["manifest"] == f"{stack.storage}/{layout.CLAIMED}{run_id}.yaml"

    done = wait_until(f"batch run {run_id} to finish", lambda: final(stack, batch.id), RUN_TIMEOUT_S, stack)
    elapsed = time.monotonic() - started
    assert done.state.type == StateType.COMPLETED, f"{done.state.name}: {done.state.message}\n{stack_logs(stack)}"
    assert worker_of(done) == "cpu-1" and done.work_pool_name == "cpu"

    store = open_store(stack.storage)
    check_complete_run(store, run_id, ITEMS)
    check_items_exactly(store, run_id, ITEMS)
    assert store.list(layout.INBOX) == []

    shards = flow_runs(stack, "generate-shard", run_id)
    dispatched = [(r.parameters["shard"], r.state.name, r.state.message) for r in shards]
    assert sorted(r.parameters["shard"] for r in shards) == list(range(ITEMS)), f"each shard once: {dispatched}\n{stack_logs(stack)}"
    assert all(r.state.type == StateType.COMPLETED for r in shards)
    assert {r.work_pool_name for r in shards} == {"gpu"}
    assert {worker_of(r) for r in shards} == {"gpu-1", "gpu-2"}, [(r.name, r.labels) for r in shards]
    # The process worker records each flow run's process id (a plain pid) as its infrastructure pid.
    assert len({r.infrastructure_pid for r in shards}) == ITEMS and all(r.infrastructure_pid.isdigit() for r in shards)
    # Heartbeats flow: every shard run sent at least one (the zombie detection depends on them). The
    # server stores events in batches, so the last ones may take a few seconds to be readable.
    wait_until("a heartbeat from every shard run", lambda: True if all(heartbeats(stack, r.id) for r in shards) else None, 30, stack)

    by_type = artifacts_by_type(stack, batch.id)
    assert {"table", "markdown", "progress"} <= set(by_type), sorted(by_type)
    table = by_type["table"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert sorted(row["item_id"] for row in table) == item_ids(store, run_id, ".json")
    assert float(by_type["progress"].data) == 100.0
    COMPLETED_BATCH.update(flow_run_id=batch.id, run_id=run_id)
    print(f"\nwatch -> {ITEMS} shards on 2 gpu workers -> ranked: {elapsed:.0f} s")


def check_png(path: Path) -> None:
    data = path.read_bytes() if path.exists() else b""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, f"{path}: {len(data)} bytes, not a rendered page"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_ui_shows_the_batch_run_and_its_ranking_table(stack: StackState, tmp_path: Path):
    started = time.monotonic()
    if COMPLETED_BATCH:  # reuse the run the first test completed
        flow_run_id, run_id = COMPLETED_BATCH["flow_run_id"], COMPLETED_BATCH["run_id"]
    else:  # run alone: a small run of its own
        manifest = tmp_path / "e2e-ui.yaml"
        manifest.write_text(MANIFEST.format(name="ui", steps=4))
        match = re.search(r"started run (\S+?):? ", vqclip(stack, "submit", "--now", str(manifest)))
        assert match
        run_id = match.group(1)
        (batch,) = flow_runs(stack, "batch-generate", run_id)
        done = wait_until(f"batch run {run_id} to finish", lambda: final(stack, batch.id), RUN_TIMEOUT_S, stack)
        assert done.state.type == StateType.COMPLETED, f"{done.state.name}: {done.state.message}\n{stack_logs(stack)}"
        flow_run_id = batch.id

    with prefect_client(stack) as client:
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["table"]))
        )
    (table,) = tables
    assert table.key == f"ranking-{run_id.lower()}"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data

    pages = {"flow-run": f"{stack.ui_url}/runs/flow-run/{flow_run_id}", "artifact": f"{stack.ui_url}/artifacts/artifact/{table.id}"}
    done_name = read_flow_run(stack, flow_run_id).name
    expected = {"flow-run": lambda page: done_name in page and "Completed" in page, "artifact": lambda page: rows[-1]["item_id"] in page}
    browser = Browser(tmp_path / "profile")
    try:
        # Without the stack's credentials the UI says so and shows nothing of the run.
        locked = browser.open(pages["flow-run"], lambda page: "Authentication failed" in page, timeout=90)
        assert "Authentication failed" in locked and done_name not in locked and run_id not in locked, locked[-2000:]
        browser.evaluate(f"localStorage.setItem('prefect-password', btoa({json.dumps(stack.auth_string)}))")
        doms = {}
        for name, url in pages.items():
            doms[name] = browser.open(url, expected[name])
            browser.screenshot(tmp_path / f"{name}.png")
            check_png(tmp_path / f"{name}.png")
    finally:
        browser.close()

    assert done_name in doms["flow-run"] and "Completed" in doms["flow-run"], doms["flow-run"][-3000:]
    artifact_dom = doms["artifact"]
    for header in ("prompt_id", "prompt", "seed", "score", "rank", "item_id"):
        assert re.search(rf">\s*{header}\s*<", artifact_dom), f"no {header!r} column header on {pages['artifact']}:\n{artifact_dom[-3000:]}"
    for row in rows:  # every row's values as the UI prints them (a JavaScript number: 12.0 shows as 12)
        score = repr(float(row["score"])).removesuffix(".0")
        for value in (row["prompt_id"], str(row["seed"]), score, row["item_id"]):
            assert re.search(rf">\s*{re.escape(value)}\s*<", artifact_dom), f"{value!r} of {row} is not on {pages['artifact']}"
    # Each row links its image on the stack's read-only browser view of the bucket, and the link opens.
    links = re.findall(rf'href="({re.escape(stack.browse_url)}/[^"]+?\.png)"', artifact_dom)
    assert len(links) >= len(rows), f"no image links to {stack.browse_url} on {pages['artifact']}:\n{artifact_dom[-3000:]}"
    with urllib.request.urlopen(html.unescape(links[0]), timeout=10) as response:
        assert response.headers["Content-Type"] == "image/png" and response.read(8) == b"\x89PNG\r\n\x1a\n"
    print(f"\nUI pages of {done_name} rendered in {time.monotonic() - started:.0f} s; screenshots in {tmp_path}")


def test_the_api_refuses_calls_without_the_stack_credentials(stack: StackState):
    body = {"limit": 1}
    assert httpx.post(f"{stack.api_url}/flow_runs/filter", json=body, timeout=10).status_code == 401
    assert httpx.post(f"{stack.api_url}/flow_runs/filter", json=body, timeout=10, auth=("vqclip", "wrong")).status_code == 401
    assert httpx.post(f"{stack.api_url}/flow_runs/filter", json=body, timeout=10, auth=api_auth(stack)).status_code == 200


def submit_now(state: StackState, tmp_path: Path, name: str, steps: int) -> tuple[str, FlowRun]:
    """`vqclip submit --now` a MANIFEST; its run id and batch flow run."""
    manifest = tmp_path / f"e2e-{name}.yaml"
    manifest.write_text(MANIFEST.format(name=name, steps=steps))
    match = re.search(r"started run (\S+?):? ", vqclip(state, "submit", "--now", str(manifest)))
    assert match
    (batch,) = flow_runs(state, "batch-generate", match.group(1))
    return match.group(1), batch


def shard_running(state: StackState, run_id: str) -> FlowRun | None:
    """A shard run of `run_id` that runs and has sent a heartbeat."""
    for run in flow_runs(state, "generate-shard", run_id):
        if run.state.type == StateType.RUNNING and run.infrastructure_pid and heartbeats(state, run.id):
            return run
    return None


def completed_batch(state: StackState, run_id: str) -> FlowRun | None:
    """The batch run of `run_id` that completed, if any; fails the test on one that failed."""
    for run in flow_runs(state, "batch-generate", run_id):
        assert run.state.type != StateType.FAILED, f"{run.name}: {run.state.message}\n{stack_logs(state)}"
        if run.state.type == StateType.COMPLETED:
            return run
    return None


def test_lost_cpu_and_gpu_machines_lose_and_duplicate_nothing(stack: StackState, tmp_path: Path):
    """Two runs, each losing a machine mid-run, the second soon after the first (their zombie-run windows overlap).

    Run "lost-cpu" loses its batch's machine: the cpu worker and the batch's flow-run process are
    killed; the zombie automation marks the batch Crashed and the reconciler resumes it, adopting its
    shards still in flight. Run "lost-gpu", started once the supervisor has started the cpu worker
    again (a batch whose worker dies dies with it), loses a shard's machine: gpu-1's worker and the
    shard's flow-run process are killed; the shard is marked Crashed and its batch dispatches it again.
    Neither run loses or duplicates an image.
    """
    with prefect_client(stack) as client:
        (automation,) = client.read_automations_by_name(zombie_automation().name)
    assert automation.enabled and automation.trigger.posture == "Proactive"
    assert automation.trigger.within == timedelta(seconds=ZOMBIE_AFTER_S)
    # Few steps: the batch is killed as soon as it has dispatched, and its shards go before the other run's.
    cpu_run, cpu_batch = submit_now(stack, tmp_path, "lost-cpu", steps=40)

    def dispatching() -> FlowRun | None:
        batch = read_flow_run(stack, cpu_batch.id)
        running = batch.state.type == StateType.RUNNING and batch.infrastructure_pid and heartbeats(stack, batch.id)
        return batch if running and flow_runs(stack, "generate-shard", cpu_run) else None

    cpu_batch = wait_until("the lost-cpu batch dispatching, with a heartbeat", dispatching, 150, stack, every=0.5)
    assert worker_of(cpu_batch) == "cpu-1"
    cpu_worker, batch_pid = load_state(stack.state_dir).process("worker-cpu-1"), int(cpu_batch.infrastructure_pid)
    os.killpg(cpu_worker.pid, signal.SIGKILL)
    os.killpg(batch_pid, signal.SIGKILL)

    def cpu_worker_back() -> bool | None:
        worker = load_state(stack.state_dir).process("worker-cpu-1")
        return True if worker.pid != cpu_worker.pid and is_alive(worker.pid, worker.started) else None

    wait_until("the supervisor to start the cpu worker again", cpu_worker_back, 60, stack, every=0.5)
    gpu_run, gpu_batch = submit_now(stack, tmp_path, "lost-gpu", steps=120)

    # The gpu machine, once a shard of the other run runs on gpu-1 and has sent a heartbeat.
    def running_on_gpu_1() -> FlowRun | None:
        for run in flow_runs(stack, "generate-shard", gpu_run):
            if run.state.type == StateType.RUNNING and worker_of(run) == "gpu-1" and run.infrastructure_pid and heartbeats(stack, run.id):
                return run
        return None

    gpu_worker = load_state(stack.state_dir).process("worker-gpu-1")
    victim = wait_until("a lost-gpu shard running on gpu-1 that has sent a heartbeat", running_on_gpu_1, 150, stack, every=0.3)
    flow_pid = int(victim.infrastructure_pid)
    # The flow-run process is the worker's child, in a session of its own: kill both, by pid, like a lost machine.
    assert flow_pid in descendants([gpu_worker.pid]) and os.getpgid(flow_pid) == flow_pid
    os.killpg(gpu_worker.pid, signal.SIGKILL)
    os.killpg(flow_pid, signal.SIGKILL)
    killed_at, killed_wall = time.monotonic(), datetime.now(timezone.utc)
    gone = (batch_pid, gpu_worker.pid, flow_pid)
    wait_until("the killed processes to be gone", lambda: True if not any(is_alive(pid) for pid in gone) else None, 10, stack, 0.1)
    shard = victim.parameters["shard"]

    done = wait_until(f"batch run {gpu_run} to finish", lambda: final(stack, gpu_batch.id), FAULT_RUN_TIMEOUT_S, stack)
    assert done.state.type == StateType.COMPLETED, f"{done.state.name}: {done.state.message}\n{stack_logs(stack)}"
    resumed = wait_until(f"a batch run of {cpu_run} to complete", lambda: completed_batch(stack, cpu_run), FAULT_RUN_TIMEOUT_S, stack)
    store = open_store(stack.storage)
    for run_id in (cpu_run, gpu_run):
        check_complete_run(store, run_id, ITEMS)
        check_items_exactly(store, run_id, ITEMS)

    # lost-cpu: the batch was resumed by the reconciler, with its parameters; every shard completed by exactly one flow run.
    lost = read_flow_run(stack, cpu_batch.id)
    assert lost.state.type == StateType.CRASHED and RESUMED_TAG in lost.tags, (lost.state, lost.tags)
    assert resumed.idempotency_key == f"resume-{cpu_batch.id}" and resumed.parameters == {**cpu_batch.parameters, "run_id": cpu_run}
    shards = flow_runs(stack, "generate-shard", cpu_run)
    completed = sorted(r.parameters["shard"] for r in shards if r.state.type == StateType.COMPLETED)
    assert completed == list(range(ITEMS)), [(r.parameters["shard"], r.state.name) for r in shards]

    # lost-gpu: the killed shard was marked Crashed for its missing heartbeats and dispatched once more.
    crashed = read_flow_run(stack, victim.id)
    assert crashed.state.type == StateType.CRASHED, crashed.state
    assert "No heartbeat" in (crashed.state.message or ""), crashed.state.message
    last_beat = max(datetime.fromisoformat(e["occurred"].replace("Z", "+00:00")) for e in heartbeats(stack, victim.id))
    detected_after_kill = (crashed.state.timestamp - killed_wall).total_seconds()
    detected_after_beat = (crashed.state.timestamp - last_beat).total_seconds()
    attempts = [r for r in flow_runs(stack, "generate-shard", gpu_run) if r.parameters["shard"] == shard]
    assert [r.idempotency_key for r in attempts] == [f"{gpu_run}-shard-{shard}-attempt-{n}" for n in (1, 2)]
    # gpu-2, or gpu-1 once the supervisor has started it again.
    assert attempts[1].state.type == StateType.COMPLETED and worker_of(attempts[1]) in {"gpu-1", "gpu-2"}
    shards = flow_runs(stack, "generate-shard", gpu_run)
    assert sorted({r.parameters["shard"] for r in shards}) == list(range(ITEMS))
    assert all(r.state.type == StateType.COMPLETED for r in shards if r.id != victim.id)

    # The supervisor started both killed workers again; `vqclip status` shows them, back in their pools.
    state = load_state(stack.state_dir)
    for name, killed in (("worker-cpu-1", cpu_worker), ("worker-gpu-1", gpu_worker)):
        restarted = state.process(name)
        assert restarted.pid != killed.pid and restarted.restarts >= 1 and is_alive(restarted.pid, restarted.started)
    status = wait_until("vqclip status to report a healthy stack", lambda: vqclip_status(stack), 60, stack, every=2)
    restarted = state.process("worker-gpu-1")
    assert re.search(rf"worker-gpu-1\s.*{restarted.pid}\s.*running\s.*{restarted.restarts}", status), status
    print(
        f"\nshard marked Crashed {detected_after_kill:.0f} s after the kill ({detected_after_beat:.0f} s after its last "
        f"heartbeat); kills -> both runs complete {time.monotonic() - killed_at:.0f} s"
    )


def test_down_mid_run_then_up_finishes_the_run(stack: StackState, tmp_path: Path):
    """Last in this module: it stops and starts the session's stack."""
    run_id, batch = submit_now(stack, tmp_path, "down-up", steps=60)
    wait_until("a shard running with a heartbeat", lambda: shard_running(stack, run_id), 150, stack, every=0.5)
    stop_stack(stack.state_dir)
    stopped_at = time.monotonic()
    state = start_stack(stack.state_dir, gpu_workers=2)
    assert read_flow_run(state, batch.id).state.type == StateType.CRASHED

    done = wait_until(f"a batch run of {run_id} to complete", lambda: completed_batch(state, run_id), 300, state)
    elapsed = time.monotonic() - stopped_at
    assert elapsed < 300 and done.idempotency_key == f"resume-{batch.id}"
    store = open_store(state.storage)
    check_complete_run(store, run_id, ITEMS)
    check_items_exactly(store, run_id, ITEMS)
    in_flight = [r.name for r in flow_runs(state, "generate-shard", run_id) if not r.state.is_final()]
    assert in_flight == []
    print(f"\ndown mid-run -> up -> resumed run complete in {elapsed:.0f} s")
