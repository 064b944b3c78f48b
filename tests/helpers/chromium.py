"""Headless Debian chromium driven over the DevTools protocol, for tests that look at pages as a user would."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

CHROMIUM = shutil.which("chromium")
CHROMIUM_TIMEOUT_S = 90


class Browser:
    """Headless Debian chromium driven over the DevTools protocol: the UI's login lives in localStorage."""

    def __init__(self, profile: Path) -> None:
        command = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
            "--window-size=1400,1000", "--remote-debugging-port=0", "about:blank",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline, line = time.monotonic() + CHROMIUM_TIMEOUT_S, ""
        while "DevTools listening on" not in line:
            line = self.process.stderr.readline()
            assert line or self.process.poll() is None, "chromium exited before it listened"
            assert time.monotonic() < deadline, "chromium did not start its DevTools endpoint"
        port = int(re.search(r"ws://127\.0\.0\.1:(\d+)/", line).group(1))
        (page,) = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json() if t["type"] == "page"]
        from websockets.sync.client import connect

        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.sent = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.sent += 1
        self.socket.send(json.dumps({"id": self.sent, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=CHROMIUM_TIMEOUT_S))
            if message.get("id") == self.sent:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str, until: Callable[[str], bool], timeout: float = 60) -> str:
        """Load `url` and wait until `until(page HTML)` holds; return the HTML."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while True:
            page = self.evaluate("document.documentElement.outerHTML") or ""
            if until(page) or time.monotonic() > deadline:
                return page
            time.sleep(0.5)

    def images(self) -> list[dict[str, Any]]:
        """Every <img> of the page: its src, whether it has loaded, and its decoded (natural) width."""
        script = "JSON.stringify([...document.images].map(i => ({src: i.src, complete: i.complete, naturalWidth: i.naturalWidth})))"
        return json.loads(self.evaluate(script) or "[]")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.socket.close()
        self.process.kill()
        self.process.wait(10)
