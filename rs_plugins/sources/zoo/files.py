"""Where a zoo entry's checkpoint comes from: ``--zoo-dir`` (the authors' archive, already unpacked), the cache,
or the authors' archive, downloaded once and kept, from which the entries' checkpoints are extracted.

Each extracted checkpoint is written to a temporary file and renamed into place, with a record beside it
(``<file>.json``: the archive, its SHA-256 and whether that was checked against a published hash).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import SourceError
from .. import fetch

if TYPE_CHECKING:
    from .entry import ZooEntry

ZOO_DIR_ENV = "RS_PLUGINS_ZOO_DIR"


def zoo_dir() -> Path | None:
    """The folder ``--zoo-dir`` (``RS_PLUGINS_ZOO_DIR``) names: the authors' archive, unpacked; None if not given."""
    given = os.environ.get(ZOO_DIR_ENV)
    return Path(given).expanduser() if given else None


def cache_path(entry: ZooEntry) -> Path:
    """Where the entry's checkpoint is kept once downloaded: ``<home>/zoo/<name>/<file name>``."""
    name = Path(entry.member).name if entry.member else Path(entry.source.get("url", entry.name)).name
    return fetch.home() / "zoo" / entry.name / name


def archive_path(key: str) -> Path:
    """Where an authors' archive is kept once downloaded."""
    return fetch.home() / "zoo" / "archives" / key


def tails(member: str) -> list[str]:
    """``member`` and its tails without leading folders (a/b/c/f: a/b/c/f, b/c/f, c/f), so that --zoo-dir may name the
    archive's root or any folder inside it."""
    parts = Path(member).parts
    return [str(Path(*parts[i:])) for i in range(max(len(parts) - 1, 1))]


def in_folder(folder: Path, member: str) -> Path | None:
    """The member under ``folder`` (any tail of its path), or None."""
    return next((folder / tail for tail in tails(member) if (folder / tail).is_file()), None)


def checkpoint(entry: ZooEntry, *, what: str, progress: bool = True, siblings: tuple = ()) -> Path:
    """The entry's checkpoint on disk: from --zoo-dir, else the cache, else downloaded (unless offline).

    ``siblings``: other entries; those in the same archive are extracted in the same pass (an archive of several
    GB is read once, not once per entry).

    Raises:
        SourceError: not in --zoo-dir, not published as a download, or not cached while offline.
    """
    source = entry.source
    given = zoo_dir()
    if given is not None:
        wanted = entry.member or Path(source.get("url", "")).name  # a member of an archive, or the file at a URL
        found = in_folder(given, wanted) if wanted else None
        if found is None:
            raise SourceError(f"{what}: --zoo-dir {given} has no {wanted} (nor any tail of that path); point it at "
                              f"the unpacked archive ({source.get('holds', 'see docs/zoo.md')})")  # fmt: skip
        fetch.record_file(found, what)
        return found
    cached = cache_path(entry)
    if cached.is_file():
        fetch.record_file(cached, what)
        return cached
    if entry.archive is None:
        raise SourceError(f"{what}: the authors did not publish this model's weights (only its certification logs); "
                          "see docs/zoo.md")  # fmt: skip
    if not entry.downloadable:
        raise SourceError(
            f"{what}: the authors publish it at {source['page']} ({source['holds']}), which a program cannot "
            f"download; fetch it in a browser and give --zoo-dir FOLDER (holding {entry.member}) or "
            "--checkpoint FILE"
        )
    if fetch.offline():
        raise SourceError(f"{what}: {cached} is not in the cache and downloads are off ({fetch.OFFLINE_HOW}); "
                          "run once without --offline, or give --zoo-dir")  # fmt: skip
    url = source.get("url") or fetch.drive_url(source["drive"])
    if not entry.member:  # the download is the checkpoint itself, kept under its own name
        fetch.download(url, cached, what=what, sha256=entry.sha256 or source.get("sha256"), size=source.get("size"),
                       progress=progress)  # fmt: skip
        return cached
    archive = archive_path(entry.archive)
    if archive.is_file():
        fetch.record_file(archive, what)
    else:
        fetch.download(url, archive, what=what, sha256=source.get("sha256"), size=source.get("size"),
                       progress=progress)  # fmt: skip
    wanted = {e.member: cache_path(e) for e in siblings
              if e.archive == entry.archive and e.member and not cache_path(e).is_file()}  # fmt: skip
    left = extract(archive, {**wanted, entry.member: cached}, what=what)
    if entry.member in left:
        raise SourceError(
            f"{what}: {archive} has no {entry.member}; the archive's layout differs from the one the authors "
            "describe: unpack it and give --zoo-dir FOLDER, or --checkpoint FILE"
        )
    found = fetch.read_record(cached) or {}
    if entry.sha256 and found.get("sha256") != entry.sha256:
        cached.unlink()
        raise SourceError(f"{what}: {entry.member} has SHA-256 {found.get('sha256')}, expected {entry.sha256}: "
                          f"not the published file; removed it (delete {archive} to download it again)")  # fmt: skip
    fetch.record_file(cached, what)
    return cached


def _archive_members(archive: Path, what: str):
    """(name, open file) for each file in a tar (any compression) or zip archive, streamed in order."""
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                if info.isfile():
                    yield info.name, tar.extractfile(info)
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, zf.open(info)
    else:
        raise SourceError(f"{what}: {archive} is neither a tar nor a zip archive; delete it to download it again")


def extract(archive: Path, wanted: dict[str, Path], *, what: str) -> dict[str, Path]:
    """Copy the archive members ``wanted`` (archive path, or its end after a leading folder -> file) in one pass;
    returns those not found. Each file goes through a temporary file renamed into place, with a record beside it.
    """
    record = fetch.read_record(archive) or {}
    left = dict(wanted)
    try:
        for name, stream in _archive_members(archive, what):
            clean = name.removeprefix("./")
            match = next((m for m in left if clean == m or clean.endswith("/" + m)), None)
            if match is None:
                continue
            dest = left.pop(match)
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
            try:
                with stream, open(part, "wb") as out:
                    shutil.copyfileobj(stream, out, fetch.CHUNK)
                os.replace(part, dest)
            finally:
                part.unlink(missing_ok=True)
            about = {"archive": str(archive), "member": name, "archive_sha256": record.get("sha256"),
                     "sha256": fetch.sha256_of(dest), "verified": bool(record.get("verified"))}  # fmt: skip
            Path(f"{dest}.json").write_text(json.dumps(about, indent=1) + "\n", encoding="utf-8")
            if not left:
                break
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise SourceError(f"{what}: cannot read {archive} ({err}); delete it to download it again") from err
    return left


def cached_entry(entry: ZooEntry) -> dict[str, Any] | None:
    """What the cache holds for the entry (its record), or None."""
    path = cache_path(entry)
    return (fetch.read_record(path) or {"path": str(path)}) if path.is_file() else None
