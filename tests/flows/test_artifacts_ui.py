"""Pictures where a user looks: a finished batch run's artifacts in the Prefect UI draw their thumbnails (local
folder and S3 store), and `vqclip serve` shows an S3 run's gallery, images and sidecars in Chromium."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.batch import batch_generate
from tests.helpers.chromium import CHROMIUM, Browser
from vqclip.browse import make_server
from vqclip.config import get_config
from vqclip.media.png import decode_image
from vqclip.run import layout
from vqclip.run.report import LABEL
from vqclip.stack.seaweedfs import free_ports
from vqclip.storage import ObjectStore, open_store

# Slow: a Prefect server with its UI, Chromium and two batch runs (2 minutes on a busy 2-core machine).
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")]

HOSTILE = "<img src=x onerror=alert(1)> & <b>a fox</b> *sea* [link](x)"
MANIFEST = f"""\
name: pictures
defaults: {{preset: tiny, width: 64, height: 64, steps: 3, cutouts: 4, n: 2}}
prompts:
  - {{id: fox, text: {json.dumps(HOSTILE)}}}
  - {{id: sea, text: a blue sea}}
"""
ITEMS, PROMPTS = 4, 2
SERVER_START_S = 120
DRAW_TIMEOUT_S = 60


@dataclass
class FinishedRun:
    """A completed batch run: its flow run, its store and, when one serves the store, the browse URL."""

    flow_run_id: UUID
    run_id: str
    store: ObjectStore
    browse_url: str | None


@pytest.fixture(scope="module")
def prefect_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server with its UI (the test harness's has none) on a free port; this module's flows report to it."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-ui")
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_UI_API_URL": f"{url}/api",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    }
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services", "--analytics-off"]
    with open(home / "server.log", "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not _answers(f"{url}/api/health"):
            assert server.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        with temporary_settings(updates={PREFECT_API_URL: f"{url}/api"}):
            yield url
            # Send the queued logs and events while the server is up: left queued, they would wait for it at exit.
            APILogWorker.drain_all()
            EventsWorker.drain_all()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chromium = Browser(tmp_path_factory.mktemp("chromium"))
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def _run(tmp: Path, storage: str, browse_url: str | None) -> FinishedRun:
    """One batch run of MANIFEST in this process, with VQCLIP_BROWSE_URL as given."""
    manifest = tmp / "pictures.yaml"
    manifest.write_text(MANIFEST)
    with pytest.MonkeyPatch.context() as monkeypatch:
        if browse_url:
            monkeypatch.setenv("VQCLIP_BROWSE_URL", browse_url)
        else:
            monkeypatch.delenv("VQCLIP_BROWSE_URL", raising=False)
        get_config.cache_clear()
        state = batch_generate(manifest=str(manifest), storage=storage, run_id="pictures", return_state=True)
    get_config.cache_clear()
    assert state.is_completed(), state.message
    return FinishedRun(state.state_details.flow_run_id, "pictures", open_store(storage), browse_url)


@pytest.fixture(scope="module")
def local_run(prefect_ui: str, tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """A run into a local folder, with no browse server configured."""
    tmp = tmp_path_factory.mktemp("local-run")
    return _run(tmp, str(tmp / "out"), None)


@pytest.fixture(scope="module")
def s3_run(prefect_ui: str, module_s3_bucket: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedRun]:  # noqa: F811
    """A run into the S3 store while `vqclip serve` serves that store (and VQCLIP_BROWSE_URL names it)."""
    server = make_server(open_store(module_s3_bucket), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield _run(tmp_path_factory.mktemp("s3-run"), module_s3_bucket, server.url)
    finally:
        server.shutdown()
        server.server_close()


def artifacts(run: FinishedRun) -> dict[str, object]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.flow_run_id])))
    return {a.type: a for a in found}


def drawn_images(browser: Browser, url: str, expected: int, sources: str) -> list[dict]:
    """Open `url` and wait until `expected` images whose src starts with `sources` are decoded; return every image."""
    browser.open(url, lambda page: True)
    deadline = time.monotonic() + DRAW_TIMEOUT_S
    while True:
        images = browser.images()
        drawn = [i for i in images if i["src"].startswith(sources) and i["complete"] and i["naturalWidth"] > 0]
        if len(drawn) >= expected or time.monotonic() > deadline:
            return images
        time.sleep(0.5)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_artifact_pages_draw_a_thumbnail_for_every_image_and_every_prompts_best(kind, request, browser, prefect_ui, screenshots):
    run: FinishedRun = request.getfixturevalue(f"{kind}_run")
    found = artifacts(run)
    table = found["table"].data if isinstance(found["table"].data, list) else json.loads(found["table"].data)
    print(f"\n{kind}: table artifact {len(json.dumps(table)) // len(table)} bytes per row, summary {len(found['markdown'].data)} bytes")
    for artifact, expected in ((found["table"], ITEMS), (found["markdown"], PROMPTS)):
        images = drawn_images(browser, f"{prefect_ui}/artifacts/artifact/{artifact.id}", expected, "data:image/jpeg")
        browser.screenshot(screenshots / f"{kind}-{artifact.type}.png")
        thumbnails = [i for i in images if i["src"].startswith("data:image/jpeg")]
        assert len(thumbnails) == expected, f"{artifact.type}: {images} (screenshot in {screenshots})"
        assert all(i["naturalWidth"] == 64 for i in thumbnails), thumbnails
        assert not [i for i in images if i["src"].endswith("/x")], "prompt text became an <img> in the UI"


def test_the_s3_runs_artifacts_link_images_that_open_in_the_browser(s3_run, browser, prefect_ui):
    table = artifacts(s3_run)["table"]
    browser.open(f"{prefect_ui}/artifacts/artifact/{table.id}", lambda page: s3_run.browse_url in page)
    links = browser.evaluate(f"[...document.querySelectorAll('a')].map(a => a.href).filter(h => h.startsWith({json.dumps(s3_run.browse_url)}))")
    images = [link for link in links if link.endswith(".png")]
    assert len(images) == ITEMS, links
    (image,) = drawn_images(browser, images[0], 1, s3_run.browse_url)
    assert image["naturalWidth"] == 64


def test_the_browse_page_of_an_s3_run_shows_its_images_and_prompts_as_text(s3_run, browser, screenshots):
    page = f"{s3_run.browse_url}/{layout.run_prefix(s3_run.run_id)}"
    images = drawn_images(browser, page, ITEMS, s3_run.browse_url)
    browser.screenshot(screenshots / "browse-s3.png")
    assert len(images) == ITEMS and all(i["naturalWidth"] == 64 for i in images), images
    headings = browser.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
    assert f"fox: {HOSTILE}" in headings, headings
    assert browser.evaluate("document.querySelectorAll('b, [onerror]').length") == 0


def test_a_sidecar_opens_as_json_and_a_key_outside_the_store_is_refused(s3_run, browser):
    (key,) = [k for k in s3_run.store.list(layout.items_prefix(s3_run.run_id)) if k.endswith(".json")][:1]
    browser.open(f"{s3_run.browse_url}/{key}", lambda page: "item_id" in page)
    assert browser.evaluate("document.contentType") == "application/json"
    assert json.loads(browser.evaluate("document.body.innerText"))["prompt"] in (HOSTILE, "a blue sea")
    host, port = s3_run.browse_url.removeprefix("http://").split(":")
    for path in ("/runs/../secret", "/runs/%2e%2e/%2e%2e/secret"):
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", path)
        assert connection.getresponse().status == 400, path
        connection.close()


def test_the_gallery_explains_the_score_and_links_sidecars_and_synthetic_contact_sheets(s3_run, browser):
    browser.open(f"{s3_run.browse_url}/{layout.run_prefix(s3_run.run_id)}", lambda page: "CLIPScore" in page)
    assert "CLIPScore: 100 x the cosine similarity" in browser.evaluate("document.body.innerText")
    links = browser.evaluate("[...document.querySelectorAll('a')].map(a => a.href)")
    base = f"{s3_run.browse_url}/{layout.items_prefix(s3_run.run_id)}"
    assert len([link for link in links if link.startswith(base) and link.endswith(".json")]) == ITEMS, links
    sheets = [link for link in links if "/sheets/" in link]
    assert sorted(sheets) == [f"{s3_run.browse_url}/{layout.sheet_key(s3_run.run_id, p)}" for p in ("fox", "sea")]
    (sheet,) = drawn_images(browser, sheets[0], 1, s3_run.browse_url)
    assert sheet["naturalWidth"] > 0
    pixels = decode_image(s3_run.store.get_bytes(layout.sheet_key(s3_run.run_id, "fox")))
    red, green, blue = pixels.getpixel((pixels.width - 2, LABEL + 2))  # the band under the title
    assert red > 150 and green < 50 and blue < 50, "no 'synthetic (untrained models)' band on the contact sheet"
