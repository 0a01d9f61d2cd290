"""The metrics beside certified accuracy: the distribution of the p_A lower bounds from a run's counts log, the ACR
caveat, and a run's provenance as table columns.

Certified accuracy at fixed radii is the headline. ACR stays, with its caveat: a training trick can raise it while
clean accuracy falls (an ICML 2025 paper reaches ACR 0.760 at 59.3 % clean accuracy against Consistency's 0.716 at
64.1 %), so the distribution of p_A is shown instead of a single mean radius.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .counts import counts_path, read_counts
from .files import recorded

StrPath = str | os.PathLike[str]
ACR_CAVEAT = (
    "ACR can be raised at the cost of accuracy (a training trick reached 0.760 at 59.3% clean accuracy against "
    "0.716 at 64.1%; ICML 2025): compare certified accuracy at fixed radii first"
)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
PROVENANCE_COLUMNS = ("certifier", "n0", "N", "alpha", "seed", "subset", "model_sha256", "recertified_from")
"""The columns ``report --provenance`` adds to the comparison table, from each run's sidecar."""


def run_counts(path: StrPath, sidecar: dict[str, Any] | None) -> Path | None:
    """A results file's counts log: the one beside it, else the one it was recertified from; None if neither."""
    beside = counts_path(path)
    if beside.is_file():
        return beside
    source = (sidecar or {}).get("recertified_from")
    if isinstance(source, str) and (Path(path).parent / source).is_file():
        return Path(path).parent / source
    return None


def p_lower_bounds(path: StrPath, sidecar: dict[str, Any] | None) -> list[float] | None:
    """Per image of a results file, the one-sided Clopper-Pearson lower bound at the run's alpha on the probability
    of its class (the top class of its n0 votes, or its label where the run drew none), from the estimation votes
    of its counts log (for a sequential run, those at its last look); None without a counts log or alpha."""
    from ..certify.stats import clopper_pearson_lower  # results sits below certify: a lazy import

    log = run_counts(path, sidecar)
    alpha = (sidecar or {}).get("alpha")
    if log is None or not isinstance(alpha, (int, float)):
        return None
    classes = recorded(sidecar, "num_classes")
    rows = read_counts(log, classes if isinstance(classes, int) else None)
    if not rows:
        return None
    hits, totals = [], []
    for row in rows:
        votes, chosen = row.counts.estimation, row.counts.selection
        top = row.label if chosen is None else max(range(len(chosen)), key=lambda c: (chosen[c], -c))
        hits.append(votes[top] if top < len(votes) else 0)
        totals.append(sum(votes))
    return [float(p) for p in clopper_pearson_lower(hits, totals, alpha)]


def quantiles(values: Sequence[float]) -> dict[str, float]:
    """The 10th, 25th, 50th, 75th and 90th percentiles (linear interpolation) and the mean."""
    ordered = sorted(values)
    found = {}
    for q in QUANTILES:
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        found[f"q{round(100 * q)}"] = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return found | {"mean": sum(ordered) / len(ordered), "images": len(ordered)}


def format_quantiles(values: Sequence[float]) -> str:
    """One line for a terminal: the p_A lower bounds' quantiles."""
    found = quantiles(values)
    cells = ", ".join(f"{k} {v:.3f}" for k, v in found.items() if k.startswith("q"))
    return f"p_A lower bound: {cells} (over {found['images']} images; counts log)"


def draw_histogram(ax: Any, p_lower: dict[str, Sequence[float]]) -> None:
    """The p_A lower bounds of each run as a step histogram on ``ax`` (bins of 0.02 over [0, 1])."""
    bins = [i / 50 for i in range(51)]
    for label, values in p_lower.items():
        ax.hist(values, bins=bins, histtype="step", label=label, linewidth=1.2)
    from matplotlib.ticker import MaxNLocator

    ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set(xlim=(0, 1), xlabel="p_A lower bound at α (from the counts log)", ylabel="images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(p_lower) > 1:
        ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)


def provenance_cells(settings: dict[str, Any]) -> list[str]:
    """A run's ``PROVENANCE_COLUMNS`` from its sidecar ('' where it records none)."""
    certifier = settings.get("certifier", "")
    options = settings.get("certifier_option")
    if certifier and options:
        certifier += " " + ",".join(f"{k}={v}" for k, v in options.items())
    subset = recorded(settings, "subset") or {}
    defaults = {"start": 0, "max": None, "every": 1, "limit": None}
    subset = ",".join(f"{k}={v}" for k, v in subset.items() if v != defaults.get(k)) or ("all" if subset else "")
    values = [certifier, settings.get("n0"), settings.get("n"), settings.get("alpha"), settings.get("seed"), subset,
              str(settings.get("model_sha256") or "")[:12], settings.get("recertified_from")]  # fmt: skip
    return ["" if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for v in values]
