"""No port of the test SeaweedFS serves bucket data without credentials: only S3 with the identity's keys does.

Every TCP port the weed process listens on is found through /proc (no fixed list), then, without
credentials, each is asked for a known object through every HTTP path SeaweedFS offers (filer,
volume, master lookup and redirect, admin file browser, anonymous S3) and to write one.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from vqclip.stack import processes
from vqclip.stack.seaweedfs import SeaweedServer, weed_binary

TIMEOUT_S = 5.0
Response = tuple[int, dict[str, str], bytes]


def process_group(pgid: int) -> list[int]:
    """Ids of the live processes in a process group (weed and anything it spawned)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # Fields after the command name, which may hold spaces, sit after the last ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def socket_inodes(pgid: int) -> set[str]:
    """Inode numbers of the sockets the processes of a process group hold open, from /proc/<pid>/fd."""
    return set().union(*(processes.socket_inodes(pid) for pid in process_group(pgid)))


def listening_ports(pgid: int) -> set[int]:
    """TCP ports in LISTEN state held by the processes of a process group, from /proc."""
    inodes = socket_inodes(pgid)
    return {port for inode, port in processes.listening_sockets().items() if inode in inodes}


def unix_sockets(pgid: int) -> list[Path]:
    """Paths of the unix sockets held by the processes of a process group, from /proc."""
    inodes = socket_inodes(pgid)
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes and fields[7].startswith("/"):
            paths.add(Path(fields[7]))
    return sorted(paths)


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Response | None:
    """One HTTP/1.1 request to 127.0.0.1:port; None when the port does not answer in HTTP/1.1."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def follow(port: int, method: str, path: str, **kwargs: object) -> Iterator[Response]:
    """The response, then those of up to three redirects to loopback ports (as curl -L would)."""
    for _ in range(4):
        answer = request(port, method, path, **kwargs)  # type: ignore[arg-type]
        if answer is None:
            return
        yield answer
        location = answer[1].get("location")
        if answer[0] not in (301, 302, 303, 307, 308) or not location:
            return
        target = urlsplit(location if "//" in location else f"http://127.0.0.1:{port}{location}")
        if target.hostname not in ("127.0.0.1", "localhost") or target.port is None:
            return
        port, path = target.port, target.path + (f"?{target.query}" if target.query else "")


def multipart(filename: str, data: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with one file field, as `curl -F file=@name` sends it."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def weed_shell(server: SeaweedServer, commands: str, cwd: Path, timeout: float) -> str:
    """What `weed shell` prints for commands, run in cwd (whose security.toml, if any, gives its gRPC certificate)."""
    p = server.ports
    args = [weed_binary(), "shell", f"-master=127.0.0.1:{p['master']}.{p['master_grpc']}", f"-filer=127.0.0.1:{p['filer']}.{p['filer_grpc']}"]
    try:
        # HOME too: weed also reads ~/.seaweedfs/security.toml.
        done = subprocess.run(args, input=commands, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                              env={**os.environ, "HOME": str(cwd)})
    except subprocess.TimeoutExpired as exc:
        return f"{exc.stdout or ''}{exc.stderr or ''}"
    return done.stdout + done.stderr


def chunk_fids(server: SeaweedServer, bucket: str, key: str) -> list[str]:
    """Volume file ids of an object's chunks, through the trusted route: weed shell with the server's certificates."""
    return re.findall(r'"fileId":\s*"([^"]+)"', weed_shell(server, f"fs.meta.cat /buckets/{bucket}/{key}\n", server.base, 60))


def wait_listening(server: SeaweedServer, timeout: float = 20.0) -> set[int]:
    """The weed process's listening ports, once all it was told to open are among them (admin starts last)."""
    deadline = time.monotonic() + timeout
    while not set(server.ports.values()) <= (ports := listening_ports(server.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return ports


@pytest.fixture
def bucket(seaweedfs: SeaweedServer) -> Iterator[str]:
    """A fresh bucket on the session's SeaweedFS, emptied and removed afterwards."""
    name = f"vqclip-sec-{uuid.uuid4().hex[:12]}"
    client = seaweedfs.client()
    client.create_bucket(Bucket=name)
    yield name
    if seaweedfs.running:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)


def test_only_s3_with_credentials_reaches_bucket_data(seaweedfs: SeaweedServer, bucket: str) -> None:
    client = seaweedfs.client()
    secret = f"secret-{uuid.uuid4().hex}".encode() * 8
    key = "outputs/runs/r1/index.json"
    client.put_object(Bucket=bucket, Key=key, Body=secret)
    fids = chunk_fids(seaweedfs, bucket, key)
    assert fids, "the object should be stored in at least one volume chunk"

    ports = wait_listening(seaweedfs)
    assert set(seaweedfs.ports.values()) <= ports, f"listening: {sorted(ports)}, configured: {seaweedfs.ports}"

    leaks = []
    for port in sorted(ports):
        reads = [("GET", f"/buckets/{bucket}/{quote(key)}"), ("GET", f"/{bucket}/{quote(key)}"),
                 ("GET", f"/api/files/download?path=/buckets/{bucket}/{quote(key)}"),
                 ("GET", f"/api/files/view?path=/buckets/{bucket}/{quote(key)}")]
        for fid in fids:
            reads += [("GET", f"/{fid}"), ("GET", f"/{fid.replace(',', '/')}")]
            lookup = request(port, "GET", f"/dir/lookup?fileId={fid}&read=yes")
            if lookup and lookup[0] == 200 and lookup[2].startswith(b"{"):
                # The master's answer may carry a read token for the volume servers it names.
                auth = {"Authorization": lookup[1]["authorization"]} if "authorization" in lookup[1] else {}
                for location in json.loads(lookup[2]).get("locations", []):
                    volume_port = int(location["url"].rsplit(":", 1)[1])
                    for answer in follow(volume_port, "GET", f"/{fid}", headers=auth):
                        if secret in answer[2]:
                            leaks.append(f"read via master {port} /dir/lookup, then volume {volume_port}")
        for method, path in reads:
            for answer in follow(port, method, path):
                if secret in answer[2]:
                    leaks.append(f"read on port {port}: {method} {path} -> {answer[0]}")

        written = f"written-{port}".encode()
        body, headers = multipart("m.yaml", written)
        request(port, "POST", f"/buckets/{bucket}/outputs/manifests/inbox/", body, headers)
        request(port, "POST", f"/buckets/{bucket}/outputs/manifests/inbox/p{port}.yaml", body, headers)
        request(port, "PUT", f"/buckets/{bucket}/outputs/manifests/inbox/q{port}.yaml", written)
        request(port, "PUT", f"/{bucket}/outputs/manifests/inbox/s{port}.yaml", written)
        request(port, "POST", f"/api/files/upload?path=/buckets/{bucket}/outputs/manifests/inbox", body, headers)
        for fid in fids:  # overwriting the object's own needle
            request(port, "POST", f"/{fid}", body, headers)
        assign = request(port, "GET", "/dir/assign")
        if assign and assign[0] == 200 and assign[2].startswith(b"{"):
            # A needle written this way belongs to no bucket: only the S3 listing below decides.
            grant = json.loads(assign[2])
            if grant.get("fid") and grant.get("url"):
                auth = {"Authorization": f"BEARER {grant['auth']}"} if grant.get("auth") else {}
                request(int(grant["url"].rsplit(":", 1)[1]), "POST", f"/{grant['fid']}", body, {**headers, **auth})

    listed = {item["Key"]: item for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
              for item in page.get("Contents", [])}
    leaks += [f"object written without credentials: {name}" for name in sorted(set(listed) - {key})]
    try:
        intact = client.get_object(Bucket=bucket, Key=key)["Body"].read() == secret
    except (BotoCoreError, ClientError) as exc:  # e.g. a checksum mismatch: the needle was replaced
        intact = False
        leaks.append(f"{key} unreadable after the writes: {exc}")
    if not intact:
        leaks.append(f"{key} overwritten without credentials")
    assert not leaks, "bucket data reached without credentials:\n" + "\n".join(leaks)

    client.put_object(Bucket=bucket, Key="outputs/after.txt", Body=b"still writable")
    assert client.get_object(Bucket=bucket, Key="outputs/after.txt")["Body"].read() == b"still writable"


@pytest.mark.slow
def test_grpc_without_the_servers_certificate_gets_no_entry(seaweedfs: SeaweedServer, bucket: str, tmp_path: Path) -> None:
    seaweedfs.client().put_object(Bucket=bucket, Key="k.txt", Body=b"grpc-secret")
    assert chunk_fids(seaweedfs, bucket, "k.txt"), "the trusted route should see the entry"
    # A gRPC client of SeaweedFS's own, with no certificate: it gets nothing (it hangs, or fails).
    printed = weed_shell(seaweedfs, f"fs.meta.cat /buckets/{bucket}/k.txt\nfs.ls /buckets/{bucket}\n", tmp_path, 10)
    assert "fileId" not in printed and "k.txt" not in printed, printed


def test_unix_sockets_are_the_owners_alone(seaweedfs: SeaweedServer) -> None:
    sockets = [path for path in unix_sockets(seaweedfs.pid) if path.exists()]
    assert sockets, "weed serves its filer, S3 and gRPC on unix sockets too"
    # Connecting to a unix socket needs write permission on it.
    assert not [path for path in sockets if path.stat().st_mode & 0o022], [(p, oct(p.stat().st_mode)) for p in sockets]
