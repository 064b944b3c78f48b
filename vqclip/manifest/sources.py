"""Where a manifest and its images come from: a local path, an object URI, or `store:KEY` in the run's store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from vqclip.errors import VqclipError
from vqclip.storage import ObjectStore, open_store

STORE_PREFIX = "store:"
SourceReader = Callable[[str], bytes]


def store_reader(store: ObjectStore) -> SourceReader:
    """A SourceReader of ``store:KEY`` image sources from `store`."""
    return lambda source: store.get_bytes(source[len(STORE_PREFIX) :])


def read_manifest_source(reference: str, store: ObjectStore | None = None) -> tuple[bytes, str, Path | None]:
    """Bytes, display name and base folder of a manifest given as a local path, an object URI (`s3://bucket/key`,
    opened as `open_store` opens its folder) or `store:KEY` in `store`."""
    if reference.startswith(STORE_PREFIX) and store is not None:
        key = reference[len(STORE_PREFIX) :]
        return store.get_bytes(key), store.url(key), None
    parts = urlsplit(reference)
    if len(parts.scheme) > 1:  # a URI (a one-letter scheme would be a Windows drive)
        if not parts.path.strip("/"):
            raise VqclipError(f"{reference}: name an object, e.g. {parts.scheme}://bucket/manifests/batch.yaml")
        folder, _, name = reference.rpartition("/")
        return open_store(folder).get_bytes(name), reference, None
    path = Path(reference)
    if not path.is_file():
        raise VqclipError(f"manifest {reference} does not exist or is not a file")
    return path.read_bytes(), str(path), path.parent.resolve()
