"""Weight files: cached, downloaded resumably and atomically, verified by sha256, offline-safe.

A file is in the cache exactly when its final name exists: downloads go to a `.part` file that is
renamed into place only after its checksum is checked. A sha256 not pinned in the registry is
recorded beside the file on first download and checked on every later download of the same file.

Files hosted on the Hugging Face Hub (`HubFile`) are fetched by `huggingface_hub` instead, into the
Hub's cache layout inside our cache folder (revisions, resumable `.incomplete` files, its locks);
one already in the Hub's shared cache is used from there.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from vqclip.config import Config
from vqclip.errors import ModelError
from vqclip.models.catalog import RemoteFile

log = logging.getLogger(__name__)

READ_TIMEOUT = 60.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class Wanted:
    """A remote file, the cache folder it belongs in, and the model (as `vqclip fetch-models` names it) it is part of."""

    remote: RemoteFile
    folder: Path
    model: str = field(compare=False)

    @property
    def path(self) -> Path:
        return self.folder / self.remote.filename


@dataclass(frozen=True)
class HubFile:
    """A file of a Hugging Face Hub repository at a revision, and the model it is part of."""

    repo: str
    filename: str
    folder: Path
    model: str = field(compare=False)
    revision: str = "main"

    @property
    def url(self) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo, self.filename, revision=self.revision, endpoint=_hub_endpoint())

    def cached(self) -> Path | None:
        """The file in the Hub's shared cache or in ours, else None."""
        from huggingface_hub import try_to_load_from_cache

        for cache_dir in (None, self.folder):
            found = try_to_load_from_cache(self.repo, self.filename, cache_dir=cache_dir, revision=self.revision)
            if isinstance(found, str):
                return Path(found)
        return None

    def download(self, timeout: float) -> Path:
        """Fetch the file into our cache; the metadata request (no retries) must answer within `timeout`."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_download

        get_hf_file_metadata(self.url, timeout=timeout)  # fails at once where hf_hub_download would retry
        path = hf_hub_download(
            self.repo, self.filename, revision=self.revision, cache_dir=self.folder, etag_timeout=timeout, endpoint=_hub_endpoint()
        )
        return Path(path)


def _hub_endpoint() -> str | None:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def offline(config: Config) -> bool:
    """True when the network must not be touched (VQCLIP_OFFLINE or HF_HUB_OFFLINE)."""
    return config.offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _recorded_sha(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def expected_sha256(wanted: Wanted) -> str | None:
    """The pinned sha256, else the one recorded at first download, else None."""
    if wanted.remote.sha256:
        return wanted.remote.sha256
    recorded = _recorded_sha(wanted.path)
    return recorded.read_text().strip() if recorded.exists() else None


@contextmanager
def _lock(path: Path):
    """Serialise downloads of one file across processes sharing the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _ChecksumMismatch(Exception):
    pass


_resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vqclip-dns")


def _resolves(url: str, timeout: float) -> bool:
    """Whether the URL's host resolves within `timeout` (requests' timeouts do not cover DNS)."""
    parts = urlsplit(url)
    lookup = _resolver.submit(socket.getaddrinfo, parts.hostname, parts.port or (80 if parts.scheme == "http" else 443))
    try:
        lookup.result(timeout=timeout)
    except (OSError, FutureTimeout):
        return False
    return True


def _download(url: str, wanted: Wanted, connect_timeout: float, progress: Progress) -> None:
    """Fetch `url` into the cache, resuming a `.part` file left by an earlier attempt."""
    part = wanted.path.with_name(wanted.path.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, headers=headers, stream=True, timeout=(connect_timeout, READ_TIMEOUT)) as response:
        if response.status_code == 416:
            have = 0
            part.unlink(missing_ok=True)
            return _download(url, wanted, connect_timeout, progress)
        response.raise_for_status()
        if response.status_code != 206:
            have = 0
        total = int(response.headers.get("Content-Length", 0)) + have or None
        task = progress.add_task(wanted.remote.filename, total=total, completed=have)
        with part.open("ab" if have else "wb") as handle:
            for chunk in response.iter_content(CHUNK):
                handle.write(chunk)
                progress.advance(task, len(chunk))
            handle.flush()
            os.fsync(handle.fileno())
    actual = sha256_of(part)
    expected = expected_sha256(wanted)
    if expected and actual != expected:
        part.unlink()
        raise _ChecksumMismatch(f"sha256 {actual} where {expected} was expected; the download was discarded")
    if not expected:
        _recorded_sha(wanted.path).write_text(actual + "\n")
    os.replace(part, wanted.path)


def _reason(exc: Exception) -> str:
    """A one-line cause for a failed download, without the connection pool's retry chatter."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason}"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        for marker in ("Failed to resolve", "Connection refused", "Network is unreachable", "No route to host"):
            if marker in text:
                return f"cannot connect: {marker.lower()}"
        return "cannot connect"
    return f"{type(exc).__name__}: {exc}"


Weights = Wanted | HubFile
"""A weight file the cache must hold: one we download ourselves, or one huggingface_hub fetches."""


def is_cached(file: Weights) -> bool:
    """Whether the file is in the cache already."""
    return file.path.exists() if isinstance(file, Wanted) else file.cached() is not None


def _missing_message(failed: list[tuple[Weights, list[str]]]) -> str:
    lines = ["model weights are missing from the cache and could not be downloaded:"]
    for file, reasons in failed:
        if isinstance(file, Wanted):
            lines.append(f"  {file.remote.filename}: put it at {file.path}")
            lines.extend(f"    from {url}" for url in file.remote.urls)
        else:
            lines.append(f"  {file.filename} of {file.repo}: in the Hugging Face cache (HF_HOME) or under {file.folder}")
            lines.append(f"    from {file.url}")
        lines.extend(f"    ({reason})" for reason in reasons)
    models = " ".join(dict.fromkeys(file.model for file, _ in failed))
    lines.append(
        f"On a machine with internet, run `vqclip fetch-models {models}` and copy the cache folder "
        "(VQCLIP_CACHE_DIR) here; or use `--preset tiny` for an offline smoke run."
    )
    return "\n".join(lines)


def _fetch_urls(wanted: Wanted, deadline: float, progress: Progress) -> list[str]:
    """Download `wanted` from the first of its URLs that works before `deadline`; the reasons the others failed."""
    reasons = []
    for url in wanted.remote.urls:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reasons.append(f"{url}: not tried, no time left to connect")
            continue
        if not _resolves(url, remaining):
            reasons.append(f"{url}: cannot connect: host name does not resolve")
            continue
        try:
            _download(url, wanted, deadline - time.monotonic(), progress)
            log.info("downloaded %s from %s", wanted.path, url)
            return []
        except _ChecksumMismatch as exc:
            reasons.append(f"{url}: corrupted download: {exc}")
        except (requests.RequestException, OSError) as exc:
            reasons.append(f"{url}: {_reason(exc)}")
    return reasons or ["no URL to download it from"]


def _fetch_hub(file: HubFile, deadline: float) -> list[str]:
    """Download a Hub file through huggingface_hub before `deadline`; why it failed, if it did."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return [f"{file.url}: not tried, no time left to connect"]
    if not _resolves(file.url, remaining):
        return [f"{file.url}: cannot connect: host name does not resolve"]
    try:
        path = file.download(max(deadline - time.monotonic(), 0.1))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises its own errors and its HTTP client's
        return [f"{file.url}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]
    log.info("downloaded %s from %s", path, file.url)
    return []


def ensure_files(files: list[Weights], config: Config) -> None:
    """Make sure every file is in the cache, downloading what is missing; one error names all failures.

    Reaching the hosts shares one connect budget (`settings.connect_timeout`), so an unreachable
    network fails within seconds instead of retrying.
    """
    missing = [file for file in files if not is_cached(file)]
    if not missing:
        return
    if offline(config):
        raise ModelError(_missing_message([(file, ["offline mode: the network was not tried"]) for file in missing]))
    deadline = time.monotonic() + config.connect_timeout
    failed: list[tuple[Weights, list[str]]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, transient=True) as progress:
        for file in missing:
            if isinstance(file, HubFile):
                reasons = _fetch_hub(file, deadline)
            else:
                with _lock(file.path):
                    reasons = [] if file.path.exists() else _fetch_urls(file, deadline, progress)
            if reasons:
                failed.append((file, reasons))
            else:
                deadline = time.monotonic() + config.connect_timeout
    if failed:
        raise ModelError(_missing_message(failed))
