"""Comparing certification runs: one table (rows = runs, columns = certified accuracy at radii and ACR) in text,
Markdown, LaTeX or CSV, one plot with a curve per run, and the checks that make such a comparison fair.

Runs are compared only when their radii are in one norm (each file's norm comes from its sidecar; a file
without one, e.g. a paper repository's log, is Gaussian and so l2). Different N, alpha, data or images are
allowed but flagged in the table's notes, since they change what the numbers mean.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import (
    Row,
    StrPath,
    average_certified_radius,
    certified_accuracy,
    default_radii,
    read_results,
    read_sidecar,
    summarize,
)

FORMATS = {"text": ".txt", "markdown": ".md", "latex": ".tex", "csv": ".csv"}
"""``--format`` choices and the ``--table`` file extension that selects each."""


@dataclass
class Run:
    """One results file to compare: its rows, its sidecar settings ({} if none), and the radius norm."""

    label: str
    path: str
    rows: list[Row]
    settings: dict[str, Any] = field(default_factory=dict)
    norm: str = "l2"

    @property
    def sigma(self) -> float | None:
        return self.settings.get("sigma")


def radius_norm(settings: dict[str, Any]) -> str:
    """The norm of a results file's radii: its noise's (built from the sidecar's settings), l2 without a sidecar."""
    if "noise" not in settings:
        return "l2"  # the paper repos' logs and files written without settings are Gaussian
    from .errors import RsPluginError
    from .host import Host

    try:
        return Host().noise(settings["noise"], sigma=settings["sigma"], **settings.get("noise_option", {})).norm
    except (RsPluginError, ValueError, KeyError, TypeError) as err:
        print(f"rs-plugins: warning: cannot tell the radius norm of noise {settings['noise']!r} ({err})")
        return f"unknown ({settings['noise']})"


def default_label(path: str, settings: dict[str, Any]) -> str:
    """``<noise> σ=<sigma>`` from the sidecar, else the file name without its extension."""
    if "noise" in settings and "sigma" in settings:
        return f"{settings['noise']} σ={settings['sigma']:g}"
    return Path(path).stem


def load_runs(paths: Sequence[StrPath], labels: Sequence[str] | None = None) -> list[Run]:
    """Read the files, label them (``labels`` one per file, else ``default_label``; repeated defaults fall back to
    file names), and refuse files whose radii are in different norms.

    Raises:
        ValueError: a wrong number of labels, or radii in more than one norm.
    """
    paths = [str(p) for p in paths]
    if labels and len(labels) != len(paths):
        raise ValueError(f"--label: give one per results file; got {len(labels)} labels for {len(paths)} files")
    settings = [read_sidecar(p) or {} for p in paths]
    if not labels:
        labels = [default_label(p, s) for p, s in zip(paths, settings)]
        if len(set(labels)) < len(labels):
            labels = [Path(p).stem if labels.count(label) > 1 else label for p, label in zip(paths, labels)]
    if len(set(labels)) < len(labels):
        raise ValueError(f"--label: each run needs its own label; got {list(labels)}")
    runs = [Run(label, p, read_results(p), s, radius_norm(s)) for label, p, s in zip(labels, paths, settings)]
    norms = {run.norm for run in runs}
    if len(norms) > 1:
        found = ", ".join(f"{run.path}: {run.norm}" for run in runs)
        msg = f"radii in different norms cannot be compared: report takes files with radii in one norm ({found})"
        raise ValueError(msg)
    return runs


def comparison_notes(runs: Sequence[Run]) -> list[str]:
    """What differs between runs beyond the technique: N, alpha, n0, data, split, the images certified; and files
    with no sidecar, whose settings are unknown."""
    notes = [f"{run.label}: no settings file ({run.path}.json), so N, alpha and data are unknown"
             for run in runs if not run.settings]  # fmt: skip
    known = [run for run in runs if run.settings]
    for key, name in (("n", "N"), ("alpha", "alpha"), ("n0", "n0"), ("data", "data"), ("split", "split")):
        values = {run.label: run.settings.get(key) for run in known}
        if len({json.dumps(v) for v in values.values()}) > 1:
            notes.append(f"different {name}: " + ", ".join(f"{label} {v}" for label, v in values.items()))
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


def comparison_rows(runs: Sequence[Run], radii: Sequence[float] | None = None) -> tuple[list[str], list[list[Any]]]:
    """Header and one row per run: label, sigma, certified accuracy (%) at each radius, ACR.

    ``radii`` default to 0, 0.25, ... up to the largest radius any run certifies.
    """
    if radii is None:
        radii = default_radii([row for run in runs for row in run.rows])
    header = ["run", "sigma", *(f"{r:g}" for r in radii), "ACR"]
    table = []
    for run in runs:
        accuracy = certified_accuracy(run.rows, radii)
        sigma = "" if run.sigma is None else f"{run.sigma:g}"
        table.append([run.label, sigma, *(100 * a for a in accuracy), average_certified_radius(run.rows)])
    return header, table


def format_comparison(
    runs: Sequence[Run], fmt: str = "text", radii: Sequence[float] | None = None, notes: Sequence[str] = ()
) -> str:
    """The comparison table in ``fmt`` (see ``FORMATS``); ``notes`` go under the table (LaTeX: in the caption
    as comments; CSV: left out, so that the file stays plain CSV)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    header, table = comparison_rows(runs, radii)
    norm = runs[0].norm
    cells = [[row[0], row[1], *(f"{v:.1f}" for v in row[2:-1]), f"{row[-1]:.3f}"] for row in table]
    title = f"Certified accuracy (%) at {norm} radius r" + (f"; {caption(runs)}" if caption(runs) else "")
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["run", "sigma", *(f"acc@{h}" for h in header[2:-1]), "acr"])
        writer.writerows([[row[0], row[1], *(f"{v:.4f}" for v in row[2:-1]), f"{row[-1]:.4f}"] for row in table])
        return out.getvalue()
    if fmt == "latex":
        escape = str.maketrans({c: f"\\{c}" for c in "&%$#_{}"})
        latex_title = title.replace("%", "\\%").replace("α", "$\\alpha$")
        lines = [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{latex_title}.}}",
            "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
            "\\toprule",
            " & ".join(["Run", "$\\sigma$", *(f"${h}$" for h in header[2:-1]), "ACR"]) + " \\\\",
            "\\midrule",
            *(" & ".join([row[0].translate(escape).replace("σ", "$\\sigma$"), *row[1:]]) + " \\\\" for row in cells),
            "\\bottomrule",
            "\\end{tabular}",
            "\\end{table}",
        ]
        return "\n".join(lines + [f"% note: {note}" for note in notes]) + "\n"
    head = ["run", "σ", *(f"r={h}" for h in header[2:-1]), "ACR"]
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


def plot_comparison(runs: Sequence[Run], path: StrPath) -> None:
    """Certified accuracy against radius, one step curve per run (label, sigma and ACR in the legend), the norm on
    the x axis and what the runs share (N, alpha, images) as the title. The extension picks the format: PDF or
    SVG give vector figures for a paper, PNG a 200 dpi image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: leave global state alone
    from matplotlib.figure import Figure

    tops = [row.radius for run in runs for row in run.rows if row.correct]
    end = 1.05 * max(tops, default=0.0) or 1.0
    fig = Figure(figsize=(5, 3.4), dpi=200)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for run in runs:
        # Accuracy holds its value up to and including each certified radius, then drops: step "pre".
        xs = [0.0, *sorted({row.radius for row in run.rows if row.correct and row.radius > 0})]
        ys = certified_accuracy(run.rows, xs)
        sigma = "" if run.sigma is None or "σ" in run.label else f", σ = {run.sigma:g}"
        label = f"{run.label}{sigma} (ACR {average_certified_radius(run.rows):.3f})"
        ax.step([*xs, end], [*ys, 0.0], where="pre", label=label)
    ax.set(xlim=(0, end), ylim=(0, 1), xlabel=f"{runs[0].norm} radius", ylabel="certified accuracy")
    ax.set_title(caption(runs), fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def write_comparison_summary(runs: Sequence[Run], path: StrPath, radii: Sequence[float] | None = None) -> None:
    """One JSON object keyed by run label: each run's ``summarize`` numbers, its file, norm and settings."""
    out = {
        run.label: summarize(run.rows, radii) | {"file": run.path, "norm": run.norm, "run": run.settings or None}
        for run in runs
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
