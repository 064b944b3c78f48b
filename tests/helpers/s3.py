"""Pytest fixtures for a real SeaweedFS S3 server on loopback, with enforced credentials."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vqclip.config import get_config
from vqclip.stack.seaweedfs import SeaweedServer


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedServer]:
    """A SeaweedFS server for the whole test session, bound to 127.0.0.1 on free ports."""
    base = Path(tempfile.mkdtemp(prefix="vqclip-weed-"))  # short: unix socket paths live here
    server = SeaweedServer(base, access_key=f"VQTEST{uuid.uuid4().hex[:14].upper()}", secret_key=uuid.uuid4().hex)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        server.remove_stray_sockets()


@pytest.fixture
def s3_bucket(seaweedfs: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh bucket on the session's SeaweedFS; yields `s3://bucket/prefix` with credentials in the env."""
    yield from _fresh_bucket(seaweedfs, monkeypatch)


@pytest.fixture(scope="module")
def module_s3_bucket(seaweedfs: SeaweedServer) -> Iterator[str]:
    """The same, shared by the tests of one module (for a run that several tests look at)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from _fresh_bucket(seaweedfs, monkeypatch)


def _fresh_bucket(seaweedfs: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    bucket = f"vqclip-test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("VQCLIP_S3_ENDPOINT_URL", seaweedfs.endpoint_url)
    # Keep a developer's own AWS profile, token and config files out of the tests.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(seaweedfs.base / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(seaweedfs.base / "no-aws-credentials"))
    get_config.cache_clear()
    client = seaweedfs.client()
    client.create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/prefix"
    get_config.cache_clear()
    # Each bucket holds a volume of its own; dropping it keeps a long session within the volume limit.
    if seaweedfs.running:
        client.delete_bucket(Bucket=bucket)
