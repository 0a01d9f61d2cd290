"""A web server on 127.0.0.1, started by a test, that serves synthetic files the way the real hosts do.

Routes map a path (without the query) to bytes (a file), or to a ``Page``/``Drive``/``Cut``/``Hold`` that imitates
what the tests need: an HTML page, Google Drive's confirmation and quota pages, a connection dropped midway, a
transfer paused until the test has killed the client. ``requests`` lists every path asked for.
"""

from __future__ import annotations

import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

QUOTA_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
    "<p class=\"uc-error-caption\">Sorry, you can't view or download this file at this time.</p>"
    "<p class=\"uc-error-subcaption\">Too many users have viewed or downloaded this file recently. Please try "
    "accessing the file again later.</p></body></html>"
)
SCAN_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
    "<p>Google Drive can't scan this file for viruses.</p>"
    '<form id="download-form" action="{action}" method="get">'
    '<input type="submit" id="uc-download-link" value="Download anyway"/>'
    '<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">'
    '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="5f1e"></form>'
    "</body></html>"
)


@dataclass
class Page:
    """An HTML page (served as text/html)."""

    html: str


@dataclass
class Drive:
    """Google Drive by file id: ``/uc?export=download&id=ID`` answers with the virus-scan page of a large file,
    whose form confirms at ``/download``; ``quota`` ids answer with the quota page instead."""

    files: dict[str, bytes]
    quota: set[str] = field(default_factory=set)


@dataclass
class Cut:
    """A file whose connection drops after ``after`` bytes, though Content-Length announced all of them."""

    data: bytes
    after: int


@dataclass
class Hold:
    """A file sent up to ``after`` bytes, then held (``sent`` is set) until ``release`` is set; then dropped."""

    data: bytes
    after: int
    sent: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def _send(self, data: bytes, kind: str = "application/octet-stream", length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        if kind != "text/html":
            self.send_header("Content-Disposition", 'attachment; filename="file"')
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        parsed = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        self.server.requests.append(self.path)
        route = self.server.routes.get(parsed.path)
        if route is None and parsed.path == "/download":  # Drive's confirmation target
            drive = next((r for r in self.server.routes.values() if isinstance(r, Drive)), None)
            if drive and query.get("confirm") == "t" and query.get("id") in drive.files:
                return self._send(drive.files[query["id"]])
        if route is None:
            self.send_error(404)
        elif isinstance(route, bytes):
            self._send(route)
        elif isinstance(route, Page):
            self._send(route.html.encode(), "text/html")
        elif isinstance(route, Drive):
            file_id = query.get("id", "")
            if file_id in route.quota:
                self._send(QUOTA_PAGE.encode(), "text/html")
            elif file_id in route.files:
                self._send(SCAN_PAGE.format(action="/download", id=file_id).encode(), "text/html")
            else:
                self.send_error(404)
        elif isinstance(route, Cut):
            self._send(route.data[: route.after], length=len(route.data))
        elif isinstance(route, Hold):
            self._send(route.data[: route.after], length=len(route.data))
            self.wfile.flush()
            route.sent.set()
            route.release.wait(timeout=60)


class LocalServer:
    """The running server: ``url(path)``, its ``routes`` (editable while it runs) and the ``requests`` it saw."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes = {}
        self.httpd.requests = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def routes(self) -> dict:
        return self.httpd.routes

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        for route in self.routes.values():
            if isinstance(route, Hold):
                route.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
