"""What every plot shares: a legend that never covers data, and a title line saying which classifier was certified.

``place_legend`` tries the corners and sides of the axes and keeps the first place where the legend's box covers
no drawn point of any line (steps as drawn, vertical marks included) and no text; with many curves there is
none, and the legend goes outside, right of the axes. The plotting functions live with their data
(``report.plot_certified_accuracy``, ``attacks.summary.plot_robust_accuracy``, ``attacks.tradeoff``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

INSIDE = ("upper right", "lower left", "upper left", "lower right", "center right", "center left", "lower center",
          "upper center", "center")  # fmt: skip
"""The places inside the axes a legend may take, in the order tried."""


def drawn_points(line: Any, step: float = 2.0) -> np.ndarray:
    """A line's points as drawn, in display pixels, at most ``step`` pixels apart (steps and vertical marks as
    they appear, not only their vertices): (P, 2); empty for a line without data (a legend-only entry)."""
    from matplotlib.cbook import STEP_LOOKUP_MAP

    x, y = (np.asarray(v, dtype=float) for v in (line.get_xdata(), line.get_ydata()))
    if x.size == 0:
        return np.zeros((0, 2))
    x, y = STEP_LOOKUP_MAP[line.get_drawstyle()](x, y)
    return densified(line.get_transform().transform(np.column_stack([x, y])), step)


def densified(points: np.ndarray, step: float = 2.0) -> np.ndarray:
    """The polyline through ``points`` (display pixels) sampled at most ``step`` pixels apart."""
    if len(points) == 0:
        return np.zeros((0, 2))
    dense = [points[:1]]
    for a, b in zip(points[:-1], points[1:]):
        count = max(1, int(np.ceil(np.hypot(*(b - a)) / step)))
        dense.append(a + (b - a) * np.linspace(0, 1, count + 1)[1:, None])
    return np.concatenate(dense)


def covers_data(ax: Any, box: Any, pad: float = 2.0) -> bool:
    """Whether the display-space ``box`` (a legend's window extent) covers a drawn point of a line of ``ax``, of a
    patch's outline (a step histogram), a point of a collection (scatter markers), or a text (annotations), with
    ``pad`` pixels of margin."""
    renderer = ax.figure.canvas.get_renderer()
    x0, y0, x1, y1 = box.x0 - pad, box.y0 - pad, box.x1 + pad, box.y1 + pad

    def inside(points: np.ndarray) -> bool:
        return bool(((points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)).any())

    if any(inside(drawn_points(line)) for line in ax.get_lines()):
        return True
    for patch in ax.patches:  # e.g. a step histogram's outline
        if inside(densified(patch.get_transform().transform(patch.get_path().vertices))):
            return True
    for collection in ax.collections:
        offsets = collection.get_offsets()
        if len(offsets) and inside(collection.get_offset_transform().transform(offsets)):
            return True
    return any(text.get_visible() and text.get_text() and text.get_window_extent(renderer).overlaps(box)
               for text in ax.texts)  # fmt: skip


def place_legend(ax: Any, **options: Any) -> Any:
    """The legend of ``ax`` where it covers no data: the first free place of ``INSIDE``, else outside the axes on
    the right (the figure is then saved with room for it, see ``save``). Call it after the data, limits and
    layout are final."""
    fig = ax.figure
    fig.canvas.draw()  # positions as they will be saved
    for loc in INSIDE:
        legend = ax.legend(loc=loc, **options)
        if not covers_data(ax, legend.get_window_extent(fig.canvas.get_renderer())):
            return legend
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **options)


def save(fig: Any, path: Any, **options: Any) -> None:
    """Save with a tight bounding box, so a legend placed outside the axes is in the file."""
    fig.savefig(path, bbox_inches="tight", **options)


def describe_classifier(settings: dict[str, Any]) -> str:
    """What a run certified, from its settings (a results file's sidecar, or the same keys): the model, a mixture
    with its mixer and options (``mix (alpha=0.9) of A + B``), a denoiser in front (``dncnn denoiser + A``)."""
    model = settings.get("model")
    models = " + ".join(map(str, model)) if isinstance(model, list) else str(model)
    if settings.get("mixer"):
        options = {k: v for k, v in (settings.get("mixer_option") or {}).items() if k != "checkpoint"}  # a path
        shown = ", ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in options.items())
        models = f"{settings['mixer']}{f' ({shown})' if shown else ''} of {models}"
    denoiser = settings.get("denoiser")
    if isinstance(denoiser, dict) and denoiser.get("name"):
        models = f"{denoiser['name']} denoiser + {models}"
    return models
