"""Object storage: one protocol, a local folder store and an S3 store, chosen by URI."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from urllib.request import url2pathname

from vqclip.config import Config, get_config
from vqclip.errors import StorageError
from vqclip.storage.base import ObjectStore, validate_key, validate_prefix
from vqclip.storage.local import LocalStore

if TYPE_CHECKING:
    from vqclip.storage.s3 import S3Store

__all__ = ["ObjectStore", "LocalStore", "S3Store", "open_store", "validate_key", "validate_prefix"]

_FORMS = "a folder path, file:///absolute/folder or s3://bucket/prefix"


def __getattr__(name: str) -> object:
    # boto3 and botocore take about 0.2 s to import; a run on a local folder never needs them.
    if name == "S3Store":
        from vqclip.storage.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(uri: str, config: Config | None = None) -> ObjectStore:
    """The store `uri` names: a folder or file:// URI (LocalStore), or s3://bucket/prefix (S3Store)."""
    if not uri or not uri.strip():
        raise StorageError(f"no storage location given; use {_FORMS} (VQCLIP_STORAGE)")
    if "{{" in uri:
        raise StorageError(
            f"storage location {uri!r} is an unfilled template: export the variable it names before "
            f"`prefect deploy`, or leave the parameter empty to use the worker's VQCLIP_STORAGE"
        )
    parts = urlsplit(uri)
    if not parts.scheme:
        return LocalStore(uri)
    if parts.query or parts.fragment:
        raise StorageError(f"storage location {uri!r} has a '?' or '#' part; use {_FORMS}")
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise StorageError(f"storage location {uri!r} is not a local folder URI; write it as file:///absolute/folder")
        return LocalStore(url2pathname(parts.path))
    if scheme == "s3":
        if not parts.netloc:
            raise StorageError(f"storage location {uri!r} names no bucket; write it as s3://bucket/prefix")
        from vqclip.storage.s3 import S3Store

        config = config or get_config()
        return S3Store(
            parts.netloc,
            parts.path,
            endpoint_url=config.s3_endpoint_url,
            path_style=config.s3_path_style,
        )
    raise StorageError(f"storage location {uri!r} uses the unsupported scheme {parts.scheme!r}; use {_FORMS}")
