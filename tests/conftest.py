"""Test session setup: private PREFECT_HOME and model cache, no telemetry, shared fixtures."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="vqclip-tests-"))
os.environ.update(
    {
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(_SESSION_DIR / "prefect"),
        # Prefect's 20 s wait for its ephemeral API server runs out on a loaded 2-core machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "VQCLIP_CACHE_DIR": str(_SESSION_DIR / "cache"),
    }
)
# Under pytest-xdist each worker (and each process it starts) gets its share of the cores: torch's
# default of a thread per core in every worker oversubscribes them, and its threads then wait on each
# other (on 2 busy cores a 4-item batch took 100 s with 2 threads, 7-15 s with 1).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

from tests.helpers.manifests import CAT, DOG  # noqa: E402
from tests.helpers.runs import MANIFEST  # noqa: E402

pytest_plugins = ["tests.helpers.s3", "tests.ordering"]


@pytest.fixture(scope="session")
def tiny_models():
    """The tiny preset's models on the CPU, loaded once per session."""
    from vqclip.models.loader import load_models

    return load_models("tiny", device="cpu")


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """Fresh runtime settings with a private model cache."""
    from vqclip.config import Config, get_config

    monkeypatch.setenv("VQCLIP_CACHE_DIR", str(tmp_path / "cache"))
    get_config.cache_clear()
    yield Config()
    get_config.cache_clear()


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect API server (temporary database) for the whole session, stopped cleanly at its end."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def flaky_png_writes(monkeypatch):
    """The local store's first three PNG writes fail with a transient error; yields how many failures are left."""
    from vqclip.errors import TransientStorageError
    from vqclip.storage.local import LocalStore

    original, failures = LocalStore.put_bytes, {"left": 3}

    def flaky(self, key, data, content_type=None):
        if key.endswith(".png") and failures["left"]:
            failures["left"] -= 1
            raise TransientStorageError("injected: connection reset")
        return original(self, key, data, content_type)

    monkeypatch.setattr(LocalStore, "put_bytes", flaky)
    return failures


@pytest.fixture
def folder(tmp_path) -> Path:
    """A manifest folder with two images in it."""
    (tmp_path / "cat.png").write_bytes(CAT)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "dog.png").write_bytes(DOG)
    return tmp_path


@pytest.fixture
def manifest(tmp_path, prefect_api) -> Path:
    """The pipeline tests' manifest (tests/helpers/runs.py's MANIFEST) in a file, with the session's Prefect API up."""
    path = tmp_path / "batch.yaml"
    path.write_text(MANIFEST)
    return path


@pytest.fixture
def unconfigured_env():
    """The environment of a `vqclip run` with no Prefect API configured, tagged to find its processes."""
    marker = f"VQCLIP_TEST_MARKER={uuid.uuid4().hex}"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env[marker.split("=")[0]] = marker.split("=")[1]
    return env, marker
