"""ObjectStore behaviour, checked on a local folder and on a real SeaweedFS S3 server."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from vqclip.config import Config
from vqclip.errors import ObjectNotFound, PermanentStorageError, StorageError
from vqclip.retry import is_transient
from vqclip.stack.seaweedfs import SeaweedServer, free_ports
from vqclip.storage import LocalStore, ObjectStore, S3Store, open_store
from vqclip.storage import local as local_module
from vqclip.storage.local import TEMP_PREFIX

BAD_KEYS = ["../x", "/abs", "a//b", "a\\b", "", "a/../b", "a/./b", "a/", "tab\there", "nul\x00"]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same tests on a LocalStore and on an S3Store backed by SeaweedFS."""
    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    return open_store(request.getfixturevalue("s3_bucket"), Config())


def _leftover_temp_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.name.startswith(TEMP_PREFIX)]


def test_round_trip_bytes(store: ObjectStore) -> None:
    store.put_bytes("runs/r1/index.json", b'{"a": 1}', content_type="application/json")
    assert store.get_bytes("runs/r1/index.json") == b'{"a": 1}'
    store.put_bytes("runs/r1/index.json", b"")
    assert store.get_bytes("runs/r1/index.json") == b""


def test_put_file_large(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(9 * 1024 * 1024 + 123)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    store.put_file("runs/r1/big.bin", source)
    assert store.get_bytes("runs/r1/big.bin") == data


def test_s3_put_file_above_threshold_is_multipart(s3_bucket: str, seaweedfs: SeaweedServer, tmp_path: Path) -> None:
    store = open_store(s3_bucket, Config())
    source = tmp_path / "big.png"
    source.write_bytes(os.urandom(9 * 1024 * 1024))
    store.put_file("big.png", source)
    head = seaweedfs.client().head_object(Bucket=store.bucket, Key=store.prefix + "big.png")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart ETag names its part count
    assert head["ContentType"] == "image/png"


def test_list_is_recursive_sorted_and_by_prefix(store: ObjectStore) -> None:
    keys = ["runs/r1/items/b.png", "runs/r10/index.json", "runs/r1/index.json", "manifests/inbox/x.yaml", "runs/r1/items/a.png"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert store.list("runs/r1/") == ["runs/r1/index.json", "runs/r1/items/a.png", "runs/r1/items/b.png"]
    assert store.list("runs/r1") == ["runs/r1/index.json", "runs/r1/items/a.png", "runs/r1/items/b.png", "runs/r10/index.json"]
    assert store.list("runs/r1/items/a") == ["runs/r1/items/a.png"]
    assert store.list() == sorted(keys)
    assert store.list("nothing/") == []


def test_exists_and_delete(store: ObjectStore) -> None:
    assert not store.exists("a/b.txt")
    store.put_bytes("a/b.txt", b"x")
    assert store.exists("a/b.txt")
    assert not store.exists("a")  # a prefix is not an object
    store.delete("a/b.txt")
    assert not store.exists("a/b.txt")
    store.delete("a/b.txt")  # deleting twice is fine


def test_missing_key_raises_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match="nope/missing.json"):
        store.get_bytes("nope/missing.json")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_rejected_by_every_method(store: ObjectStore, key: str, tmp_path: Path) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(b"x")
    calls = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_file(key, source),
        lambda: store.get_bytes(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.claim(key, "ok/dst"),
        lambda: store.claim("ok/src", key),
    ]
    if key not in ("", "a/"):  # valid as prefixes
        calls += [lambda: store.list(key), lambda: store.url(key)]
    for call in calls:
        with pytest.raises(StorageError, match="not allowed|empty"):
            call()


def test_claim_moves_the_object_once(store: ObjectStore) -> None:
    store.put_bytes("manifests/inbox/a.yaml", b"prompts: []", content_type="application/yaml")
    assert store.claim("manifests/inbox/a.yaml", "manifests/claimed/run-1.yaml")
    assert store.get_bytes("manifests/claimed/run-1.yaml") == b"prompts: []"
    assert not store.exists("manifests/inbox/a.yaml")
    assert not store.claim("manifests/inbox/a.yaml", "manifests/claimed/run-2.yaml")
    assert store.list("manifests/") == ["manifests/claimed/run-1.yaml"]


def test_claim_never_replaces_an_earlier_claim(store: ObjectStore) -> None:
    store.put_bytes("manifests/claimed/run-1.yaml", b"first")
    store.put_bytes("manifests/inbox/a.yaml", b"second")
    assert not store.claim("manifests/inbox/a.yaml", "manifests/claimed/run-1.yaml")
    assert store.get_bytes("manifests/claimed/run-1.yaml") == b"first"
    assert store.get_bytes("manifests/inbox/a.yaml") == b"second"


def _race(store: ObjectStore, src: str, destinations: list[str]) -> list[bool]:
    barrier = threading.Barrier(len(destinations))
    results: list[bool] = [False] * len(destinations)
    errors: list[BaseException] = []

    def claimer(i: int) -> None:
        barrier.wait()
        try:
            results[i] = store.claim(src, destinations[i])
        except BaseException as exc:  # reported by the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(len(destinations))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return results


@pytest.mark.parametrize("same_destination", [True, False], ids=["same-dst", "own-dst"])
def test_concurrent_claimers_exactly_one_wins(store: ObjectStore, same_destination: bool) -> None:
    for round_ in range(5):
        src = f"manifests/inbox/m{round_}.yaml"
        store.put_bytes(src, f"manifest {round_}".encode())
        destinations = [f"manifests/claimed/m{round_}" + ("" if same_destination else f"-{i}") + ".yaml" for i in range(3)]
        results = _race(store, src, destinations)
        assert results.count(True) == 1, results
        winner = destinations[results.index(True)]
        assert store.get_bytes(winner) == f"manifest {round_}".encode()
        assert [d for d in set(destinations) if store.exists(d)] == [winner]
        assert not store.exists(src)


def test_url_and_uri(store: ObjectStore) -> None:
    if isinstance(store, LocalStore):
        assert store.url("runs/r1/index.json") == str(store.root / "runs" / "r1" / "index.json")
        assert store.url("runs/r1/").endswith("/runs/r1/")
        assert os.path.isabs(store.url("x"))
    else:
        assert store.url("runs/r1/index.json") == f"{store.uri}/runs/r1/index.json"
        assert store.url("runs/r1/") == f"{store.uri}/runs/r1/"
    assert open_store(store.uri, Config()).url("k") == store.url("k")


def test_open_store_picks_the_store_by_uri(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert open_store(tmp_path.as_uri()).root == tmp_path
    assert open_store((tmp_path / "with space").as_uri()).root == tmp_path / "with space"
    s3 = open_store("s3://my-bucket/some/prefix/", Config(s3_endpoint_url="http://127.0.0.1:1"))
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.uri) == ("my-bucket", "some/prefix/", "s3://my-bucket/some/prefix")
    assert s3.endpoint == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    "uri",
    ["", "   ", "gs://bucket/x", "s3:///prefix", "s3://Bad_Bucket/x", "s3://b/x?y=1", "file://otherhost/x", "s3://bucket/a/../b"],
)
def test_open_store_rejects_unknown_locations(uri: str) -> None:
    with pytest.raises(StorageError):
        open_store(uri, Config())


def test_s3_wrong_secret_fails_fast_and_permanently(
    s3_bucket: str, seaweedfs: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-" + seaweedfs.secret_key[:10]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    store = open_store(s3_bucket, Config())
    for call in (lambda: store.put_bytes("x.txt", b"x"), lambda: store.get_bytes("x.txt"), store.list, lambda: store.exists("x")):
        started = time.monotonic()
        with pytest.raises(PermanentStorageError) as caught:
            call()
        assert time.monotonic() - started < 10
        message = str(caught.value)
        assert store.bucket in message and seaweedfs.endpoint_url in message
        for secret in (wrong, seaweedfs.secret_key, seaweedfs.access_key):
            assert secret not in message


def test_s3_unknown_access_key_is_permanent(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "VQNOSUCHKEY0000")
    with pytest.raises(PermanentStorageError, match="InvalidAccessKeyId") as caught:
        open_store(s3_bucket, Config()).put_bytes("x.txt", b"x")
    assert "VQNOSUCHKEY0000" not in str(caught.value)


def test_s3_missing_credentials_are_permanent(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(PermanentStorageError, match="AWS_ACCESS_KEY_ID"):
        open_store(s3_bucket, Config()).get_bytes("x.txt")


def test_s3_missing_bucket_is_permanent(s3_bucket: str) -> None:
    store = open_store("s3://vqclip-no-such-bucket/p", Config())
    for call in (lambda: store.put_bytes("x.txt", b"x"), store.list):
        with pytest.raises(PermanentStorageError, match="vqclip-no-such-bucket.*does not exist"):
            call()


def test_s3_unreachable_endpoint_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "VQTESTKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    (port,) = free_ports(1)
    store = S3Store("some-bucket", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2, connect_timeout=1, read_timeout=1)
    started = time.monotonic()
    with pytest.raises(StorageError, match="did not answer") as caught:
        store.put_bytes("x.txt", b"x")
    assert time.monotonic() - started < 10
    assert caught.value.transient and is_transient(caught.value)


def test_s3_server_down_is_transient_and_data_survives_restart(s3_bucket: str, seaweedfs: SeaweedServer) -> None:
    settings = Config()
    open_store(s3_bucket, settings).put_bytes("kept.txt", b"still here")
    bucket, _, prefix = s3_bucket.removeprefix("s3://").partition("/")
    impatient = S3Store(bucket, prefix, endpoint_url=settings.s3_endpoint_url, max_attempts=2, connect_timeout=1, read_timeout=2)
    seaweedfs.stop()
    try:
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            impatient.get_bytes("kept.txt")
        assert time.monotonic() - started < 10
        assert caught.value.transient and is_transient(caught.value)
    finally:
        seaweedfs.start()
    assert impatient.get_bytes("kept.txt") == b"still here"


def test_local_writes_leave_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    source = tmp_path / "src.bin"
    source.write_bytes(b"y" * 1000)
    for i in range(20):
        store.put_bytes(f"a/{i}.bin", b"x" * i)
    store.put_file("b/file.bin", source)
    store.put_bytes("inbox/m.yaml", b"m")
    store.claim("inbox/m.yaml", "claimed/m.yaml")
    assert _leftover_temp_files(tmp_path) == []
    assert len(store.list("a/")) == 20


def test_local_failed_write_leaves_old_object_and_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("runs/r1/index.json", b"old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local_module.os, "fsync", disk_full)
    with pytest.raises(StorageError, match="No space left"):
        store.put_bytes("runs/r1/index.json", b"new and longer")
    with pytest.raises(StorageError):
        store.put_bytes("runs/r1/new.json", b"new")
    monkeypatch.undo()
    assert store.get_bytes("runs/r1/index.json") == b"old"
    assert not store.exists("runs/r1/new.json")
    assert store.list() == ["runs/r1/index.json"]
    assert _leftover_temp_files(tmp_path) == []


def test_local_interrupted_copy_leaves_no_partial_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "store")
    source = tmp_path / "big.bin"
    source.write_bytes(b"z" * 100_000)

    def half_then_interrupt(src, dst, length: int = 0) -> None:
        dst.write(src.read(50_000))
        raise KeyboardInterrupt

    monkeypatch.setattr(local_module.shutil, "copyfileobj", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        store.put_file("runs/r1/big.bin", source)
    assert not store.exists("runs/r1/big.bin")
    assert _leftover_temp_files(tmp_path) == []


def test_local_put_file_of_missing_source_names_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="nope.bin"):
        LocalStore(tmp_path).put_file("k.bin", tmp_path / "nope.bin")


def test_an_unfilled_deployment_template_is_not_taken_for_a_folder(tmp_path, monkeypatch):
    from vqclip.errors import StorageError
    from vqclip.storage import open_store

    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError, match="unfilled template"):
        open_store("{{ $VQCLIP_STORAGE }}")
    assert list(tmp_path.iterdir()) == []
