"""The JSON sidecar beside a results file (``<out>.json``): the settings that made its rows and the provenance of each
run that wrote them, checked against ``schemas.ResultsSidecar`` when read.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rs_plugins.errors import ResultsFileError
from rs_plugins.schemas import ResultsSidecar, check_record

StrPath = str | os.PathLike[str]
RECORD_KEYS = ("provenance", "resumed")
"""Sidecar keys that describe runs; every other key is a setting compared on resume."""


def sidecar_path(path: StrPath) -> Path:
    """Where the settings and provenance of a results file are kept: ``<path>.json``."""
    return Path(path).with_name(Path(path).name + ".json")


def load_sidecar(path: StrPath, schema: type = ResultsSidecar, where: str = "") -> dict[str, Any] | None:
    """The sidecar of ``path`` checked against ``schema``, or None if there is none; ``ResultsFileError`` naming the
    file (after ``where``, e.g. the option) and the field if it is not JSON or a field is of the wrong kind."""
    side = sidecar_path(path)
    if not side.exists():
        return None
    prefix = f"{where}: {side}" if where else str(side)
    try:
        return check_record(json.loads(side.read_text(encoding="utf-8")), schema, prefix)
    except json.JSONDecodeError as err:
        raise ResultsFileError(f"{prefix} is not valid JSON ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ResultsFileError(f"{prefix}: cannot read it ({err})") from None


def read_sidecar(path: StrPath, *, unreadable_ok: bool = False) -> dict[str, Any] | None:
    """The settings and provenance stored next to a results file, or None if it has none (e.g. a paper repo's).

    A sidecar that is there but cannot be read (not JSON, a field of the wrong kind: ``schemas.ResultsSidecar``) is
    refused naming the file and the field; with ``unreadable_ok`` (the caller was given the settings another way)
    a warning is printed and None returned instead.
    """
    try:
        return load_sidecar(path)
    except ResultsFileError as err:
        problem = err
    if unreadable_ok:
        print(f"rs-plugins: warning: {problem}; the settings of {path} are taken from the options given instead",
              file=sys.stderr)  # fmt: skip
        return None
    msg = f"{problem}. It holds the settings of {path}, which say what its rows mean (sigma, noise, radius norm): "
    raise ResultsFileError(msg + "restore it, or move the results file away with it")


def _records(sidecar: dict[str, Any]) -> list[dict[str, Any]]:
    """The provenance of each run that wrote the file, the latest last."""
    runs = [sidecar.get("provenance"), *sidecar.get("resumed", [])]
    return [p for p in runs if isinstance(p, dict)]


def recorded(sidecar: dict[str, Any] | None, key: str) -> Any:
    """``key`` from the provenance of the latest run that recorded it (e.g. ``norm``, ``images``), else None."""
    return next((p[key] for p in reversed(_records(sidecar or {})) if key in p), None)


def planned_images(sidecar: dict[str, Any] | None) -> int | None:
    """How many images the latest run that wrote the file set out to do (its subset's size), if recorded."""
    planned = recorded(sidecar, "images")
    return planned if isinstance(planned, int) else None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check_settings(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>"))
    if keys:
        was = ", ".join(f"{k}={old.get(k, '<unset>')}" for k in keys)
        now = ", ".join(f"{k}={new.get(k, '<unset>')}" for k in keys)
        msg = f"--out {path} was written with {was}; this run has {now}. Use another --out or delete the file"
        raise ResultsFileError(msg)
