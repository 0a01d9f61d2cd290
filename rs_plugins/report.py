"""Certification results: the field's per-image TSV, resumable writing, metrics, tables and plots.

The TSV is the one Cohen et al.'s ``certify.py`` writes (``idx label predict radius correct time``) plus a
``samples`` column (noise samples drawn for the image), so logs from the reference repositories, which lack
it, can be read and compared with ours. Abstentions and wrong predictions count as radius 0 in every metric.
"""

from __future__ import annotations

import bisect
import datetime
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rs_plugins.errors import ResultsFileError
from rs_plugins.types import ABSTAIN

CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "samples")
LEGACY_CERTIFY_COLUMNS = CERTIFY_COLUMNS[:-1]  # Cohen's certify.py and our files before `samples`: read only
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")
ATTACK_COLUMNS = ("idx", "label", "eps", "predict", "adv_predict", "perturbation", "time")
CONFIDENCE_COLUMNS = ("idx", "label", "counts", "time")  # rs-plugins predict-confidence: votes per class
RESULTS_COLUMNS = (CERTIFY_COLUMNS, PREDICT_COLUMNS, ATTACK_COLUMNS, CONFIDENCE_COLUMNS)
_TIME = re.compile(r"^(?:(-?\d+) days?, )?(\d+):(\d+):(\d+(?:\.\d*)?)$")
_BOOL = {"1": True, "0": False, "True": True, "False": False}
StrPath = str | os.PathLike[str]
log = logging.getLogger(__name__)
RECORD_KEYS = ("provenance", "resumed")
"""Sidecar keys that describe runs; every other key is a setting compared on resume."""


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


def _format_row(row: Row | AttackRow | ConfidenceRow, columns: Sequence[str]) -> str:
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


def _load(path: Path) -> tuple[tuple[str, ...], list[Row], int]:
    """Header (``()`` if unfinished), rows, and the byte length of the finished lines.

    A last line without its newline is a crash mid-write: it is left out.
    """
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    lines = data[:cut].decode("utf-8").splitlines()
    if not lines:
        return (), [], cut
    header = tuple(lines[0].split("\t"))
    if header not in (*RESULTS_COLUMNS, LEGACY_CERTIFY_COLUMNS):
        msg = f"{path} is not a results file: header {header!r}; expected {CERTIFY_COLUMNS!r} (or without samples), "
        raise ResultsFileError(msg + f"{PREDICT_COLUMNS!r} or {ATTACK_COLUMNS!r}")
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
    return header, rows, cut


def read_results(path: StrPath) -> list[Row]:
    """Rows of a CERTIFY or PREDICT TSV; an unfinished last line (a run still writing) is skipped.

    Rows that no certifier writes are refused rather than scored (see ``check_rows``).
    """
    header, rows, _ = _load(Path(path))  # a missing file raises FileNotFoundError naming the path
    if not header:
        msg = f"{path} has no header line; expected {CERTIFY_COLUMNS!r} or {PREDICT_COLUMNS!r}"
        raise ResultsFileError(msg)
    if header == CONFIDENCE_COLUMNS:
        msg = f"{path} holds predict-confidence votes; read it with read_confidence()"
        raise ResultsFileError(msg)
    if header == ATTACK_COLUMNS:
        msg = f"{path} holds attack results (one row per image and eps); read it with read_attack_results()"
        raise ResultsFileError(msg)
    sidecar = read_sidecar(path)
    num_classes = (sidecar or {}).get("provenance", {}).get("num_classes")
    check_rows(path, rows, num_classes if isinstance(num_classes, int) else None)
    return rows


def read_attack_results(path: StrPath) -> list[AttackRow]:
    """Rows of an ``rs-plugins attack`` TSV; an unfinished last line (a run still writing) is skipped."""
    return _read_rows(path, ATTACK_COLUMNS, "an attack results file")  # type: ignore[return-value]


def read_confidence(path: StrPath) -> list[ConfidenceRow]:
    """Rows of an ``rs-plugins predict-confidence`` TSV; an unfinished last line (a run still writing) is skipped."""
    return _read_rows(path, CONFIDENCE_COLUMNS, "a predict-confidence file")  # type: ignore[return-value]


def _read_rows(path: StrPath, columns: Sequence[str], kind: str) -> list:
    """The rows of a results file whose header must be ``columns`` (``kind`` names the file in the message)."""
    header, rows, _ = _load(Path(path))
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


def sidecar_path(path: StrPath) -> Path:
    """Where the settings and provenance of a results file are kept: ``<path>.json``."""
    return Path(path).with_name(Path(path).name + ".json")


def read_sidecar(path: StrPath) -> dict[str, Any] | None:
    """The settings and provenance stored next to a results file, or None if it has none (e.g. a paper repo's)."""
    try:
        found = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def format_provenance(sidecar: dict[str, Any]) -> str:
    """A few lines for a terminal: what produced the rows (model, data, smoothing) and where and with what."""
    settings = {k: v for k, v in sidecar.items() if k not in RECORD_KEYS}
    prov = sidecar.get("provenance", {})

    def run(p: dict[str, Any]) -> str:
        parts = [f"rs-plugins {p.get('rs_plugins', '?')}", f"torch {p.get('torch', '?')}"]
        parts += [f"python {p.get('python', '?')}", str(p.get("device", "?")), str(p.get("date", "?"))]
        return ", ".join(parts) + (f", {p['images']} images" if "images" in p else "")

    def plugin(c: dict[str, Any] | None) -> str:
        return f" [{c.get('distribution') or c.get('plugin')} {c.get('version') or ''}]".rstrip() if c else ""

    sha = str(settings.get("model_sha256", "?"))[:16]
    has_certifier = "certifier" in settings
    n0 = f"n0={settings['n0']} " if "n0" in settings else ""
    lines = [
        f"model: {settings.get('model')} checkpoint={settings.get('checkpoint')} sha256={sha}..."
        + (f" ({prov['num_classes']} classes)" if "num_classes" in prov else ""),
        f"data: {settings.get('data')} {settings.get('split', '')} subset={json.dumps(prov.get('subset'))}",
        f"smoothing: {settings.get('noise')} sigma={settings.get('sigma')} {json.dumps(settings.get('noise_option'))}"
        + plugin(prov.get("noise"))
        + (f"; certifier {settings.get('certifier')} {json.dumps(settings.get('certifier_option'))}" * has_certifier)
        + plugin(prov.get("certifier"))
        + f"; {n0}n={settings.get('n')} alpha={settings.get('alpha')} seed={settings.get('seed')}"
        + f"; precision {prov.get('precision', '?')}",
    ]
    if isinstance(settings.get("denoiser"), dict):
        lines.append(f"denoiser: {describe_denoiser(settings['denoiser'])}" + plugin(prov.get("denoiser")))
    if prov:
        lines.append("run: " + run(prov))
    lines += ["resumed: " + run(p) for p in sidecar.get("resumed", [])]
    return "\n".join(lines) + "\n"


def describe_denoiser(denoiser: dict[str, Any]) -> str:
    """One line for a sidecar's ``denoiser`` record: name, path, options, weights' hash and its own settings."""
    own = {k: v for k, v in denoiser.items() if k not in ("name", "path", "options", "sha256") and v is not None}
    text = f"{denoiser.get('name')}" + (f":{denoiser['path']}" if denoiser.get("path") else "")
    text += f" sha256={str(denoiser.get('sha256', '?'))[:16]}..."
    if denoiser.get("options"):
        text += f" options={json.dumps(denoiser['options'])}"
    for key, value in own.items():
        if isinstance(value, dict):
            value = "(" + ", ".join(f"{k}={v}" for k, v in value.items()) + ")"
        text += f" {key}={value}"
    return text


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


def radius_formula(noise: Any, certifier: Any = None) -> str:
    """The qualified name of what turns a certificate's bound into its radius, for the sidecar: the certifier's
    ``radius_formula`` if it declares one (a radius of its own), else its noise's ``radius``."""
    own = getattr(certifier, "radius_formula", None)
    return str(own) if own else f"{type(noise).__module__}.{type(noise).__qualname__}.radius"


def largest_radius(noise: Any, n: int, alpha: float) -> float:
    """The largest radius N samples can certify: ``noise.radius`` at the one-sided Clopper-Pearson lower bound
    with all ``n`` votes for the top class, alpha**(1/n) (Cohen et al.'s CERTIFY at level ``alpha``)."""
    from .stats import clopper_pearson_lower

    return float(noise.radius(float(clopper_pearson_lower(n, n, alpha))))


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
        settings_path = sidecar_path(self.path)
        # JSON round trip so that tuples, paths etc. compare equal to what was stored.
        settings = None if settings is None else json.loads(json.dumps(settings, default=str))
        header, self.rows, cut = _load(self.path) if self.path.is_file() else ((), [], 0)
        self._done = {row.key for row in self.rows}
        if header and header != self.columns:
            msg = f"{self.path} has columns {header!r}, but this run writes {self.columns!r}. "
            raise ResultsFileError(msg + "Use another --out or delete the file")
        provenance = None if provenance is None else json.loads(json.dumps(provenance, default=str))
        stored = read_sidecar(self.path) if header and settings is not None else None
        if header and settings is not None and (stored is not None or self.rows):
            if stored is None:
                msg = (
                    f"--out {self.path} has {len(self.rows)} rows but no settings file {settings_path.name} (or an "
                    "unreadable one), so nothing shows they were computed with this run's settings: they could be "
                    "from another model, sigma or n. Use another --out, or move the file away to start over"
                )
                raise ResultsFileError(msg)
            _check_settings(self.path, {k: v for k, v in stored.items() if k not in RECORD_KEYS}, settings)
            if provenance is not None:
                stored["resumed"] = [*stored.get("resumed", []), provenance]
                _write_atomic(settings_path, json.dumps(stored, indent=2, sort_keys=True) + "\n")
        if self.path.is_file() and self.path.stat().st_size > cut:
            os.truncate(self.path, cut)  # so the next row starts on a line of its own
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8", newline="")
        if settings is not None and stored is None:
            record = settings | ({"provenance": provenance} if provenance is not None else {})
            _write_atomic(settings_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        if not header:
            self._write("\t".join(self.columns) + "\n")

    @property
    def done(self) -> set:
        """Keys of the finished rows, to skip on resume (kept up to date by ``append``): dataset indices, or
        (index, eps) pairs for attack results."""
        return self._done

    def append(self, row: Row | AttackRow | ConfidenceRow) -> None:
        """Write one row and force it to disk, so a killed process loses nothing it finished."""
        self._write(_format_row(row, self.columns))
        self.rows.append(row)
        self._done.add(row.key)

    def _write(self, line: str) -> None:
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file; rows already appended are on disk either way."""
        self._file.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _check_settings(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>"))
    if keys:
        was = ", ".join(f"{k}={old.get(k, '<unset>')}" for k in keys)
        now = ", ".join(f"{k}={new.get(k, '<unset>')}" for k in keys)
        msg = f"--out {path} was written with {was}; this run has {now}. Use another --out or delete the file"
        raise ResultsFileError(msg)


def _nonempty(rows: Sequence[Row], what: str) -> Sequence[Row]:
    if not rows:
        msg = f"{what} needs at least one row; got none"
        raise ValueError(msg)
    return rows


def certified_accuracy(rows: Sequence[Row], radii: Iterable[float]) -> list[float]:
    """Fraction of rows that are correct with radius >= r, for each r (Cohen et al. 2019)."""
    n = len(_nonempty(rows, "certified_accuracy()"))
    certified = sorted(row.radius for row in rows if row.correct)  # sorted, so each r costs a bisection
    return [(len(certified) - bisect.bisect_left(certified, r)) / n for r in radii]


def average_certified_radius(rows: Sequence[Row]) -> float:
    """ACR: mean of radius * correct over all rows, abstentions included (Zhai et al. 2020)."""
    return sum(row.radius for row in rows if row.correct) / len(_nonempty(rows, "average_certified_radius()"))


def default_radii(rows: Sequence[Row], step: float = 0.25) -> list[float]:
    """0, step, 2*step, ... up to the largest radius certified correctly: the radii of the papers' tables."""
    if not step > 0:
        msg = f"step must be > 0; got {step}"
        raise ValueError(msg)
    top = max((row.radius for row in rows if row.correct), default=0.0)
    return [round(i * step, 10) for i in range(math.floor(top / step + 1e-9) + 1)]


def _key(r: float) -> str:
    return f"{r:.2f}" if abs(r - round(r, 2)) < 1e-9 else f"{r:g}"


def mean_samples(rows: Sequence[Row]) -> float | None:
    """Mean noise samples per image over the rows that record it; None if none does (e.g. the paper repos' logs)."""
    known = [row.samples for row in rows if row.samples is not None]
    return sum(known) / len(known) if known else None


def summarize(rows: Sequence[Row], radii: Sequence[float] | None = None) -> dict[str, Any]:
    """Headline numbers as a JSON-serialisable dict; radii default to ``default_radii(rows)``."""
    radii = default_radii(rows) if radii is None else list(radii)
    return {
        "mean_samples": mean_samples(rows),
        "images": len(rows),
        "abstained": sum(row.predict == ABSTAIN for row in rows),
        "certified_accuracy_at_0": certified_accuracy(rows, [0.0])[0],
        "acr": average_certified_radius(rows),
        "certified_accuracy": dict(zip(map(_key, radii), certified_accuracy(rows, radii), strict=True)),
        "mean_seconds": sum(row.seconds for row in rows) / len(rows),
    }


def format_accuracy(accuracy: float, percent: bool = True) -> str:
    """A certified accuracy for a table: percent with one decimal (61.2), or a fraction with four (0.6120)."""
    return f"{100 * accuracy:.1f}" if percent else f"{accuracy:.4f}"


def format_table(
    rows: Sequence[Row], radii: Sequence[float] | None = None, title: str = "", *, percent: bool = True
) -> str:
    """Plain-ASCII table of certified accuracy (percent, or fractions) per radius, with ACR and counts."""
    summary = summarize(rows, radii)
    cells = [(k, format_accuracy(acc, percent)) for k, acc in summary["certified_accuracy"].items()]
    widths = [max(len(k), len(v)) + 2 for k, v in cells]
    lines = [title] if title else []
    lines.append("radius      " + "".join(k.rjust(w) for (k, _), w in zip(cells, widths, strict=True)))
    name = "cert. acc % " if percent else "cert. acc   "
    lines.append(name + "".join(v.rjust(w) for (_, v), w in zip(cells, widths, strict=True)))
    lines.append(f"ACR: {summary['acr']:.3f}")
    lines.append(f"images: {summary['images']} (abstained: {summary['abstained']})")
    if summary["mean_samples"] is not None:
        lines.append(f"samples per image: {summary['mean_samples']:,.0f} (mean)")
    return "\n".join(lines) + "\n"


def plot_certified_accuracy(
    curves: dict[str, Sequence[Row]],
    path: StrPath,
    *,
    title: str = "",
    norm: str = "l2",
    largest: dict[str, float] | None = None,
    size: tuple[float, float] = (6, 4),
    dpi: int = 120,
) -> None:
    """Plot certified accuracy against radius, one step curve per label, ACR in the legend; ``largest`` (label ->
    the largest radius the run's N can certify, see ``largest_radius``) adds a dotted line for each, in its
    curve's colour (grey where runs share it). The extension of ``path`` picks the format (PDF/SVG: vector;
    PNG at ``dpi``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: leave global state alone
    from matplotlib.figure import Figure

    if not curves:
        msg = "plot_certified_accuracy() needs at least one curve in `curves`; got none"
        raise ValueError(msg)
    largest = {label: r for label, r in (largest or {}).items() if label in curves and math.isfinite(r) and r > 0}
    tops = [row.radius for rows in curves.values() for row in rows if row.correct]
    end = 1.05 * max([*tops, *largest.values()], default=0.0) or 1.0
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, rows in curves.items():
        _nonempty(rows, f"plot_certified_accuracy() curve {label!r}")
        # Accuracy holds its value up to and including each certified radius, then drops: step "pre".
        xs = [0.0, *sorted({row.radius for row in rows if row.correct and row.radius > 0})]
        ys = certified_accuracy(rows, xs)
        acr = average_certified_radius(rows)
        (line,) = ax.step([*xs, end], [*ys, 0.0], where="pre", label=f"{label} (ACR {acr:.3f})")
        if label in largest:  # in the curve's colour; grey where several runs share the value
            shared = list(largest.values()).count(largest[label]) > 1
            ax.axvline(largest[label], color="grey" if shared else line.get_color(), linestyle=":", linewidth=1)
    if largest:  # one legend entry for the dotted lines, whose colours say which run each belongs to
        values = ", ".join(f"{r:.3f}" for r in sorted(set(largest.values())))
        ax.plot([], [], color="grey", linestyle=":", label=f"largest radius N can certify ({values})")
    ax.set(xlim=(0, end), ylim=(0, 1), xlabel=f"{norm} radius", ylabel="certified accuracy")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def write_summary(
    rows: Sequence[Row],
    path: StrPath,
    radii: Sequence[float] | None = None,
    record: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``summarize(rows, radii)`` plus ``extra`` (e.g. what was certified) as indented JSON, creating parent
    directories; ``record`` (a results file's sidecar: settings and provenance) is included under ``"run"``."""
    summary = summarize(rows, radii) | (extra or {}) | ({"run": record} if record is not None else {})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
