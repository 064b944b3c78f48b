"""SIGTERM and SIGINT to `vqclip run`'s process group: a prompt, clean, resumable stop."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.processes import processes_with
from tests.helpers.runs import TINY_RUN, files_under
from vqclip.manifest import load_manifest_file

ITEMS = 3
STOP_WITHIN_S = 10


def vqclip(args: list[str], env: dict) -> subprocess.Popen:
    # A session of its own, as a terminal or service manager starts it: the signal goes to its group.
    command = [sys.executable, "-m", "vqclip.cli", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_run_stops_cleanly_and_resumes(tmp_path, unconfigured_env, signum, status):
    env, marker = unconfigured_env
    manifest = tmp_path / "stop.yaml"
    manifest.write_text(TINY_RUN.format(steps=30, n=ITEMS))
    out = tmp_path / "out"
    items_dir = out / "runs" / "s1" / "items"
    planned = {item.item_id for item in load_manifest_file(manifest).plan()}

    first = vqclip(["run", str(manifest), "--storage", str(out), "--run-id", "s1"], env)
    try:
        deadline = time.monotonic() + 180  # process start, API server start and one item, on a busy machine
        while not list(items_dir.glob("*.json")):  # one shard done: the next is mid-optimisation
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "no item was committed in time"
            time.sleep(0.1)
        os.killpg(first.pid, signum)
        signalled = time.monotonic()
        stdout, stderr = first.communicate(timeout=60)
        stopped_in = time.monotonic() - signalled
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    output = stdout + stderr
    assert stopped_in < STOP_WITHIN_S, f"exit {stopped_in:.1f} s after the signal"
    assert first.returncode == status, output
    assert "Traceback" not in output
    assert processes_with(marker) == {}, "a child process outlived the run"
    pngs, sidecars = {p.stem for p in items_dir.glob("*.png")}, {p.stem for p in items_dir.glob("*.json")}
    assert sidecars and pngs == sidecars and len(sidecars) < ITEMS, "only finished images, each with PNG and sidecar"
    assert [p for p in files_under(out) if ".vqclip-tmp-" in p.name] == []
    before = {p.name: p.read_bytes() for p in items_dir.glob("*.png")}

    (line,) = [line for line in stderr.splitlines() if "Resume with: " in line]
    resume = shlex.split(line.split("Resume with: ", 1)[1])
    assert resume[:2] == ["vqclip", "run"]
    second = vqclip(resume[1:], env)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert f"all {ITEMS} images done" in stdout
    assert {p.stem for p in items_dir.glob("*.png")} == {p.stem for p in items_dir.glob("*.json")} == planned
    for name, data in before.items():
        assert (items_dir / name).read_bytes() == data, "a committed image must not be generated again"


SHARD_RUN = """
import sys
from flows.shard import generate_shard_flow

generate_shard_flow.with_options(flow_run_name=sys.argv[3])(sys.argv[1], sys.argv[2], 0)
"""


@pytest.mark.slow
def test_a_signalled_shard_flow_run_ends_crashed_for_the_batch_to_dispatch_again(tmp_path, prefect_api):
    """A worker's flow-run process stopped with SIGTERM: Crashed (dispatch_shards' cue) and dead by the signal."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL

    from vqclip.manifest import shards
    from vqclip.run import layout
    from vqclip.run.records import PlanRecord
    from vqclip.run.state import put_json
    from vqclip.storage import open_store

    manifest = tmp_path / "shard.yaml"
    manifest.write_text(TINY_RUN.format(steps=5000, n=1))
    store = open_store(str(tmp_path / "out"))
    put_json(store, layout.plan_key("w1"), PlanRecord(run_id="w1", shards=shards(load_manifest_file(manifest).plan(), 1)))
    name = f"shard-stop-{os.getpid()}"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "INFO"}
    command = [sys.executable, "-c", SHARD_RUN, str(tmp_path / "out"), "w1", name]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        printed = []
        for line in process.stdout:  # Prefect's console log: generation starts after "models ready"
            printed.append(line)
            if "models ready" in line:
                break
        time.sleep(1)
        os.killpg(process.pid, signal.SIGTERM)
        signalled = time.monotonic()
        printed.append(process.communicate(timeout=60)[0])
        stopped_in = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = "".join(printed)
    assert stopped_in < STOP_WITHIN_S, f"exit {stopped_in:.1f} s after the signal"
    assert process.returncode == -signal.SIGTERM, output
    assert "Traceback" not in output
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    assert run.state.is_crashed(), run.state


SECOND_SIGNAL = """
import os, signal, time
from vqclip import shutdown

with shutdown.stop_on_signals():
    os.kill(os.getpid(), signal.SIGINT)
    assert shutdown.requested()
    print("first signal: flag set", flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
print("still running after the second signal")
"""


def test_a_second_signal_ends_the_process_at_once():
    result = subprocess.run([sys.executable, "-c", SECOND_SIGNAL], capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGINT, result
    assert result.stdout == "first signal: flag set\n"
