"""docker/seaweedfs-entrypoint.sh, as compose runs it (here with pip's weed): S3 works with the identity's keys,
not without, and S3's gRPC port (the one other port other containers reach) demands a client certificate."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from vqclip.stack.seaweedfs import ensure_grpc_certificates, free_admin_ports, weed_binary

ROOT = Path(__file__).resolve().parents[2]
KEY, SECRET = "vqcomposekey", "vqcomposesecret0"


@pytest.fixture
def compose_seaweedfs(tmp_path: Path):
    """The entrypoint on free loopback ports (each with its +10000 gRPC partner free), certificates made as compose's
    seaweedfs-certs service makes them; yields (S3 port, certificate folder)."""
    certs = tmp_path / "certs"
    subprocess.run([sys.executable, "-m", "vqclip.stack.seaweedfs", str(certs)], check=True, capture_output=True)
    assert not ensure_grpc_certificates(certs), "a second run keeps the certificates"
    taken: list[int] = []
    for _ in range(4):
        taken += free_admin_ports(taken)
    master, volume, filer, s3 = taken[0::2]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "WEED": weed_binary(),
           "SEAWEEDFS_DIR": str(tmp_path / "data"), "SEAWEEDFS_S3_TEMPLATE": str(ROOT / "docker" / "seaweedfs-s3.json.template"),
           "SEAWEEDFS_S3_CONFIG": str(tmp_path / "s3.json"), "SEAWEEDFS_SECURITY_DIR": str(tmp_path / "security"),
           "SEAWEEDFS_GRPC_TOML": str(certs / "grpc.toml")}
    (tmp_path / "data").mkdir()
    ports = [f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3}"]
    with open(tmp_path / "weed.log", "wb") as log:
        process = subprocess.Popen(["sh", str(ROOT / "docker" / "seaweedfs-entrypoint.sh"), *ports], env=env, cwd=tmp_path,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield s3, certs
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def client(port: int, key: str | None = KEY, secret: str | None = SECRET):
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10)
    if key is None:
        from botocore import UNSIGNED

        config = config.merge(Config(signature_version=UNSIGNED))
    return boto3.session.Session().client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                                          aws_access_key_id=key, aws_secret_access_key=secret, config=config)


def grpc_handshake(port: int, certs: Path, with_certificate: bool) -> bytes:
    """Open TLS to a gRPC port and send HTTP/2's preface; the server's first bytes (its SETTINGS frame)."""
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    if with_certificate:
        context.load_cert_chain(str(certs / "client.crt"), str(certs / "client.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        tls.settimeout(5)
        return tls.recv(16)


def test_compose_seaweedfs_serves_s3_to_its_identity_only(compose_seaweedfs):
    port, certs = compose_seaweedfs
    s3 = client(port)
    deadline = time.monotonic() + 60
    while True:
        try:
            s3.create_bucket(Bucket="vqclip")
            s3.put_object(Bucket="vqclip", Key="outputs/secret.txt", Body=b"only for the identity")
            break
        except Exception:  # not up yet
            assert time.monotonic() < deadline, "the compose SeaweedFS did not answer S3 within 60 s"
            time.sleep(0.5)
    assert s3.get_object(Bucket="vqclip", Key="outputs/secret.txt")["Body"].read() == b"only for the identity"

    anonymous, wrong = client(port, None, None), client(port, KEY, "not-the-secret")
    for other in (anonymous, wrong):
        with pytest.raises(ClientError):
            other.get_object(Bucket="vqclip", Key="outputs/secret.txt")
        with pytest.raises(ClientError):
            other.put_object(Bucket="vqclip", Key="outputs/manifests/inbox/m.yaml", Body=b"prompts: [x]")
    assert "Contents" not in s3.list_objects_v2(Bucket="vqclip", Prefix="outputs/manifests/")

    grpc = port + 10000
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|certificate required|alert"):
        grpc_handshake(grpc, certs, with_certificate=False)
    assert grpc_handshake(grpc, certs, with_certificate=True)[3:4] == b"\x04", "a SETTINGS frame from the server"
