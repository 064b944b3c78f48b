"""The one retry policy: transient faults are tried again, by the engine and by Prefect; nothing else is."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings

from tasks import planning
from vqclip.errors import (
    GenerationError,
    Interrupted,
    ManifestError,
    ObjectNotFound,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
    VqclipError,
)
from vqclip.retry import is_permanent, is_transient

MANIFEST = "defaults: {preset: tiny, width: 64, height: 64, steps: 2, cutouts: 2}\nprompts:\n  - {id: fox, text: a red fox}\n"


@pytest.mark.parametrize(
    "error, transient, permanent",
    [
        (TransientStorageError("connection reset"), True, False),
        (ConnectionResetError("from a library"), True, False),
        (VqclipError("run id 'a/b' is not allowed"), False, True),
        (ObjectNotFound("no object 'manifests/x.yaml'"), False, True),
        (StorageError("object key '../x' is not allowed"), False, True),
        (PermanentStorageError("AccessDenied"), False, True),
        (ManifestError("m.yaml:2: bad field"), False, True),
        (GenerationError("size is not a multiple of 16"), False, True),
        (Interrupted("stopped by SIGTERM"), False, False),
        (KeyboardInterrupt(), False, False),
    ],
)
def test_errors_say_whether_a_retry_can_fix_them(error, transient, permanent):
    assert is_transient(error) is transient
    assert is_permanent(error) is permanent


@pytest.fixture
def attempts(monkeypatch, prefect_api) -> Iterator[list[str]]:
    """The manifests prepare-run tried to read, one per attempt (first tries and Prefect's retries)."""
    tried: list[str] = []
    original = planning.read_manifest_source

    def counting(reference, store=None):
        tried.append(reference)
        return original(reference, store)

    monkeypatch.setattr(planning, "read_manifest_source", counting)
    # The task runs outside a flow here: its logs have no flow run to go to, and that is fine.
    with temporary_settings(updates={PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):
        yield tried


def prepare(manifest: str, storage: str, run_id: str | None):
    return planning.prepare_run.with_options(retry_delay_seconds=0)(manifest, storage, run_id, None, return_state=True)


def test_a_missing_manifest_is_not_retried(attempts, tmp_path):
    state = prepare(str(tmp_path / "missing.yaml"), str(tmp_path / "out"), None)
    assert state.is_failed() and "does not exist" in state.message
    assert len(attempts) == 1


def test_a_bad_run_id_is_not_retried(attempts, tmp_path):
    (tmp_path / "m.yaml").write_text(MANIFEST)
    state = prepare(str(tmp_path / "m.yaml"), str(tmp_path / "out"), "no/slashes")
    assert state.is_failed() and "run id" in state.message
    assert len(attempts) == 1


def test_a_transient_storage_error_is_retried(attempts, tmp_path, monkeypatch):
    (tmp_path / "m.yaml").write_text(MANIFEST)
    counting = planning.read_manifest_source

    def down_once(reference, store=None):
        if not attempts:
            attempts.append(reference)
            raise TransientStorageError("injected: S3 endpoint did not answer")
        return counting(reference, store)

    monkeypatch.setattr(planning, "read_manifest_source", down_once)
    state = prepare(str(tmp_path / "m.yaml"), str(tmp_path / "out"), "healed")
    assert state.is_completed(), state.message
    assert len(attempts) == 2
