"""LocalStore: objects as files under one folder, written atomically."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from vqclip.errors import ObjectNotFound, StorageError, TransientStorageError
from vqclip.storage.base import validate_key, validate_prefix

logger = logging.getLogger(__name__)

# Files in flight (temp writes, claims being moved) carry this prefix; list() hides them.
TEMP_PREFIX = ".vqclip-tmp-"


class LocalStore:
    """An object store in a local (or mounted) folder; the default when no S3 is configured.

    The operating system's I/O failures are transient: a mounted folder comes back, a full disk is freed.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Store `data` under `key` atomically (the content type is not kept on disk)."""
        self._write(key, lambda out: out.write(data))

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str | None = None) -> None:
        """Copy the file at `path` under `key` atomically."""
        self._path(key)  # a bad key is the caller's first problem, before any missing source
        try:
            src = open(path, "rb")
        except OSError as exc:
            raise StorageError(f"cannot read {path} to store it as {key!r}: {exc.strerror}") from exc
        with src:
            self._write(key, lambda out: shutil.copyfileobj(src, out, 1 << 20))

    def get_bytes(self, key: str) -> bytes:
        """The object under `key`; `ObjectNotFound` when there is none."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in {self.uri}") from None
        except OSError as exc:
            raise TransientStorageError(f"cannot read {path}: {exc.strerror}") from exc

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        """The size in bytes of the object under `key`; `ObjectNotFound` when there is none."""
        path = self._path(key)
        try:
            found = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in {self.uri}") from None
        except OSError as exc:
            raise TransientStorageError(f"cannot read {path}: {exc.strerror}") from exc
        if not stat.S_ISREG(found.st_mode):
            raise ObjectNotFound(f"no object {key!r} in {self.uri}")
        return found.st_size

    def list(self, prefix: str = "") -> list[str]:
        """Every key that starts with `prefix`, at any depth, sorted."""
        validate_prefix(prefix)
        top = self.root / prefix.rpartition("/")[0]
        keys = []
        for folder, _, files in os.walk(top):
            relative = Path(folder).relative_to(self.root).as_posix()
            base = "" if relative == "." else relative + "/"
            keys += [base + name for name in files if not name.startswith(TEMP_PREFIX) and (base + name).startswith(prefix)]
        return sorted(keys)

    def delete(self, key: str) -> None:
        """Remove the object under `key`; a missing object is not an error."""
        # Empty parent folders stay: removing them could race a concurrent write into them.
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except NotADirectoryError:
            pass
        except OSError as exc:
            raise TransientStorageError(f"cannot delete {path}: {exc.strerror}") from exc

    def claim(self, src_key: str, dst_key: str) -> bool:
        """Move `src_key` to `dst_key` unless another caller got the source first or `dst_key` exists."""
        return self._move(self._path(src_key), src_key, dst_key)

    def evict(self, listed_key: str, dst_key: str) -> bool:
        """Move a listed object, whatever its key, to `dst_key`; False if another caller moved it first."""
        parts = listed_key.split("/")
        # list() only returns names found under the root; refuse anything that could point elsewhere.
        if not listed_key or listed_key.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise StorageError(f"object key {listed_key!r} cannot name a file under {self.root}")
        return self._move(self.root.joinpath(*parts), listed_key, dst_key)

    def _move(self, src: Path, src_key: str, dst_key: str) -> bool:
        dst = self._path(dst_key)
        if src == dst:
            raise StorageError(f"cannot claim {src_key!r} onto itself; pick a different destination key")
        held = src.with_name(f"{TEMP_PREFIX}claim-{uuid.uuid4().hex}")
        try:
            # rename is atomic: of all concurrent claimers exactly one moves the source away.
            os.rename(src, held)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise TransientStorageError(f"cannot claim {src}: {exc.strerror}") from exc
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            # link, unlike rename, refuses to replace an earlier claim under the same key.
            os.link(held, dst)
        except FileExistsError:
            os.rename(held, src)
            logger.info("not claiming %s: %s already exists", src_key, dst_key)
            return False
        except OSError as exc:
            os.rename(held, src)
            raise TransientStorageError(f"cannot claim {src} as {dst}: {exc.strerror}") from exc
        os.unlink(held)
        return True

    def url(self, key: str = "") -> str:
        """The absolute file path of `key` (or of a prefix such as 'runs/<id>/')."""
        validate_prefix(key)
        return str(self.root / key) + ("/" if key.endswith("/") else "")

    def _path(self, key: str) -> Path:
        validate_key(key)
        if key.rpartition("/")[2].startswith(TEMP_PREFIX):
            raise StorageError(f"object key {key!r} is not allowed: names starting with {TEMP_PREFIX!r} are reserved")
        return self.root / key

    def _write(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        path = self._path(key)
        temp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL on a fresh name: no other writer shares this file; 0o666 lets the umask decide.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise TransientStorageError(f"cannot write {path}: {exc.strerror}; check that {self.root} is a writable folder") from exc
        try:
            with os.fdopen(fd, "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise TransientStorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; some filesystems cannot open folders, which is fine.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
