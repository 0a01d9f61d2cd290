"""The field's results TSV: its columns and rows, reading and checking a file, and the resumable ``ResultsFile``
(one fsynced line per finished image, one writing process at a time; refuses to continue with different settings).
The JSON sidecar beside it is read and written by ``sidecars``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rs_plugins.errors import ResultsFileError
from rs_plugins.types import ABSTAIN

from .sidecars import (  # noqa: F401  (planned_images, recorded: documented here, beside the rows they describe)
    RECORD_KEYS,
    check_settings,
    planned_images,
    read_sidecar,
    recorded,
    sidecar_path,
    write_atomic,
)
from .writer_lock import WriterLock

StrPath = str | os.PathLike[str]
log = logging.getLogger(__name__)


CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "samples")
LEGACY_CERTIFY_COLUMNS = CERTIFY_COLUMNS[:-1]  # Cohen's certify.py and our files before `samples`: read only
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")
ATTACK_COLUMNS = ("idx", "label", "eps", "predict", "adv_predict", "perturbation", "time")
CONFIDENCE_COLUMNS = ("idx", "label", "counts", "time")  # rs-plugins predict-confidence: votes per class
RESULTS_COLUMNS = (CERTIFY_COLUMNS, PREDICT_COLUMNS, ATTACK_COLUMNS, CONFIDENCE_COLUMNS)
_TIME = re.compile(r"^(?:(-?\d+) days?, )?(\d+):(\d+):(\d+(?:\.\d*)?)$")
_BOOL = {"1": True, "0": False, "True": True, "False": False}


@dataclass(frozen=True)
class Row:
    """One certified (or predicted) image; ``predict`` is -1 and ``radius`` 0.0 when abstaining."""

    idx: int
    label: int
    predict: int
    radius: float
    correct: bool
    seconds: float
    samples: int | None = None  # noise samples drawn for this image; None where unknown (older files)

    @property
    def key(self) -> int:
        """What a resumed run skips: the image index."""
        return self.idx


@dataclass(frozen=True)
class AttackRow:
    """One attacked (image, eps): clean and adversarial predictions (-1: abstention) and the perturbation's norm
    in the attack's norm (0.0 when the attack returned the clean image)."""

    idx: int
    label: int
    eps: float
    predict: int
    adv_predict: int
    perturbation: float
    seconds: float

    @property
    def key(self) -> tuple[int, float]:
        """What a resumed run skips: the (image index, eps) pair."""
        return (self.idx, self.eps)

    @property
    def correct(self) -> bool:
        """The clean prediction is the label."""
        return self.predict == self.label

    @property
    def robust(self) -> bool:
        """Correct on the clean image and at the adversarial point."""
        return self.correct and self.adv_predict == self.label


@dataclass(frozen=True)
class ConfidenceRow:
    """One image's top-1 votes of the base classifier over n noisy copies, as (class, count) pairs with
    count > 0 (written sparsely, ``3:9990,5:10``: a thousand-class file stays small)."""

    idx: int
    label: int
    counts: tuple[tuple[int, int], ...]
    seconds: float

    @property
    def key(self) -> int:
        """What a resumed run skips: the image index."""
        return self.idx


def format_row(row: Row | AttackRow | ConfidenceRow, columns: Sequence[str]) -> str:
    if isinstance(row, ConfidenceRow):
        counts = ",".join(f"{c}:{n}" for c, n in row.counts)
        return f"{row.idx}\t{row.label}\t{counts}\t{datetime.timedelta(seconds=row.seconds)}\n"
    if isinstance(row, AttackRow):
        # eps as repr: the shortest text that reads back as the same float, so resumed keys match exactly
        cells = {"idx": row.idx, "label": row.label, "eps": repr(float(row.eps)), "predict": row.predict}
        cells |= {"adv_predict": row.adv_predict, "perturbation": f"{row.perturbation:.6g}"}
        cells["time"] = str(datetime.timedelta(seconds=row.seconds))
        return "\t".join(str(cells[c]) for c in columns) + "\n"
    cells = {"idx": row.idx, "label": row.label, "predict": row.predict, "correct": int(row.correct)}
    cells["samples"] = "" if row.samples is None else row.samples
    # The radius as repr, the shortest text that reads back as the same float: rounding (0.249996 to 0.2500) would
    # certify more on a re-read than was computed. The time as Cohen's certify.py writes it, e.g. 0:00:01.234567.
    cells.update(radius=repr(float(row.radius)), time=str(datetime.timedelta(seconds=row.seconds)))
    return "\t".join(str(cells[c]) for c in columns) + "\n"


def _parse_seconds(text: str) -> float:
    """Seconds from ``str(timedelta)`` (``0:00:01.234567``, ``1 day, 0:00:02``) or a plain number."""
    m = _TIME.match(text.strip())
    if not m:
        return float(text)
    days, h, mins, s = m.groups()
    return int(days or 0) * 86400 + int(h) * 3600 + int(mins) * 60 + float(s)


def _parse_row(line: str, columns: Sequence[str]) -> Row | AttackRow:
    cells = dict(zip(columns, line.split("\t"), strict=True))
    if tuple(columns) == CONFIDENCE_COLUMNS:
        pairs = tuple(tuple(int(v) for v in pair.split(":", 1)) for pair in cells["counts"].split(",") if pair)
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"counts {cells['counts']!r} are not class:count pairs")
        return ConfidenceRow(int(cells["idx"]), int(cells["label"]), pairs, _parse_seconds(cells["time"]))
    if tuple(columns) == ATTACK_COLUMNS:
        idx, label, predict, adv = (int(cells[k]) for k in ("idx", "label", "predict", "adv_predict"))
        seconds = _parse_seconds(cells["time"])
        return AttackRow(idx, label, float(cells["eps"]), predict, adv, float(cells["perturbation"]), seconds)
    idx, label, predict = int(cells["idx"]), int(cells["label"]), int(cells["predict"])
    radius, correct = float(cells.get("radius", 0.0)), _BOOL[cells["correct"].strip()]
    samples = cells.get("samples", "").strip()
    return Row(idx, label, predict, radius, correct, _parse_seconds(cells["time"]), int(samples) if samples else None)


def load_rows(path: Path) -> tuple[tuple[str, ...], list[Row], int]:
    """Header (``()`` if unfinished), rows (one per key, see ``unique_rows``), and the byte length of the finished
    lines.

    A last line without its newline is a crash mid-write: it is left out.
    """
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    try:
        lines = data[:cut].decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        msg = f"{path} is not a results file: it is not text (byte {data[err.start]:#04x} at offset {err.start}); "
        msg += f"expected a TSV with the header {CERTIFY_COLUMNS!r} or another results header"
        raise ResultsFileError(msg) from None
    if not lines:
        return (), [], cut
    header = tuple(lines[0].split("\t"))
    if header not in (*RESULTS_COLUMNS, LEGACY_CERTIFY_COLUMNS):
        msg = f"{path} is not a results file: header {header!r}; expected {CERTIFY_COLUMNS!r} (or without samples), "
        raise ResultsFileError(msg + f"{PREDICT_COLUMNS!r}, {ATTACK_COLUMNS!r} or {CONFIDENCE_COLUMNS!r}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            rows.append(_parse_row(line, header))
        except (ValueError, KeyError) as err:
            msg = f"{path}, line {number}: cannot parse {line!r} ({err!r})"
            raise ResultsFileError(msg) from err
    if cut < len(data):
        log.warning("%s: ignoring the unfinished last line %r", path, data[cut:])
    return header, unique_rows(path, rows), cut


def _describe_key(key: Any) -> str:
    return f"image {key[0]} at eps {key[1]!r}" if isinstance(key, tuple) else f"image index {key}"


def unique_rows(path: StrPath, rows: list) -> list:
    """``rows`` with one row per key (image index; (index, eps) for attack rows), so no image is counted twice.

    A key on several rows that agree in everything but their time (two processes wrote the file at once, before
    rs-plugins locked its outputs) keeps its first row, with a printed note; rows that disagree are refused.
    """
    first: dict = {}
    extra = []
    for row in rows:
        if row.key in first:
            extra.append(row)
        else:
            first[row.key] = row
    if not extra:
        return rows
    keys = list(dict.fromkeys(row.key for row in extra))
    pair, one = isinstance(keys[0], tuple), len(keys) == 1
    what = ("(image, eps) pair" if one else "(image, eps) pairs") if pair else "image index" if one else "image indices"
    what += " appears" if one else " appear"
    differ = [row.key for row in extra if replace(row, seconds=0.0) != replace(first[row.key], seconds=0.0)]
    if differ:
        count = sum(row.key == differ[0] for row in rows)
        msg = (
            f"{path}: {_describe_key(differ[0])} is on {count} rows with different results ({len(keys)} {what} "
            "more than once); each must appear once, or it is counted twice. Two processes wrote the file at once, "
            "or it was edited: keep one row each, or move the file away and rerun"
        )
        raise ResultsFileError(msg)
    print(f"rs-plugins: note: {path}: {len(keys)} {what} on more than one row with identical results (first: "
          f"{_describe_key(keys[0])}): two processes wrote the file at once; each is counted once",
          file=sys.stderr)  # fmt: skip
    return list(first.values())


def read_results(path: StrPath) -> list[Row]:
    """Rows of a CERTIFY or PREDICT TSV; an unfinished last line (a run still writing) is skipped.

    Rows that no certifier writes are refused rather than scored (see ``check_rows``).
    """
    check_not_sidecar(path)
    header, rows, _ = load_rows(Path(path))  # a missing file raises FileNotFoundError naming the path
    if not header:
        msg = f"{path} has no header line; expected {CERTIFY_COLUMNS!r} or {PREDICT_COLUMNS!r}"
        raise ResultsFileError(msg)
    if header == CONFIDENCE_COLUMNS:
        msg = f"{path} holds predict-confidence votes; read it with read_confidence()"
        raise ResultsFileError(msg)
    if header == ATTACK_COLUMNS:
        msg = f"{path} holds attack results (one row per image and eps); read it with read_attack_results()"
        raise ResultsFileError(msg)
    try:
        sidecar = read_sidecar(path)
    except ResultsFileError:  # the rows' own checks still run; the caller that needs the settings refuses it
        sidecar = None
    num_classes = (sidecar or {}).get("provenance", {}).get("num_classes")
    check_rows(path, rows, num_classes)
    return rows


def read_attack_results(path: StrPath) -> list[AttackRow]:
    """Rows of an ``rs-plugins attack`` TSV; an unfinished last line (a run still writing) is skipped."""
    return _read_rows(path, ATTACK_COLUMNS, "an attack results file")  # type: ignore[return-value]


def read_confidence(path: StrPath) -> list[ConfidenceRow]:
    """Rows of an ``rs-plugins predict-confidence`` TSV; an unfinished last line (a run still writing) is skipped."""
    return _read_rows(path, CONFIDENCE_COLUMNS, "a predict-confidence file")  # type: ignore[return-value]


def _read_rows(path: StrPath, columns: Sequence[str], kind: str) -> list:
    """The rows of a results file whose header must be ``columns`` (``kind`` names the file in the message)."""
    header, rows, _ = load_rows(Path(path))
    if header != columns:
        raise ResultsFileError(f"{path} is not {kind}: header {header!r}; expected {columns!r}")
    return rows


def check_rows(path: StrPath, rows: Sequence[Row], num_classes: int | None = None) -> None:
    """Refuse rows whose metrics would be wrong: a label that is not a class (e.g. -1, the abstention value),
    a prediction below -1, ``correct`` that disagrees with ``predict == label``, a negative or non-finite
    radius, an abstention with a radius; and, when the sidecar records the model's number of classes K,
    labels or predictions >= K."""
    for row in rows:
        problem = ""
        if row.label < 0:
            problem = f"label {row.label} is not a class index (-1 means abstain, never a label)"
        elif num_classes is not None and max(row.label, row.predict) >= num_classes:
            problem = f"label {row.label} / predict {row.predict} is not one of the model's {num_classes} classes"
        elif row.predict < ABSTAIN:
            problem = f"predict {row.predict} is neither a class nor -1 (abstain)"
        elif row.correct != (row.predict == row.label):
            problem = f"correct={int(row.correct)} disagrees with predict {row.predict} and label {row.label}"
        elif not (math.isfinite(row.radius) and row.radius >= 0) or (row.predict == ABSTAIN and row.radius):
            problem = f"radius {row.radius} is not a finite radius >= 0 (0 when abstaining)"
        if problem:
            msg = f"{path}, image {row.idx}: {problem}; the file was not written by a certifier, or was edited"
            raise ResultsFileError(msg)


def check_not_sidecar(path: StrPath, option: str = "") -> None:
    """Refuse a results file's settings sidecar (``x.tsv.json``) given where the results file belongs (``x.tsv``),
    naming ``option`` and the file to give instead."""
    if Path(path).suffix.lower() == ".json":
        prefix = f"{option}: " if option else ""
        msg = f"{prefix}{path} is the settings file that sits next to a results file; give the results file itself, "
        raise ResultsFileError(msg + f"{Path(path).with_suffix('')}")


class ResultsFile:
    """Append-only results TSV that lets a long run resume without losing or repeating a finished image.

    Args:
        path: the TSV; created with its header if missing, otherwise its finished rows are read back.
        columns: ``CERTIFY_COLUMNS`` or ``PREDICT_COLUMNS`` (rows keyed by image index), or ``ATTACK_COLUMNS``
            (``AttackRow``s keyed by (image index, eps)).
        settings: CLI options (names without dashes) that produced the rows; stored as ``<path>.json``
            when the file is created and compared on resume, so rows from different runs never mix. A file
            with rows but no sidecar (an older or foreign file) is refused then: nothing proves its settings.
        provenance: what describes the run but does not change its rows (versions, device, date, subset):
            stored in the sidecar under ``"provenance"``, and under ``"resumed"`` for each later run.

    Raises:
        ResultsFileError: (a ValueError) the existing file has other columns or other settings, or no sidecar.
    """

    def __init__(
        self,
        path: StrPath,
        columns: Sequence[str] = CERTIFY_COLUMNS,
        settings: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        if self.columns not in RESULTS_COLUMNS:
            msg = f"columns must be one of {RESULTS_COLUMNS!r}; got {self.columns!r}"
            raise ValueError(msg)
        self._file = None
        self._lock = WriterLock(self.path, "--out")  # before reading: one writer per file, from check to close
        try:
            self._open(settings, provenance)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, settings: dict[str, Any] | None, provenance: dict[str, Any] | None) -> None:
        """Read the finished rows back, check or store the settings, and open the file for appending."""
        settings_path = sidecar_path(self.path)
        # JSON round trip so that tuples, paths etc. compare equal to what was stored.
        settings = None if settings is None else json.loads(json.dumps(settings, default=str))
        header, self.rows, cut = load_rows(self.path) if self.path.is_file() else ((), [], 0)
        self._done = {row.key for row in self.rows}
        if header and header != self.columns:
            msg = f"{self.path} has columns {header!r}, but this run writes {self.columns!r}. "
            raise ResultsFileError(msg + "Use another --out or delete the file")
        provenance = None if provenance is None else json.loads(json.dumps(provenance, default=str))
        stored = read_sidecar(self.path) if header and settings is not None else None
        if header and settings is not None and (stored is not None or self.rows):
            if stored is None:
                msg = (
                    f"--out {self.path} has {len(self.rows)} rows but no settings file {settings_path.name}, so "
                    "nothing shows they were computed with this run's settings: they could be "
                    "from another model, sigma or n. Use another --out, or move the file away to start over"
                )
                raise ResultsFileError(msg)
            check_settings(self.path, {k: v for k, v in stored.items() if k not in RECORD_KEYS}, settings)
            if provenance is not None:
                stored["resumed"] = [*stored.get("resumed", []), provenance]
                write_atomic(settings_path, json.dumps(stored, indent=2, sort_keys=True) + "\n")
        if self.path.is_file() and self.path.stat().st_size > cut:
            os.truncate(self.path, cut)  # so the next row starts on a line of its own
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8", newline="")
        if settings is not None and stored is None:
            record = settings | ({"provenance": provenance} if provenance is not None else {})
            write_atomic(settings_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        if not header:
            self._write("\t".join(self.columns) + "\n")

    @property
    def done(self) -> set:
        """Keys of the finished rows, to skip on resume (kept up to date by ``append``): dataset indices, or
        (index, eps) pairs for attack results."""
        return self._done

    def append(self, row: Row | AttackRow | ConfidenceRow) -> None:
        """Write one row and force it to disk, so a killed process loses nothing it finished."""
        self._write(format_row(row, self.columns))
        self.rows.append(row)
        self._done.add(row.key)

    def _write(self, line: str) -> None:
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file and let another process write it; rows already appended are on disk either way."""
        if self._file is not None:
            self._file.close()
        self._lock.release()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
