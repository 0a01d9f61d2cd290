"""Comparing certification runs: one table (rows = runs, columns = certified accuracy at radii and ACR) in text,
Markdown, LaTeX or CSV, one plot with a curve per run, and the checks that make such a comparison fair.

Runs are compared only when their radii are in one norm (each file's norm comes from its sidecar; a file
without one, e.g. a paper repository's log, has the norm of ``--noise``, else is taken as Gaussian, l2), when
they are all CERTIFY or all PREDICT files, and when their models have the same number of classes. Every other
setting that differs (N, alpha, n0, data, certifier, noise, model, mixer, precision, denoiser, ...), different
images, and runs short of their planned images are allowed but flagged in the table's notes, since they change
what the numbers mean.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ResultsFileError
from .differences import check_comparable, denoiser_sigma_note, setting_differences
from .figures import describe_classifier
from .files import Row, StrPath, planned_images, read_results, read_sidecar, recorded
from .metrics import PROVENANCE_COLUMNS, provenance_cells
from .predictions import results_kind
from .report import (
    average_certified_radius,
    certified_accuracy,
    default_radii,
    largest_radius,
    plot_certified_accuracy,
    radius_formula,
    summarize,
)

NoiseBuilder = Callable[..., Any]
"""Builds a noise sampler by name, as ``Host().noise(name, sigma=..., **options)`` does: how the results layer,
which sits below the plugin host, learns a noise's norm and radius formula from the installed plugins."""

FORMATS = {"text": ".txt", "markdown": ".md", "latex": ".tex", "csv": ".csv"}
"""``--format`` choices and the ``--table`` file extension that selects each."""


@dataclass
class Run:
    """One results file to compare: its rows, its sidecar ({} if none), the radius norm, and the noise and sigma
    (from the sidecar, or as given with ``--noise``/``--sigma`` for a file without one; None if unknown)."""

    label: str
    path: str
    rows: list[Row]
    settings: dict[str, Any] = field(default_factory=dict)
    norm: str = "l2"
    sigma: float | None = None
    noise: str | None = None
    kind: str = "certify"  # or "predict": a PREDICT file, accuracy and abstentions, no radii (``predictions``)
    build_noise: NoiseBuilder | None = None  # as given to ``load_runs``: the installed noise plugins, if any


def radius_norm(
    settings: dict[str, Any],
    noise: str | None = None,
    sigma: float | None = None,
    build_noise: NoiseBuilder | None = None,
) -> str:
    """The norm of a results file's radii: the one its sidecar records, else its noise's (the sidecar's, or
    ``noise`` for a file without one, built by ``build_noise`` from its installed plugin; ``unknown (NAME)``
    without a builder), else l2 (the paper repos' logs are Gaussian)."""
    norm = recorded(settings, "norm")
    if isinstance(norm, str):
        return norm
    name = settings.get("noise", noise)
    if name is None:
        return "l2"
    if build_noise is None:
        return f"unknown ({name})"
    from ..errors import RsPluginError

    try:
        return build_noise(name, sigma=settings.get("sigma", sigma or 1.0), **settings.get("noise_option", {})).norm
    except (RsPluginError, ValueError, KeyError, TypeError) as err:
        if "noise" not in settings:  # the user's --noise: a mistake to refuse, not a file to label
            raise ValueError(f"--noise {name!r}: {err}") from err
        print(f"rs-plugins: warning: cannot tell the radius norm of noise {name!r} ({err})", file=sys.stderr)
        return f"unknown ({name})"


def default_label(path: str, settings: dict[str, Any]) -> str:
    """``<noise> σ=<sigma>`` from the sidecar (``+ <denoiser>`` for denoised smoothing), else the file name
    without its extension."""
    if "noise" in settings and "sigma" in settings:
        denoiser = settings.get("denoiser")
        name = f" + {denoiser.get('name')}" if isinstance(denoiser, dict) else ""
        return f"{settings['noise']} σ={settings['sigma']:g}{name}"
    return Path(path).stem


def path_labels(paths: Sequence[str]) -> list[str]:
    """The shortest part of the paths that tells the files apart: the file names without extension if they differ,
    else the first folder from the end that does (runs/gauss025/certify.tsv, runs/con025/certify.tsv: gauss025,
    con025), else the shortest distinct path ends."""
    parts = [(*Path(p).parent.parts, Path(p).stem) for p in paths]
    depth = max(len(x) for x in parts)
    for k in range(1, depth + 1):
        labels = [x[-k] if len(x) >= k else "" for x in parts]
        if len(set(labels)) == len(labels) and all(labels):
            return labels
    for k in range(2, depth + 1):
        labels = [str(Path(*x[-k:])) for x in parts]
        if len(set(labels)) == len(labels):
            return labels
    return list(paths)


def load_runs(
    paths: Sequence[StrPath],
    labels: Sequence[str] | None = None,
    *,
    sigma: float | None = None,
    noise: str | None = None,
    build_noise: NoiseBuilder | None = None,
) -> list[Run]:
    """Read the files, label them, and refuse files whose radii are in different norms.

    ``labels``: one per file; default ``default_label`` if those differ, else ``path_labels``. ``sigma`` and
    ``noise`` describe the files without a sidecar (e.g. another repository's logs): σ in the tables, the norm
    of the radii. Such a file without ``noise`` is taken as Gaussian (l2), with a warning. ``build_noise``
    (e.g. ``rs.Host().noise``) tells the norm of a noise a file does not record and marks the largest radius each
    run's N can certify; without it such norms are ``unknown (NAME)`` and no radius is marked.

    Raises:
        ValueError: a wrong number of labels, a file given twice, an unknown ``noise``, radii in more than one norm.
    """
    paths = [str(p) for p in paths]
    if labels and len(labels) != len(paths):
        raise ValueError(f"--label: give one per results file; got {len(labels)} labels for {len(paths)} files")
    given = {k: v for k, v in (("noise", noise), ("sigma", sigma)) if v is not None}
    try:  # an unreadable sidecar is refused unless the settings were given
        sidecars = [read_sidecar(p, unreadable_ok=bool(given)) or {} for p in paths]
    except ResultsFileError as err:
        raise ResultsFileError(f"{err}; report reads the rows without it when given --sigma and --noise") from None
    described = [s or given for s in sidecars]  # what each file's σ and noise are taken to be
    if not labels:
        labels = [default_label(p, s) for p, s in zip(paths, described)]
        if len(set(labels)) < len(labels):
            labels = path_labels(paths)
        if len(set(labels)) < len(labels):
            twice = sorted({p for p, label in zip(paths, labels) if labels.count(label) > 1})
            raise ValueError(f"results files: {', '.join(twice)} given more than once; give each file once")
    if len(set(labels)) < len(labels):
        raise ValueError(f"--label: each run needs its own label; got {list(labels)}")
    runs = []
    for label, path, sidecar, seen in zip(labels, paths, sidecars, described):
        norm = radius_norm(sidecar, noise, sigma, build_noise)
        if not sidecar and noise is None:
            print(f"rs-plugins: warning: {path} has no settings file ({Path(path).name}.json) and no --noise was "
                  f"given: its radii are taken as {norm} (Gaussian noise); give --noise NAME if they are not",
                  file=sys.stderr)  # fmt: skip
        runs.append(Run(label, path, read_results(path), sidecar, norm, seen.get("sigma"), seen.get("noise"),
                        results_kind(path), build_noise))  # fmt: skip
    check_comparable(runs)
    norms = {run.norm for run in runs}
    if len(norms) > 1:
        found = ", ".join(f"{run.path}: {run.norm}" for run in runs)
        msg = f"radii in different norms cannot be compared: report takes files with radii in one norm ({found})"
        raise ValueError(msg)
    return runs


def shortfall(run: Run) -> str | None:
    """A note when the file holds fewer images than the run that last wrote it planned (its sidecar records how
    many): the run stopped early, or is still running."""
    planned = planned_images(run.settings)
    if planned is None or len(run.rows) >= planned:
        return None
    return f"{run.label}: {len(run.rows)} of the {planned} images its run planned (stopped early, or still running)"


def largest_radii(runs: Sequence[Run]) -> dict[str, float]:
    """Label -> the largest radius each run's N could certify (``report.largest_radius``), for the runs whose
    sidecar gives N and alpha, whose noise ``load_runs`` could build (its plugin installed), and whose radii are
    the noise's (not a certifier's own formula, e.g. the mixed certificate's)."""
    from ..errors import RsPluginError

    found = {}
    for run in runs:
        n, alpha, options = run.settings.get("n"), run.settings.get("alpha"), run.settings.get("noise_option", {})
        if n is None or alpha is None or run.noise is None or run.sigma is None or run.build_noise is None:
            continue
        try:
            noise = run.build_noise(run.noise, sigma=run.sigma, **options)
        except (RsPluginError, ValueError, KeyError, TypeError):
            continue  # the plugin is not installed here: no mark, the curve is all the same
        if recorded(run.settings, "radius") in (None, radius_formula(noise)):
            found[run.label] = largest_radius(noise, n, alpha)
    return found


def comparison_notes(runs: Sequence[Run]) -> list[str]:
    """What differs between runs beyond the technique: every recorded setting (``setting_differences``), the
    denoiser, the images certified; files with no sidecar, whose settings are unknown; runs that stopped short of
    the images they planned."""
    notes = [f"{run.label}: no settings file ({run.path}.json), so N, alpha and data are unknown"
             + ("" if run.noise else f", and its radii are taken as {run.norm} (give --noise if not)")
             for run in runs if not run.settings]  # fmt: skip
    notes += [note for note in map(shortfall, runs) if note]
    notes += [note for note in map(denoiser_sigma_note, runs) if note]
    known = [run for run in runs if run.settings]
    notes += setting_differences(runs)
    denoisers = {run.label: (run.settings.get("denoiser") or {}) for run in known}
    if len({json.dumps(v, sort_keys=True) for v in denoisers.values()}) > 1:
        described = [f"{label} {d.get('name', 'none')}" + (f":{d['path']}" if d.get("path") else "")
                     + (f" (sha256 {d['sha256'][:8]})" if d.get("sha256") else "")
                     for label, d in denoisers.items()]  # fmt: skip
        notes.append("different denoiser: " + ", ".join(described))
    images = {run.label: sorted(row.idx for row in run.rows) for run in runs}
    if len({tuple(v) for v in images.values()}) > 1:
        counts = ", ".join(f"{label} {len(v)}" for label, v in images.items())
        notes.append(f"different images certified (counts: {counts}); accuracies are over different subsets")
    return notes


def _common(runs: Sequence[Run], key: str) -> Any:
    values = {json.dumps(run.settings.get(key)) for run in runs}
    return runs[0].settings.get(key) if len(values) == 1 else None


def caption(runs: Sequence[Run]) -> str:
    """What every run shares, for a table caption or plot title: N and alpha, and the images."""
    parts = []
    n, alpha = _common(runs, "n"), _common(runs, "alpha")
    if n is not None:
        parts.append(f"N = {n:,}")
    if alpha is not None:
        parts.append(f"α = {alpha:g}")
    counts = {len(run.rows) for run in runs}
    if len(counts) == 1:
        parts.append(f"{counts.pop()} images")
    return ", ".join(parts)


def comparison_rows(
    runs: Sequence[Run], radii: Sequence[float] | None = None, *, percent: bool = True
) -> tuple[list[str], list[list[Any]]]:
    """Header and one row per run: label, sigma, certified accuracy (percent, else fraction) at each radius, ACR.

    ``radii`` default to 0, 0.25, ... up to the largest radius any run certifies.
    """
    if radii is None:
        radii = default_radii([row for run in runs for row in run.rows])
    header = ["run", "sigma", *(f"{r:g}" for r in radii), "ACR"]
    table = []
    for run in runs:
        accuracy = certified_accuracy(run.rows, radii)
        sigma = "" if run.sigma is None else f"{run.sigma:g}"
        scale = 100 if percent else 1
        table.append([run.label, sigma, *(scale * a for a in accuracy), average_certified_radius(run.rows)])
    return header, table


def format_comparison(
    runs: Sequence[Run],
    fmt: str = "text",
    radii: Sequence[float] | None = None,
    notes: Sequence[str] = (),
    *,
    percent: bool = True,
    provenance: bool = False,
) -> str:
    """The comparison table in ``fmt`` (see ``FORMATS``), accuracies in percent (61.2) or as fractions (0.6120);
    ``notes`` go under the table (LaTeX: in the caption as comments; CSV: left out, so that the file stays plain
    CSV). ``provenance`` adds each run's ``metrics.PROVENANCE_COLUMNS`` after ACR."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    header, table = comparison_rows(runs, radii, percent=percent)
    norm = runs[0].norm
    digits = 1 if percent else 4  # as report.format_accuracy
    cells = [[row[0], row[1], *(f"{v:.{digits}f}" for v in row[2:-1]), f"{row[-1]:.3f}"] for row in table]
    origin = [provenance_cells(run.settings) for run in runs] if provenance else [[] for _ in runs]
    columns = list(PROVENANCE_COLUMNS) if provenance else []
    cells = [row + more for row, more in zip(cells, origin)]
    unit = "Certified accuracy (%)" if percent else "Certified accuracy (fraction)"
    title = f"{unit} at {norm} radius r" + (f"; {caption(runs)}" if caption(runs) else "")
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["run", "sigma", *(f"acc@{h}" for h in header[2:-1]), "acr", *columns])
        writer.writerows([[row[0], row[1], *(f"{v:.4f}" for v in row[2:-1]), f"{row[-1]:.4f}", *more]
                          for row, more in zip(table, origin)])  # fmt: skip
        return out.getvalue()
    if fmt == "latex":
        escape = str.maketrans({c: f"\\{c}" for c in "&%$#_{}"})
        latex_title = title.replace("%", "\\%").replace("α", "$\\alpha$")
        lines = [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{latex_title}.}}",
            "\\begin{tabular}{l" + "c" * (len(header) - 1 + len(columns)) + "}",
            "\\toprule",
            " & ".join(["Run", "$\\sigma$", *(f"${h}$" for h in header[2:-1]), "ACR",
                        *(c.translate(escape) for c in columns)]) + " \\\\",  # fmt: skip
            "\\midrule",
            *(" & ".join([row[0].translate(escape).replace("σ", "$\\sigma$"), *(c.translate(escape) for c in row[1:])])
              + " \\\\" for row in cells),  # fmt: skip
            "\\bottomrule",
            "\\end{tabular}",
            "\\end{table}",
        ]
        return "\n".join(lines + [f"% note: {note}" for note in notes]) + "\n"
    head = ["run", "σ", *(f"r={h}" for h in header[2:-1]), "ACR", *columns]
    if fmt == "markdown":
        lines = [f"**{title}**", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "|".join([":---", *["---:"] * (len(head) - 1)]) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines + ([""] if notes else []) + [f"- note: {note}" for note in notes]) + "\n"
    widths = [max(len(str(r[i])) for r in [head, *cells]) for i in range(len(head))]
    lines = [title, "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in cells]  # fmt: skip
    return "\n".join(lines + [f"note: {note}" for note in notes]) + "\n"


def table_format(path: StrPath | None, fmt: str | None) -> str:
    """``fmt`` if given, else the format ``path``'s extension names (``FORMATS``), else text."""
    if fmt is not None:
        return fmt
    if path is None:
        return "text"
    by_extension = {ext: name for name, ext in FORMATS.items()}
    suffix = Path(path).suffix.lower()
    if suffix not in by_extension:
        msg = f"--table {path}: the extension must be one of {', '.join(by_extension)}, or give --format"
        raise ValueError(msg)
    return by_extension[suffix]


def shared_setup(runs: Sequence[Run]) -> str:
    """The data set and the classifier every run certified (from the sidecars: model, mixer and its options,
    denoiser; ``figures.describe_classifier``), for a plot title; "" for what differs."""
    data, split, model, mixer = (_common(runs, key) for key in ("data", "split", "model", "mixer"))
    parts = [" ".join(str(x) for x in (data, split) if x)] if data else []
    classifiers = {describe_classifier(run.settings) for run in runs}
    if model and len(classifiers) == 1:
        parts.append(classifiers.pop())
    elif model:  # the model and mixer the runs share, without the options that differ
        parts.append(describe_classifier({"model": model, "mixer": mixer}))
    return ", ".join(parts)


def plot_comparison(runs: Sequence[Run], path: StrPath, p_lower: dict[str, Sequence[float]] | None = None) -> Any:
    """Certified accuracy against radius, one step curve per run (label, sigma and ACR in the legend), the norm on
    the x axis, the data set and model and what the runs share (N, alpha, images) as the title, and a dotted line
    at the largest radius each run's N can certify; ``p_lower`` (label -> p_A lower bounds) adds their histogram.
    The extension picks the format: PDF or SVG give vector figures for a paper, PNG a 200 dpi image. The legend
    covers no curve (inside where there is room, else outside). Returns the matplotlib Figure."""
    curves, largest = {}, largest_radii(runs)
    marks, spread = {}, {}
    for run in runs:
        sigma = "" if run.sigma is None or "σ" in run.label else f", σ = {run.sigma:g}"
        curves[run.label + sigma] = run.rows
        if run.label in largest:
            marks[run.label + sigma] = largest[run.label]
        if run.label in (p_lower or {}):
            spread[run.label + sigma] = p_lower[run.label]
    title = "\n".join(part for part in (shared_setup(runs), caption(runs)) if part)
    return plot_certified_accuracy(curves, path, title=title, norm=runs[0].norm, largest=marks, size=(5, 3.4),
                                   dpi=200, p_lower=spread)  # fmt: skip


def write_comparison_summary(runs: Sequence[Run], path: StrPath, radii: Sequence[float] | None = None) -> None:
    """One JSON object keyed by run label: each run's ``summarize`` numbers, its file, norm and settings."""
    out = {
        run.label: summarize(run.rows, radii) | {"file": run.path, "norm": run.norm, "run": run.settings or None}
        for run in runs
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
