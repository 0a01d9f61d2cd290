"""A run beside the authors' published row: certified accuracy at each of their radii and the ACR, the difference,
and whether the published value lies within the run's 95% sampling interval for the number of images certified.

The interval is Clopper and Pearson's exact two-sided 95% interval for a proportion from the run's images (for
the ACR, mean +- 1.96 standard errors): on 100 images it spans about +-10 points at 50%, so agreement there says
"consistent", not "equal". The published row is over the authors' own subset; compare like with like (the
protocol ``zoo certify`` follows by default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from scipy.stats import beta

from ...results.files import Row
from ...results.report import average_certified_radius, certified_accuracy

LEVEL = 0.95


def accuracy_interval(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Clopper-Pearson two-sided interval for k successes in n (as fractions)."""
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.isf(tail, k + 1, n - k))
    return low, high


def acr_interval(rows: Sequence[Row], level: float = LEVEL) -> tuple[float, float]:
    """Normal-approximation interval for the ACR from the per-image certified radii (0 where wrong)."""
    values = [row.radius if row.correct else 0.0 for row in rows]
    n = len(values)
    mean = sum(values) / n
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("inf")
    half = 1.959963984540054 * spread / math.sqrt(n)
    return mean - half, mean + half


def compare(rows: Sequence[Row], published: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per published radius (then the ACR): published and measured values (percent; ACR as is), the
    difference, the run's interval, and whether the published value lies within it."""
    n = len(rows)
    radii = sorted((float(r), float(a)) for r, a in published["accuracy"].items())
    measured = certified_accuracy(rows, [r for r, _ in radii])
    found = []
    for (radius, paper), fraction in zip(radii, measured):
        low, high = accuracy_interval(round(fraction * n), n)
        found.append({"radius": radius, "published": paper, "measured": 100 * fraction,
                      "difference": 100 * fraction - paper, "interval": (100 * low, 100 * high),
                      "within": 100 * low - 0.05 <= paper <= 100 * high + 0.05})  # fmt: skip (table rounding)
    if published.get("acr") is not None:
        acr, (low, high) = average_certified_radius(rows), acr_interval(rows)
        found.append({"radius": "ACR", "published": published["acr"], "measured": acr,
                      "difference": acr - published["acr"], "interval": (low, high),
                      "within": low - 5e-4 <= published["acr"] <= high + 5e-4})  # fmt: skip
    return found


def format_comparison(rows: Sequence[Row], published: dict[str, Any], title: str = "") -> str:
    """``compare`` as a table a person reads: a column per radius, rows published / this run / difference /
    within the interval."""
    found = compare(rows, published)
    head = ["radius", *(f"{c['radius']:.2f}" if c["radius"] != "ACR" else "ACR" for c in found)]

    def cell(c: dict, key: str) -> str:
        value = c[key]
        if c["radius"] == "ACR":
            return f"{value:+.3f}" if key == "difference" else f"{value:.3f}"
        return f"{value:+.1f}" if key == "difference" else f"{value:.1f}"

    table = [
        head,
        ["published %", *(cell(c, "published") for c in found)],
        ["this run %", *(cell(c, "measured") for c in found)],
        ["difference", *(cell(c, "difference") for c in found)],
        [f"in {LEVEL:.0%} interval", *("yes" if c["within"] else "NO" for c in found)],
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = [title] if title else []
    lines.append(f"published: {published['source']}, {published['images']} images")
    lines += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths)))
              for line in table]  # fmt: skip
    misses = sum(not c["within"] for c in found)
    lines.append(
        f"this run: {len(rows)} images; the intervals are those of {len(rows)} images "
        + ("(every published value lies within)" if not misses else f"({misses} published values lie outside)")
    )
    return "\n".join(lines) + "\n"
