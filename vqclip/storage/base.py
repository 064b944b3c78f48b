"""The ObjectStore protocol every store implements, and the key rules all stores share."""

from __future__ import annotations

import os
from typing import Protocol

from vqclip.errors import StorageError

MAX_KEY_BYTES = 1024  # the S3 limit, applied to every store so keys stay portable


class ObjectStore(Protocol):
    """Keyed bytes in a folder or a bucket; keys are relative '/'-separated paths."""

    uri: str

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Store `data` under `key`, replacing any object there, all at once or not at all."""
        ...

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str | None = None) -> None:
        """Store the file at `path` under `key`; made for large objects."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The object under `key`; `ObjectNotFound` when there is none."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        ...

    def size(self, key: str) -> int:
        """The size in bytes of the object under `key`, without reading it; `ObjectNotFound` when there is none."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Every key that starts with `prefix`, at any depth, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object under `key`; a missing object is not an error."""
        ...

    def claim(self, src_key: str, dst_key: str) -> bool:
        """Move `src_key` to `dst_key` if this caller is the one that wins it; False if another did."""
        ...

    def evict(self, listed_key: str, dst_key: str) -> bool:
        """Move an object `list` returned to `dst_key` without reading it, even if the key rules refuse its key.

        For moving hostile uploads aside; False if another caller moved or removed it first.
        """
        ...

    def url(self, key: str = "") -> str:
        """Where a person finds the object or prefix `key`: a file path or an s3:// URI."""
        ...


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise `StorageError` saying why."""
    if not isinstance(key, str) or not key:
        raise StorageError(f"object key {key!r} is empty; keys are relative paths such as 'runs/<id>/index.json'")
    problem = _key_problem(key)
    if problem:
        raise StorageError(f"object key {key!r} is not allowed: {problem}")
    return key


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if it is empty or a valid key with an optional trailing '/', else raise."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def _key_problem(key: str) -> str | None:
    if key.startswith("/"):
        return "it must be relative (no leading '/')"
    if "\\" in key:
        return "use '/' between parts, not '\\'"
    if not key.isprintable():
        return "it contains control or other unprintable characters"
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        return f"it is longer than {MAX_KEY_BYTES} bytes"
    for part in key.split("/"):
        if part == "":
            return "it has an empty part ('//' or a trailing '/')"
        if part in (".", ".."):
            return f"'{part}' parts are not allowed"
    return None
