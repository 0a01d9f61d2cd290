"""``rs-plugins tradeoff``: clean, attacked and (with sigma) certified accuracy of mixed classifiers over alpha, as a
CSV table and an accuracy-robustness plot (Bai et al., SIMODS 2024).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..results.figures import place_legend, save

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..host import Host


TRADEOFF_COLUMNS = ("mixer", "alpha", "clean_accuracy", "robust_accuracy")


def tradeoff(
    mixers: dict[str, tuple[nn.Module, float | None]],
    images: Tensor,
    labels: Tensor,
    *,
    attack: str = "APGD",
    norm: str | None = "Linf",
    eps: float = 8 / 255,
    options: dict | None = None,
    sigma: float | None = None,
    radii: Sequence[float] = (),
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    host: Host | None = None,
) -> list[dict[str, Any]]:
    """Clean accuracy, robust accuracy under ``attack`` at ``eps`` through each whole mixture, and (with ``sigma``)
    certified accuracy of the mixture with the smoothed robust member at each radius, one row per mixer.

    Args:
        mixers: label -> (mixer module, its α for the table; None for the adaptive mixer, whose α_min is shown).
        images, labels: the evaluation set. Shape: (N, C, H, W) in [0, 1]; (N,).
        host: builds the ``mixed`` certifier and the ``gaussian`` noise by name (default: ``Host()``).
    """
    from ..certify.runner import image_generator
    from ..host import Host
    from .engine import attack as run_attack

    host = Host() if host is None else host

    device = torch.device(device)
    rows = []
    for label, (model, alpha_mix) in tqdm(mixers.items(), desc="trade-off", disable=not progress):
        model = model.to(device).eval()
        result = run_attack(model, images, labels, attack=attack, norm=norm, eps=[eps], options=options,
                            batch_size=batch_size, seed=seed, device=device)  # fmt: skip
        per_eps = result.summary["per_eps"][f"{eps:g}"]
        row = {"mixer": label, "alpha": "" if alpha_mix is None else alpha_mix}
        row |= {"clean_accuracy": per_eps["clean_accuracy"], "robust_accuracy": per_eps["robust_accuracy"]}
        if sigma is not None and float(getattr(model, "certified_alpha", 0)) <= 0.5:
            row |= {f"certified_{r:g}": 0.0 for r in radii}  # g may outvote h anywhere: nothing to sample
        elif sigma is not None:
            certifier, noise = host.certifier("mixed"), host.noise("gaussian", sigma=sigma)
            certificates = []
            for start in range(0, len(images), 16):
                chunk = images[start : start + 16].to(device)
                generators = [image_generator(seed, start + i, device) for i in range(len(chunk))]
                certificates += certifier.certify(model, chunk, noise, n0=n0, n=n, alpha=alpha,
                                                  batch_size=batch_size, generator=generators)  # fmt: skip
            for r in radii:
                hits = [c.prediction == int(y) and c.radius >= r for c, y in zip(certificates, labels)]
                row[f"certified_{r:g}"] = sum(hits) / len(hits)
        rows.append(row)
    return rows


def write_tradeoff(rows: list[dict[str, Any]], csv_path: str | os.PathLike, plot: str | os.PathLike | None,
                   *, title: str = "") -> Any:  # fmt: skip
    """The trade-off table as CSV and, with ``plot``, the accuracy-robustness figure (``tradeoff_figure``) as a
    PNG; returns the Figure (None without ``plot``)."""
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if plot is None:
        return None
    fig = tradeoff_figure(rows, title=title)
    save(fig, plot, dpi=120)
    return fig


def accuracy_limits(values: Sequence[float], span: float = 0.2, pad: float = 0.02) -> tuple[float, float]:
    """Axis limits for accuracies: the values with a margin, at least ``span`` wide, within [0, 1] plus ``pad``
    (so a point at 1.0 is off the frame, and a set of equal values still gets a readable axis)."""
    lo, hi = max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.05)
    if hi - lo < span:
        middle = min(max((lo + hi) / 2, span / 2), 1 - span / 2)
        lo, hi = middle - span / 2, middle + span / 2
    return lo - pad, hi + pad


def label_alphas(ax: Any, points: list[tuple[float, float, float]]) -> list[Any]:
    """Label the fixed-alpha points (x, y, alpha) with their alphas: points that fall on one spot share a label
    (``0, 0.25, 0.5``), and a label that would overlap one already placed is left out. Returns the labels kept."""
    renderer = ax.figure.canvas.get_renderer()
    spots: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
    for x, y, alpha in points:  # within 3 pixels: one spot
        px, py = ax.transData.transform((x, y))
        spots.setdefault((round(px / 3), round(py / 3)), []).append((x, y, alpha))
    kept: list[Any] = []
    for group in spots.values():
        x, y = group[0][:2]
        right = ax.transAxes.inverted().transform(ax.transData.transform((x, y)))[0] > 0.5  # the label goes inward
        text = ax.annotate(", ".join(f"{a:g}" for *_, a in group), (x, y), xytext=(-4, -4) if right else (4, 4),
                           textcoords="offset points", ha="right" if right else "left",
                           va="top" if right else "bottom", fontsize=7)  # fmt: skip
        box = text.get_window_extent(renderer)
        if any(box.overlaps(other.get_window_extent(renderer)) for other in kept):
            text.remove()
        else:
            kept.append(text)
    return kept


def tradeoff_figure(rows: list[dict[str, Any]], *, title: str = "") -> Any:
    """Clean accuracy against robust accuracy under the attack (left) and, when the rows hold them, against
    certified accuracy at each radius (right): the fixed alphas as a line with their values, each adaptive mixer
    as a star. Axes span the values (never a degenerate range); legends cover no data."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: leave global state alone
    from matplotlib.figure import Figure

    radii = [k for k in rows[0] if k.startswith("certified_")]
    fixed = [r for r in rows if r["alpha"] != "" and not str(r["mixer"]).startswith("adaptive")]
    adaptive = [r for r in rows if r not in fixed]
    panels = [("robust accuracy under the attack", ["robust_accuracy"])]
    if radii:
        panels.append(("certified accuracy of the mixture", radii))
    fig = Figure(figsize=(5.2 * len(panels), 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    ys = [r["clean_accuracy"] for r in rows]
    for ax, (name, keys) in zip(axes, panels):
        for i, key in enumerate(keys):
            colour = f"C{i}"
            suffix = "" if key == "robust_accuracy" else f", r = {key.removeprefix('certified_')}"
            if fixed:
                ax.plot([r[key] for r in fixed], [r["clean_accuracy"] for r in fixed], "o-", color=colour,
                        label=f"fixed α{suffix}")  # fmt: skip
            for j, r in enumerate(adaptive):  # a marker per adaptive mixer, the colour of its radius
                ax.plot(r[key], r["clean_accuracy"], "*PXD"[j % 4], markersize=11, color=colour, markeredgecolor="k",
                        markeredgewidth=0.5, label=f"{r['mixer']}{suffix}")  # fmt: skip
        xs = [r[key] for r in rows for key in keys]
        ax.set(xlim=accuracy_limits(xs), ylim=accuracy_limits(ys), xlabel=name, ylabel="clean accuracy")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    for ax, (_, keys) in zip(axes, panels):  # the alphas on the first curve of each panel
        label_alphas(ax, [(r[keys[0]], r["clean_accuracy"], r["alpha"]) for r in fixed])
        place_legend(ax, fontsize=8)
    return fig
