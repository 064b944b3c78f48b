"""`vqclip serve`: a read-only web view of a store (folder or bucket): its runs, each run's gallery and files."""

from __future__ import annotations

import html
import logging
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

from vqclip.errors import ObjectNotFound, StorageError, VqclipError
from vqclip.run import layout
from vqclip.storage import ObjectStore, validate_key, validate_prefix

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8470
RUNS = "runs/"
_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".json": "application/json",
    ".mp4": "video/mp4",
    ".html": "text/html; charset=utf-8",
}
_TEXT = "text/plain; charset=utf-8"  # manifests (YAML, JSONL, CSV) and anything else that is text
_IMAGES = (".png", ".jpg", ".jpeg")
# No script runs on any page this server sends, stored galleries included, and nothing loads from elsewhere.
_POLICY = "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_STYLE = "<style>body{font-family:sans-serif;margin:2em}li{margin:.3em 0}img{max-width:128px;vertical-align:middle}</style>"


def browse_link(base_url: str, key: str = "") -> str:
    """The address at which `vqclip serve`, answering at `base_url`, shows the object or folder `key`."""
    return f"{base_url.rstrip('/')}/{quote(key)}"


@dataclass
class Response:
    """What the server answers to one request."""

    status: int
    content_type: str
    body: bytes
    location: str | None = None
    ranged: bool = False
    """Whether a `Range` request may get part of the body (objects: so that video players can seek)."""


class StoreView:
    """The pages and objects of a store, by request path; only keys under `runs/` are shown."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def respond(self, path: str) -> Response:
        """The answer to a GET of `path`: a page, an object, a redirect or an error page."""
        key = unquote(urlsplit(path).path)[1:]
        if key == "":
            return self._guarded(self._run_list)
        if not key.startswith(RUNS):
            return _error(HTTPStatus.NOT_FOUND, f"nothing at /{key}; runs are under /{RUNS}")
        try:
            validate_prefix(key) if key.endswith("/") else validate_key(key)
        except StorageError as exc:
            return _error(HTTPStatus.BAD_REQUEST, str(exc))
        return self._guarded(lambda: self._folder(key) if key.endswith("/") else self._object(key))

    def _guarded(self, answer: Callable[[], Response]) -> Response:
        try:
            return answer()
        except ObjectNotFound as exc:
            return _error(HTTPStatus.NOT_FOUND, str(exc))
        except VqclipError as exc:
            return _error(HTTPStatus.BAD_GATEWAY, f"the store failed: {exc}")

    def _run_list(self) -> Response:
        runs: dict[str, dict[str, int]] = {}
        for key in self.store.list(RUNS):
            run_id, _, rest = key[len(RUNS) :].partition("/")
            seen = runs.setdefault(run_id, {"images": 0, "gallery": 0})
            seen["gallery"] += rest == "gallery.html"
            seen["images"] += rest.startswith("items/") and rest.count("/") == 1 and rest.endswith(".png")
        rows = [
            f"<li><a href='{_href(RUNS + run_id + '/')}'>{html.escape(run_id)}</a>: {seen['images']} images"
            f"{'' if seen['gallery'] else ', no gallery yet (running, or stopped early)'}</li>"
            for run_id, seen in sorted(runs.items())
        ]
        body = "".join(rows) or "<li>no runs yet</li>"
        return _page(f"Runs in {self.store.url()}", f"<ul>{body}</ul>")

    def _folder(self, prefix: str) -> Response:
        gallery = _gallery_key(prefix)
        if gallery:  # a run's own folder shows its gallery, once the run has written one
            try:
                return Response(HTTPStatus.OK, _TYPES[".html"], self.store.get_bytes(gallery))
            except ObjectNotFound:
                pass
        keys = self.store.list(prefix)
        if not keys:
            return _error(HTTPStatus.NOT_FOUND, f"nothing under /{prefix}")
        children = sorted({prefix + key[len(prefix) :].split("/", 1)[0] + ("/" if "/" in key[len(prefix) :] else "") for key in keys})
        rows = [f"<li><a href='{_href(posixpath.dirname(prefix.rstrip('/')) + '/')}'>..</a></li>"]
        for child in children:
            name = html.escape(child[len(prefix) :])
            preview = f"<img src='{_href(child)}' alt='{name}'> " if child.endswith(_IMAGES) else ""
            rows.append(f"<li>{preview}<a href='{_href(child)}'>{name}</a></li>")
        return _page(f"/{prefix}", f"<ul>{''.join(rows)}</ul>")

    def _object(self, key: str) -> Response:
        try:
            data = self.store.get_bytes(key)
        except ObjectNotFound:
            if self.store.list(key + "/"):
                return Response(HTTPStatus.MOVED_PERMANENTLY, _TEXT, b"", location=_href(key + "/"))
            raise
        suffix = posixpath.splitext(key)[1].lower()
        return Response(HTTPStatus.OK, _TYPES.get(suffix, _TEXT if _is_text(data) else "application/octet-stream"), data, ranged=True)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte a single-range `Range` header asks of `size` bytes; None to send them all."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        return (max(size - int(last), 0), size - 1) if int(last) and size else None
    start, end = int(first), min(int(last) if last else size - 1, size - 1)
    return (start, end) if start <= end else None


def _gallery_key(prefix: str) -> str | None:
    """The gallery of the run whose folder `prefix` is; None when it is not a run's folder."""
    parts = prefix.rstrip("/").split("/")
    if len(parts) != 2:
        return None
    try:
        return layout.gallery_key(parts[1])
    except VqclipError:  # not a run id this project makes
        return None


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _href(key: str) -> str:
    return html.escape(quote("/" + key.lstrip("/")))


def _page(title: str, body: str) -> Response:
    text = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}</head>"
    text += f"<body><p><a href='/'>runs</a></p><h1>{html.escape(title)}</h1>{body}</body></html>"
    return Response(HTTPStatus.OK, _TYPES[".html"], text.encode())


def _error(status: HTTPStatus, message: str) -> Response:
    page = _page(f"{status.value} {status.phrase}", f"<p>{html.escape(message)}</p>")
    return Response(status, page.content_type, page.body)


class _Handler(BaseHTTPRequestHandler):
    server: BrowseServer

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self._send(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(with_body=False)

    def _send(self, with_body: bool) -> None:
        response = self.server.view.respond(self.path)
        status, body = response.status, response.body
        span = byte_range(self.headers.get("Range"), len(body)) if response.ranged else None
        if span:
            status, body = HTTPStatus.PARTIAL_CONTENT, body[span[0] : span[1] + 1]
        self.send_response(status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(body)))
        if response.ranged:
            self.send_header("Accept-Ranges", "bytes")
        if span:
            self.send_header("Content-Range", f"bytes {span[0]}-{span[1]}/{len(response.body)}")
        self.send_header("Content-Security-Policy", _POLICY)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        if response.location:
            self.send_header("Location", response.location)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        logger.info("%s %s", self.address_string(), format % args)


class BrowseServer(ThreadingHTTPServer):
    """An HTTP server that answers GET and HEAD only, from a `StoreView`."""

    daemon_threads = True

    def __init__(self, view: StoreView, host: str, port: int) -> None:
        self.view = view
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(store: ObjectStore, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> BrowseServer:
    """A read-only server for `store`, bound to `host`:`port` (0: any free port) and ready to `serve_forever`."""
    try:
        return BrowseServer(StoreView(store), host, port)
    except OSError as exc:
        raise VqclipError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another with --port or --host") from exc
