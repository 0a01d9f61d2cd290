"""Certification results read back: metrics (certified accuracy, ACR), tables, plots, provenance lines.

The TSV is the one Cohen et al.'s ``certify.py`` writes (``idx label predict radius correct time``) plus a
``samples`` column (noise samples drawn for the image), so logs from the reference repositories, which lack
it, can be read and compared with ours (``files``). Abstentions and wrong predictions count as radius 0 in every metric.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rs_plugins.types import ABSTAIN

from .figures import place_legend, save
from .files import RECORD_KEYS, Row

StrPath = str | os.PathLike[str]
log = logging.getLogger(__name__)


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


def radius_formula(noise: Any, certifier: Any = None) -> str:
    """The qualified name of what turns a certificate's bound into its radius, for the sidecar: the certifier's
    ``radius_formula`` if it declares one (a radius of its own), else its noise's ``radius``."""
    own = getattr(certifier, "radius_formula", None)
    return str(own) if own else f"{type(noise).__module__}.{type(noise).__qualname__}.radius"


def largest_radius(noise: Any, n: int, alpha: float) -> float:
    """The largest radius N samples can certify: ``noise.radius`` at the one-sided Clopper-Pearson lower bound
    with all ``n`` votes for the top class, alpha**(1/n) (Cohen et al.'s CERTIFY at level ``alpha``)."""
    from ..certify.stats import clopper_pearson_lower

    return float(noise.radius(float(clopper_pearson_lower(n, n, alpha))))


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
    """Headline numbers as a JSON-serialisable dict, certified accuracy at the table radii first; radii default to
    ``default_radii(rows)``."""
    radii = default_radii(rows) if radii is None else list(radii)
    return {
        "certified_accuracy": dict(zip(map(_key, radii), certified_accuracy(rows, radii), strict=True)),
        "certified_accuracy_at_0": certified_accuracy(rows, [0.0])[0],
        "images": len(rows),
        "abstained": sum(row.predict == ABSTAIN for row in rows),
        "acr": average_certified_radius(rows),
        "mean_samples": mean_samples(rows),
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
    p_lower: dict[str, Sequence[float]] | None = None,
) -> Any:
    """Plot certified accuracy against radius, one step curve per label, ACR in the legend; ``largest`` (label ->
    the largest radius the run's N can certify, see ``largest_radius``) adds a dotted line for each, in its
    curve's colour (grey where runs share it). ``p_lower`` (label -> each image's p_A lower bound, from the
    counts log) adds a histogram panel to the right. Each legend goes where it covers no data, else outside the
    axes (``figures.place_legend``). The extension of ``path`` picks the format (PDF/SVG: vector; PNG at
    ``dpi``). Returns the matplotlib Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: leave global state alone
    from matplotlib.figure import Figure

    if not curves:
        msg = "plot_certified_accuracy() needs at least one curve in `curves`; got none"
        raise ValueError(msg)
    largest = {label: r for label, r in (largest or {}).items() if label in curves and math.isfinite(r) and r > 0}
    tops = [row.radius for rows in curves.values() for row in rows if row.correct]
    end = 1.05 * max([*tops, *largest.values()], default=0.0) or 1.0
    p_lower = {label: v for label, v in (p_lower or {}).items() if label in curves and len(v)}
    fig = Figure(figsize=(size[0] * (1.8 if p_lower else 1), size[1]), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if p_lower else 1, 1)
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
    if p_lower:
        from .metrics import draw_histogram

        draw_histogram(fig.add_subplot(1, 2, 2), p_lower)
    fig.tight_layout()
    for panel in [ax, *(other for other in fig.axes[1:] if other.get_legend())]:
        place_legend(panel, fontsize="small")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save(fig, path)
    return fig


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
