"""The counts log: every image's top-1 votes over all K classes, beside its results file (``<out>.counts``).

One tab-separated line per image, fsynced before the image's row of the results file, so that a killed run keeps
every finished image's counts; on resume, a line whose image has no row (killed in between) is dropped and
redone. Counts are sparse ``class:votes`` pairs, so a thousand-class file stays small::

    idx  label  selection   estimation          looks                    extra
    0    6      6:98,2:2    6:99012,2:988
    1    2      2:100       2:4050,7:12         50@2:50;75@2:75,7:0...   {"looks_planned": 20, "n_max": 100000}

``selection`` is the n0 pass (``-`` where none was drawn), ``estimation`` the pass the bound comes from, ``looks``
(sequential certifiers) the cumulative counts at each look, ``extra`` JSON that ``certify_counts`` needs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rs_plugins.errors import ResultsFileError
from rs_plugins.results.writer_lock import WriterLock
from rs_plugins.types import Counts

StrPath = str | os.PathLike[str]
COUNTS_COLUMNS = ("idx", "label", "selection", "estimation", "looks", "extra")
COUNTS_SUFFIX = ".counts"
COUNTS_LOG_CHOICES = ("counts", "none")
"""``--counts-log``: write the counts log beside the results file, or not."""


@dataclass(frozen=True)
class CountsRow:
    """One image of a counts log: its index, label and votes."""

    idx: int
    label: int
    counts: Counts


def counts_path(results: StrPath) -> Path:
    """The counts log beside a results file: ``<results>.counts``."""
    return Path(results).with_name(Path(results).name + COUNTS_SUFFIX)


def results_path(counts: StrPath) -> Path:
    """The results file a counts log sits beside (``<results>.counts`` -> ``<results>``)."""
    path = Path(counts)
    if not path.name.endswith(COUNTS_SUFFIX) or path.name == COUNTS_SUFFIX:
        raise ValueError(f"{path}: a counts log is named <results file>{COUNTS_SUFFIX}, e.g. certify.tsv.counts")
    return path.with_name(path.name[: -len(COUNTS_SUFFIX)])


def _sparse(votes: Sequence[int]) -> str:
    return ",".join(f"{c}:{v}" for c, v in enumerate(votes) if v)


def format_counts(idx: int, label: int, counts: Counts) -> str:
    """The log line of one image (with its newline)."""
    selection = "-" if counts.selection is None else _sparse(counts.selection)
    looks = ";".join(f"{size}@{_sparse(votes)}" for size, votes in counts.looks)
    extra = json.dumps(counts.extra, separators=(",", ":"), sort_keys=True) if counts.extra else ""
    return f"{idx}\t{label}\t{selection}\t{_sparse(counts.estimation)}\t{looks}\t{extra}\n"


def _dense(text: str, num_classes: int) -> tuple[int, ...]:
    votes, named = [0] * num_classes, set()
    for pair in filter(None, text.split(",")):
        c, v = (int(part) for part in pair.split(":", 1))
        if not 0 <= c < num_classes or v < 0 or c in named:
            raise ValueError(f"class:votes {pair!r} is not a class 0..{num_classes - 1}, named once, with votes >= 0")
        votes[c] = v
        named.add(c)
    return tuple(votes)


def _classes(line: str) -> Iterable[int]:
    """The classes a line's selection, estimation and looks name."""
    text = "\t".join(line.split("\t")[2:5])
    return (int(pair.split(":", 1)[0]) for part in re.split("[;@\t]", text) for pair in part.split(",") if ":" in pair)


def parse_counts(line: str, num_classes: int) -> CountsRow:
    """One log line back as a ``CountsRow`` with dense votes over ``num_classes`` classes."""
    cells = dict(zip(COUNTS_COLUMNS, line.rstrip("\n").split("\t"), strict=True))
    selection = None if cells["selection"] == "-" else _dense(cells["selection"], num_classes)
    looks = []
    for look in filter(None, cells["looks"].split(";")):
        size, _, votes = look.partition("@")
        looks.append((int(size), _dense(votes, num_classes)))
    extra = json.loads(cells["extra"]) if cells["extra"] else {}
    if not isinstance(extra, dict):
        raise ValueError(f"extra {cells['extra'][:40]!r} is not a JSON object")
    counts = Counts(_dense(cells["estimation"], num_classes), selection, tuple(looks), extra)
    return CountsRow(int(cells["idx"]), int(cells["label"]), counts)


def _lines(path: Path) -> tuple[list[str], int]:
    """The finished lines after the header (a last line without its newline is a kill mid-write: left out), and
    the byte length of the finished part. Each line starts with its image index."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    try:
        lines = data[:cut].decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ResultsFileError(f"{path} is not a counts log: it is not text") from None
    if lines and tuple(lines[0].split("\t")) != COUNTS_COLUMNS:
        raise ResultsFileError(f"{path} is not a counts log: header {lines[0]!r}; expected {COUNTS_COLUMNS!r}")
    found = [line for line in lines[1:] if line.strip()]
    for number, line in enumerate(found, start=2):
        if not line.split("\t", 1)[0].isdigit():
            raise ResultsFileError(f"{path}, line {number}: {line[:40]!r} does not start with an image index")
    return found, cut


def read_counts(path: StrPath, num_classes: int | None = None) -> list[CountsRow]:
    """The images of a counts log, in file order. ``num_classes`` (the model's K, which the results sidecar
    records) sizes the vote vectors; without it the largest class in the file decides.

    Raises:
        ResultsFileError: not a counts log, a line that does not parse, or an image twice.
    """
    path = Path(path)
    lines, _ = _lines(path)
    if num_classes is None:
        num_classes = 1 + max((c for line in lines for c in _classes(line)), default=1)
    rows, seen = [], set()
    for number, line in enumerate(lines, start=2):
        try:
            row = parse_counts(line, num_classes)
        except (ValueError, KeyError) as err:
            raise ResultsFileError(f"{path}, line {number}: cannot parse {line[:80]!r} ({err})") from err
        if row.idx in seen:
            raise ResultsFileError(f"{path}, line {number}: image {row.idx} appears twice; the file was edited")
        seen.add(row.idx)
        rows.append(row)
    return rows


def _write_atomic(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(COUNTS_COLUMNS) + "\n")
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CountsLog:
    """Append-only counts log that resumes with its results file.

    Args:
        path: the log (``counts_path(results file)``); created with its header if missing.
        keep: the image indices the results file holds. Lines of other images (a run killed between an image's
            counts and its row) are dropped, so that the image's counts are written once, when it is redone.
    """

    def __init__(self, path: StrPath, keep: Iterable[int]) -> None:
        self.path = Path(path)
        self._lock = WriterLock(results_path(self.path), "--out")  # its results file's: re-entered inside a run
        try:
            keep = set(keep)
            lines, cut = _lines(self.path) if self.path.is_file() else ([], 0)
            kept = [line for line in lines if int(line.split("\t", 1)[0]) in keep]
            self.done = {int(line.split("\t", 1)[0]) for line in kept}
            if len(kept) < len(lines) or (self.path.is_file() and (cut == 0 or self.path.stat().st_size > cut)):
                _write_atomic(self.path, (line + "\n" for line in kept))  # also drops an unfinished last line
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.is_file()
            self._file = self.path.open("a", encoding="utf-8", newline="")
            if new:
                self._write("\t".join(COUNTS_COLUMNS) + "\n")
        except BaseException:  # a refused or unreadable log: let the next run in
            self._lock.release()
            raise

    def append(self, idx: int, label: int, counts: Counts) -> None:
        """Write one image's counts and force them to disk (before its results row)."""
        self._write(format_counts(idx, label, counts))
        self.done.add(idx)

    def _write(self, line: str) -> None:
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
        self._lock.release()

    def __enter__(self) -> CountsLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _parts(out: Path) -> list[Path]:
    pattern = re.compile(re.escape(out.name) + r"\.part-\d+-of-\d+" + re.escape(COUNTS_SUFFIX))
    return sorted(p for p in out.parent.glob(out.name + ".part-*") if pattern.fullmatch(p.name))


def merge_counts(out: StrPath, keys: Callable[[Path], set[int]]) -> list[Path]:
    """Merge the torchrun parts' logs (``<out>.part-r-of-K.counts``) into ``counts_path(out)``, one line per image
    in index order, written atomically, and return the parts: the caller deletes them once the results file is
    merged too, so a rerun after a kill in between merges again without duplicates.

    Each log keeps only the images its results file (``keys(path)``: the indices of its rows) holds, so counts of
    an image killed before its row are never merged; a part whose results file is gone was merged already.
    """
    out = Path(out)
    parts = _parts(out)
    if not parts:
        return []
    target = counts_path(out)
    lines: dict[int, str] = {}
    for path in [target, *parts] if target.is_file() else parts:
        if not results_path(path).is_file():
            continue
        held = keys(results_path(path))
        for line in _lines(path)[0]:
            idx = int(line.split("\t", 1)[0])
            if idx in held:
                lines.setdefault(idx, line + "\n")
    _write_atomic(target, (lines[i] for i in sorted(lines)))
    return parts
