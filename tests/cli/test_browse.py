"""`vqclip serve` over a local folder, through real HTTP: run list, galleries, objects, and keys it refuses."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from vqclip.browse import make_server
from vqclip.run import layout
from vqclip.storage import LocalStore

RUN = "fox-run"
HOSTILE = "<script>alert(1)</script> & <b>fox</b>"


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, int]]:
    """A browse server on a free port over a store holding one finished run and one still running."""
    (tmp_path / "secret.txt").write_text("outside the store")
    store = LocalStore(tmp_path / "store")
    store.put_bytes(layout.gallery_key(RUN), b"<!doctype html><h1>the gallery</h1>")
    store.put_bytes(layout.sidecar_key(RUN, "abc"), json.dumps({"prompt": HOSTILE}).encode())
    store.put_bytes(layout.image_key(RUN, "abc"), b"\x89PNG\r\n\x1a\n")
    store.put_bytes(layout.frame_key(RUN, "abc", 10), b"\x89PNG\r\n\x1a\n")
    store.put_bytes(layout.image_key("running", "def"), b"\x89PNG\r\n\x1a\n")
    store.put_bytes(layout.INBOX + "m.yaml", b"name: not shown")
    browse = make_server(store, "127.0.0.1", 0)
    thread = threading.Thread(target=browse.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield browse.server_address[:2]
    browse.shutdown()
    browse.server_close()


def get(server: tuple[str, int], path: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw request: the path goes out exactly as written (no client-side normalising of '..')."""
    connection = http.client.HTTPConnection(*server, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_run_list_links_every_run_and_says_which_have_a_gallery(server):
    status, headers, body = get(server, "/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert f"href='/runs/{RUN}/'" in page and "href='/runs/running/'" in page
    assert "1 images, no gallery yet" in page and "m.yaml" not in page


def test_a_run_shows_its_gallery_and_a_running_run_its_files(server):
    assert get(server, f"/runs/{RUN}/")[2] == b"<!doctype html><h1>the gallery</h1>"
    status, _, body = get(server, f"/runs/{RUN}/items/abc/frames/")
    assert status == 200 and "<img src='/runs/fox-run/items/abc/frames/00010.png'" in body.decode()
    status, _, body = get(server, "/runs/running/")
    assert status == 200 and "href='/runs/running/items/'" in body.decode()
    status, headers, _ = get(server, f"/runs/{RUN}")
    assert status == 301 and headers["location"] == f"/runs/{RUN}/"


def test_objects_are_served_with_their_type_and_no_script_runs(server):
    status, headers, body = get(server, f"/runs/{RUN}/items/abc.json")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"prompt": HOSTILE}
    assert "script-src" not in headers["content-security-policy"] and "default-src 'none'" in headers["content-security-policy"]
    assert get(server, f"/runs/{RUN}/items/abc.png")[1]["content-type"] == "image/png"
    status, headers, body = get(server, f"/runs/{RUN}/items/abc.png", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == "8"


def test_a_video_player_gets_the_byte_range_it_asks_for(server):
    status, headers, body = get(server, f"/runs/{RUN}/items/abc.png", headers={"Range": "bytes=1-3"})
    assert status == 206 and body == b"PNG" and headers["content-range"] == "bytes 1-3/8"
    assert get(server, f"/runs/{RUN}/items/abc.png", headers={"Range": "bytes=-2"})[2] == b"\x1a\n"
    status, _, body = get(server, f"/runs/{RUN}/items/abc.png", headers={"Range": "bytes=50-"})
    assert status == 200 and len(body) == 8  # a range beyond the end: the whole object


@pytest.mark.parametrize(
    "path",
    ["/runs/../secret.txt", "/runs/%2e%2e/secret.txt", "/runs/fox-run/..%2f..%2f..%2fsecret.txt", "/runs/a//b", "/runs/%00x"],
)
def test_keys_that_leave_the_store_are_refused(server, path):
    status, _, body = get(server, path)
    assert status == 400 and b"outside the store" not in body


def test_only_runs_are_shown(server):
    assert get(server, "/manifests/inbox/m.yaml")[0] == 404
    assert get(server, "/runs/nothing/")[0] == 404
    assert get(server, f"/runs/{RUN}/items/nothing.png")[0] == 404


def test_vqclip_serve_prints_its_address_and_answers_there(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes(layout.image_key(RUN, "abc"), b"\x89PNG\r\n\x1a\n")
    command = [sys.executable, "-m", "vqclip.cli", "serve", "--storage", str(tmp_path), "--port", "0"]
    serve = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "300"})
    try:
        line = serve.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        status, _, body = get(("127.0.0.1", int(match.group(1))), "/")
        assert status == 200 and f"/runs/{RUN}/" in body.decode()
    finally:
        serve.terminate()
        serve.wait(10)
