"""Downloads on demand, with an offline switch: one small transfer routine that every download path shares.

A file is streamed into a temporary file beside its destination, its size and SHA-256 are checked, and only then
is it renamed into place (one atomic ``os.replace``), so an interrupted or refused download never leaves a file
that a later run would load as a truncated checkpoint; a rerun simply starts again. A web page served instead
of the file (Google Drive's quota page, a login page) is recognised and reported as such; Google Drive's
virus-scan page for large files is confirmed and followed, as a browser would.

The addresses live in ``rs_plugins.sources.locations``; the cache in ``home()``.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import html.parser
import http.client
import http.cookiejar
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import SourceError
from . import locations

OFFLINE_ENV = "RS_PLUGINS_OFFLINE"
HOME_ENV = "RS_PLUGINS_HOME"
OFFLINE_VARIABLES = (OFFLINE_ENV, "HF_HUB_OFFLINE")  # either switches downloads off; --offline sets both
OFFLINE_HOW = f"--offline, {OFFLINE_ENV}=1 or HF_HUB_OFFLINE=1"
CHUNK = 1 << 20
TIMEOUT = 60  # seconds without a byte before a download is given up
USER_AGENT = "rs-plugins (https://pypi.org/project/rs-plugins)"
QUOTA = re.compile(r"too many users have viewed or downloaded this file|quota exceeded|download quota", re.I)
STALE_PART = 24 * 3600  # a partial file this old (seconds) belongs to a run that died: removed by the next one


class DownloadError(SourceError):
    """A download failed or was refused (wrong size or hash, a web page instead of the file); nothing is kept."""


class DriveQuotaError(DownloadError):
    """Google Drive answered with its quota page instead of the file."""


def offline() -> bool:
    """Whether downloads are switched off: ``--offline``, ``RS_PLUGINS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``.

    Every loader that can download asks this one function, so that a run without network behaves exactly as
    before fetching existed: files already on disk (or in a cache) load, missing ones are reported.
    """
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_VARIABLES)


def go_offline() -> None:
    """Switch downloads off for this process and what it starts (``--offline``), Hugging Face's included."""
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"


def home() -> Path:
    """The cache folder: ``$RS_PLUGINS_HOME``, else ``$XDG_CACHE_HOME/rs-plugins``, else ``~/.cache/rs-plugins``."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "rs-plugins"


def drive_url(file_id: str) -> str:
    """The download address of a Google Drive file (``locations.GOOGLE_DRIVE``)."""
    return locations.GOOGLE_DRIVE.format(id=urllib.parse.quote(file_id))


_LOG: list[dict[str, Any]] = []


def fetched() -> list[dict[str, Any]]:
    """The files this process downloaded or found in the cache, with their SHA-256, for the results' provenance."""
    return [dict(record) for record in _LOG]


def forget() -> None:
    """Start a new log (each command records only its own files)."""
    _LOG.clear()


def record_file(path: Path, what: str, *, downloaded: bool = False) -> dict[str, Any]:
    """Log a file (or folder) in place, with what its download recorded (``<file>.json``); returns that record."""
    record = read_record(path) or {"path": str(path)}
    record = record | {"what": what, "path": str(path), "downloaded": downloaded}
    _LOG.append(record)
    return record


def read_record(path: Path) -> dict[str, Any] | None:
    """What the download of ``path`` recorded beside it (address, SHA-256, size, whether verified), or None."""
    try:
        return json.loads(Path(f"{path}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class _DownloadForm(html.parser.HTMLParser):
    """The confirmation form of Google Drive's virus-scan page: its action and hidden fields."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.title = ""
        self._in_form = self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "form" and found.get("id") == "download-form":
            self.action, self._in_form = found.get("action"), True
        elif tag == "input" and self._in_form and found.get("type") == "hidden" and found.get("name"):
            self.fields[found["name"]] = found.get("value", "")
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_form = self._in_form and tag != "form"
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data.strip()


def _looks_like_page(response: Any, first: bytes) -> bool:
    kind = (response.headers.get("Content-Type") or "").lower()
    return kind.startswith("text/html") or first.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html"))


def _confirmation(page: str, base: str) -> str | None:
    """The address a Drive virus-scan page confirms the download at (its form, or an older page's link)."""
    form = _DownloadForm()
    form.feed(page)
    if form.action:
        return urllib.parse.urljoin(base, form.action) + "?" + urllib.parse.urlencode(form.fields)
    link = re.search(r'href="(/uc\?export=download[^"]*confirm=[^"]+)"', page)
    return urllib.parse.urljoin(base, link[1].replace("&amp;", "&")) if link else None


def _open_file(url: str, what: str) -> tuple[Any, bytes]:
    """The response that streams the file at ``url`` (after Drive's confirmation) and its first bytes."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    opener.addheaders = [("User-Agent", USER_AGENT)]
    address = url
    for _ in range(3):
        response = opener.open(address, timeout=TIMEOUT)
        first = response.read(CHUNK)
        if not _looks_like_page(response, first):
            return response, first
        page = (first + response.read(4 * CHUNK)).decode("utf-8", "replace")
        response.close()
        if QUOTA.search(page):
            raise DriveQuotaError(
                f"{what}: Google Drive refused the download with its quota page ('too many users have viewed or "
                f"downloaded this file recently'), not the file: {url}. This is Drive's limit, not a broken file; "
                "retry in a few hours, or download it in a browser signed in to Google and place it as described "
                "in docs/zoo.md (--zoo-dir)"
            )
        follow = _confirmation(page, response.url or address)
        if follow is None:
            form = _DownloadForm()
            form.feed(page)
            title = f" ({form.title})" if form.title else ""
            raise DownloadError(f"{what}: {url} returned a web page{title} instead of the file; nothing was kept")
        address = follow
    raise DownloadError(f"{what}: {url} kept answering with confirmation pages instead of the file")


def _clean_stale_parts(dest: Path) -> None:
    for part in dest.parent.glob(f".{dest.name}.*.part"):
        try:
            if time.time() - part.stat().st_mtime > STALE_PART:
                part.unlink()
        except OSError:
            pass


@contextlib.contextmanager
def one_fetcher(dest: str | os.PathLike):
    """Hold a blocking lock on the folder of ``dest`` while fetching it: processes started together (torchrun's
    ranks) fetch it once, the others wait and then find it in place. The lock is the folder's own (no lock file is
    left beside the data), released when it closes or by the OS if the process dies. Where the file system has no
    flock each process fetches its own copy, and the atomic rename keeps the result whole."""
    folder = Path(dest).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def download(
    url: str, dest: str | os.PathLike, *, what: str, sha256: str | None = None, size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Download ``url`` to ``dest`` through a temporary file, renamed into place once complete and verified.

    Args:
        url: the address (see ``locations``; ``drive_url`` for a Google Drive id).
        dest: the file to create; its folder is created.
        what: how messages name the file, e.g. ``"--model zoo:cohen-cifar10-resnet110-0.25"``.
        sha256: the published hash; a file with another hash is refused (nothing is kept).
        size: the published size in bytes, checked the same way.
        progress: show a tqdm bar.

    Returns:
        The record written beside the file (``<dest>.json``): address, SHA-256, bytes, whether the hash was
        checked against a published one (``verified``), and the date.

    Raises:
        DownloadError: offline, a network failure, a short or oversized file, another hash, a web page.
    """
    dest = Path(dest)
    if offline():
        raise DownloadError(f"{what}: {dest} is missing and downloads are off ({OFFLINE_HOW})")
    with one_fetcher(dest):
        if dest.is_file() and Path(f"{dest}.json").is_file():  # fetched meanwhile by a process this one waited for
            return record_file(dest, what)
        return _download(url, dest, what=what, sha256=sha256, size=size, progress=progress)


def _download(url: str, dest: Path, *, what: str, sha256: str | None, size: int | None, progress: bool) -> dict:
    _clean_stale_parts(dest)
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    digest, received = hashlib.sha256(), 0
    try:
        response, chunk = _open_file(url, what)
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else size
        with response, open(part, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                                                     disable=not progress, leave=False) as bar:  # fmt: skip
            while chunk:
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                chunk = response.read(CHUNK)
            out.flush()
            os.fsync(out.fileno())
        if length and length.isdigit() and received != int(length):
            raise DownloadError(f"{what}: {url} ended after {received:,} of {int(length):,} bytes; nothing was kept")
        if size is not None and received != size:
            raise DownloadError(f"{what}: {url} sent {received:,} bytes, expected {size:,}; nothing was kept")
        found = digest.hexdigest()
        if sha256 is not None and found != sha256.lower():
            raise DownloadError(
                f"{what}: {url} has SHA-256 {found}, expected {sha256}: the file differs from the published one "
                "(damaged in transit, or replaced); nothing was kept"
            )
        os.replace(part, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise DownloadError(f"{what}: downloading {url} failed ({err}); nothing was kept, rerun to retry") from err
    finally:
        part.unlink(missing_ok=True)
    record = {"url": url, "sha256": found, "bytes": received, "verified": sha256 is not None,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    Path(f"{dest}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    _LOG.append(record | {"what": what, "path": str(dest), "downloaded": True})
    return record


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
