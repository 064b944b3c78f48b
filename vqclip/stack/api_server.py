"""A temporary Prefect API server for `vqclip run`, started before the run's heavy imports.

With no API configured, Prefect starts the same server itself when the first flow is called: it
imports its server package into the calling process (about 3 s on a 2-core machine), then waits
for the child to boot (3-5 s more), after torch and the models have already loaded. Starting the
child first, without importing Prefect here, lets its boot overlap those imports on another core.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

from vqclip.errors import VqclipError
from vqclip.stack.processes import free_ports

_STARTUP_FAILED = 3  # uvicorn's exit status when its start-up fails (a port taken, say)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Reads of the kinds a run's start makes: the server's first request pays for its first database
# session and the first query of each kind (about 0.4 s and 0.3 s here, on the run's critical path).
_WARM_UP = (("/admin/version", None), ("/flows/filter", {"limit": 1}), ("/flow_runs/filter", {"limit": 1}), ("/task_runs/filter", {"limit": 1}))
_WARM_UP_WITHIN = 120.0
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


class ApiServerError(VqclipError):
    """The temporary API server did not start."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGTERM when `vqclip run` dies without stopping it.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def api_configured() -> bool:
    """Whether Prefect already has an API to talk to (PREFECT_API_URL, or Prefect's settings when loaded)."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    if "prefect.settings" in sys.modules:
        from prefect.settings import get_current_settings

        return bool(get_current_settings().api.url)
    return False


class TemporaryApiServer:
    """Prefect's API server (no UI; its database as Prefect's settings say) in a child process on a free loopback port."""

    def __init__(self) -> None:
        self._output = tempfile.TemporaryFile()
        self._stopped = False
        self._launch()
        self.warmed = threading.Event()  # set once the warm-up's reads were all answered
        threading.Thread(target=self._warm_up, name="vqclip-api-warm-up", daemon=True).start()

    def _launch(self) -> None:
        self._output.seek(0)
        self._output.truncate()
        self.port = free_ports(1)[0]
        site_packages = Path(find_spec("prefect").origin).parent.parent
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(site_packages), "--factory"]
        command += ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--log-level", "error", "--lifespan", "on"]
        # The variables Prefect gives its own temporary server: no UI, ephemeral-mode services.
        server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        self._process = subprocess.Popen(
            command,
            env={**os.environ, **server_env},
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            # A session of its own: a terminal's Ctrl-C or a service manager's SIGTERM to the run's process
            # group must not stop the server while the run still records its interrupted state there.
            start_new_session=True,
            preexec_fn=_die_with_parent if _libc is not None else None,
        )

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait_ready(self, timeout: float) -> str:
        """Wait until the server answers its health check; return its API URL.

        A server that lost its port to another process between choosing and binding it starts
        again on another.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self._process.poll()
            if status == _STARTUP_FAILED and "address already in use" in self._printed().lower():
                self._launch()
            elif status is not None:
                raise ApiServerError(f"Prefect's temporary API server exited with status {status}: {self._tail()}")
            if self._answers("/health"):
                return self.api_url
            time.sleep(0.1)
        raise ApiServerError(
            f"Prefect's temporary API server did not answer within {timeout:g} s ({self._tail()}); "
            "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL to a running server"
        )

    def _warm_up(self) -> None:
        """Once the server answers, send it the reads a run's start makes (they create nothing).

        Runs on a thread from launch: the server's first-time costs are paid on its own core while
        this process imports torch, not when the flow starts. Best effort: a read that fails is left
        to the run's own requests.
        """
        deadline = time.monotonic() + _WARM_UP_WITHIN
        while not self._answers("/health"):
            if self._stopped or time.monotonic() > deadline:
                return
            time.sleep(0.1)
        if all(self._answers(path, body, timeout=30) for path, body in _WARM_UP):
            self.warmed.set()

    def _answers(self, path: str, body: dict | None = None, timeout: float = 1.0) -> bool:
        """Whether the server answers `path` (a POST of `body` as JSON, else a GET) with success within `timeout` seconds."""
        headers = {"Content-Type": "application/json"}
        if auth := os.environ.get("PREFECT_API_AUTH_STRING"):  # the server may require one (PREFECT_SERVER_API_AUTH_STRING)
            headers["Authorization"] = f"Basic {base64.b64encode(auth.encode()).decode()}"
        data = None if body is None else json.dumps(body).encode()
        try:
            with _NO_PROXY.open(urllib.request.Request(self.api_url + path, data=data, headers=headers), timeout=timeout) as response:
                return response.status == 200
        except OSError:
            return False

    def _printed(self) -> str:
        self._output.seek(0)
        return self._output.read().decode(errors="replace")

    def _tail(self) -> str:
        """The last lines the server printed (where an error names its cause)."""
        lines = [line.strip() for line in self._printed().splitlines() if line.strip()]
        return " | ".join(lines[-3:]) or "no output"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and wait for it to exit."""
        self._stopped = True
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._output.close()


@contextmanager
def temporary_api_server() -> Iterator[TemporaryApiServer | None]:
    """A temporary server for the block, or None when Prefect has an API configured already.

    Leaving the block sends Prefect's queued events and logs to it (as Prefect's own test harness
    does), then stops it.
    """
    if api_configured():
        yield None
        return
    server = TemporaryApiServer()
    try:
        yield server
    finally:
        if "prefect.events.worker" in sys.modules:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all()
            EventsWorker.drain_all()
        server.stop()


@contextmanager
def prefect_api(server: TemporaryApiServer | None) -> Iterator[None]:
    """Point Prefect at `server` for the block, once it answers.

    Without one, or when Prefect's settings name an API (a profile, say), Prefect's settings decide.
    """
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    settings = get_current_settings()
    if server is None or settings.api.url:
        if server is not None:
            server.stop()
        yield
        return
    # No flow-run heartbeats: they let a server's zombie-run automation find crashed runs, and this server
    # lives no longer than the run; its heartbeat thread sleeps in whole seconds, which the flow's end waits out.
    url = server.wait_ready(settings.server.ephemeral.startup_timeout_seconds)
    with temporary_settings(updates={PREFECT_API_URL: url, "flows.heartbeat_frequency": None}):
        yield
