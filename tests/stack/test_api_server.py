"""`vqclip run`'s temporary Prefect API server: used only when no API is configured, never left behind."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.processes import processes_with
from tests.helpers.runs import TINY_RUN
from vqclip.stack import api_server
from vqclip.stack.api_server import ApiServerError, TemporaryApiServer, temporary_api_server
from vqclip.stack.processes import free_ports


def server_processes(marker: str) -> list[int]:
    return [pid for pid, command in processes_with(marker).items() if b"uvicorn" in command]


def started_at(pid: int) -> float:
    """When a process started, in seconds since boot (/proc/PID/stat's field 22)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def wait_until(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def start_run(tmp_path: Path, env: dict, steps: int) -> subprocess.Popen:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(TINY_RUN.format(steps=steps, n=1))
    command = [sys.executable, "-m", "vqclip.cli", "run", str(manifest), "--storage", str(tmp_path / "out")]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_run_starts_its_own_server_and_stops_it(tmp_path, unconfigured_env):
    env, marker = unconfigured_env
    process = start_run(tmp_path, env, steps=2)
    try:
        wait_until(lambda: server_processes(marker) or process.poll() is not None, 60, "no server was started")
        (server,) = server_processes(marker)
        # Prefect's own temporary server would start only when the flow is called, after torch and
        # the models have loaded (4 s and more here); this one starts before those imports.
        assert started_at(server) - started_at(process.pid) < 2.5
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr
    assert "all 1 images done" in stdout
    assert processes_with(marker) == {}, "the temporary server outlived the run"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal and /proc are Linux's")
def test_a_killed_run_takes_its_server_with_it(tmp_path, unconfigured_env):
    env, marker = unconfigured_env
    process = start_run(tmp_path, env, steps=500)
    try:
        wait_until(lambda: server_processes(marker), 60, "no server was started")
        process.kill()  # the CLI alone, as the OOM killer would: no chance to stop its server
        process.wait()
        wait_until(lambda: processes_with(marker) == {}, 30, "the server outlived its killed run")
    finally:
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_server_that_loses_its_port_starts_on_another(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy])
        monkeypatch.setattr(api_server, "free_ports", lambda count: [next(ports, None) or free_ports(1)[0]])
        server = TemporaryApiServer()
        try:
            url = server.wait_ready(60)
        finally:
            server.stop()
    assert server.port != busy and url == f"http://127.0.0.1:{server.port}/api"


def rows(database: Path) -> dict[str, int]:
    """How many flows, flow runs, task runs and artifacts a Prefect database holds (none before it exists)."""
    tables = ("flow", "flow_run", "task_run", "artifact")
    if not database.exists():
        return dict.fromkeys(tables, 0)
    with sqlite3.connect(database) as db:
        return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in tables}


@pytest.mark.slow
def test_a_new_server_is_warmed_up_with_reads_that_add_nothing(monkeypatch):
    # The server's first request and first query cost it about 0.7 s: paid on its own core while the run
    # imports torch, not on the run's path. It requires an auth string here: the reads carry the client's.
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "vqclip:warm-up")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "vqclip:warm-up")
    database = Path(os.environ["PREFECT_HOME"]) / "prefect.db"
    before = rows(database)
    server = TemporaryApiServer()
    try:
        server.wait_ready(90)
        assert server.warmed.wait(60), "the warm-up's reads were not all answered"
    finally:
        server.stop()
    assert rows(database) == before


def test_a_server_that_cannot_start_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{tmp_path}/missing/dir/prefect.db")
    server = TemporaryApiServer()  # not temporary_api_server(): the session's API may be configured already
    try:
        with pytest.raises(ApiServerError, match="exited with status 3: .*unable to open database file"):
            server.wait_ready(60)
    finally:
        server.stop()


def test_no_server_is_started_when_an_api_is_configured(monkeypatch, prefect_api):
    with temporary_api_server() as server:
        assert server is None, "Prefect's settings name an API (the session's test server)"
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    with temporary_api_server() as server:
        assert server is None
