"""PREDICT files in a report: the smoothed classifier's accuracy and abstentions, never radii.

``rs-plugins predict`` (Cohen et al.'s PREDICT) returns a class or abstains; it certifies nothing, so its file has
no radius column and ``report`` shows what it measured: accuracy, abstentions and wrong answers, one row per run.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..types import ABSTAIN
from .files import PREDICT_COLUMNS, Row, StrPath
from .metrics import PROVENANCE_COLUMNS, provenance_cells

PREDICT_KIND = "predict"
CERTIFY_KIND = "certify"


def results_kind(path: StrPath) -> str:
    """``"predict"`` for a file ``rs-plugins predict`` wrote (no radius column), else ``"certify"``."""
    with Path(path).open(encoding="utf-8", errors="replace") as f:  # the header alone: the rows are read elsewhere
        header = tuple(f.readline().rstrip("\n").split("\t"))
    return PREDICT_KIND if header == PREDICT_COLUMNS else CERTIFY_KIND


def summarize_predictions(rows: Sequence[Row]) -> dict[str, Any]:
    """Images, accuracy, abstentions and wrong predictions (fractions of all images), JSON-ready."""
    if not rows:
        raise ValueError("summarize_predictions() needs at least one row; got none")
    abstained = sum(row.predict == ABSTAIN for row in rows)
    correct = sum(row.correct for row in rows)
    return {
        "kind": PREDICT_KIND,
        "images": len(rows),
        "accuracy": correct / len(rows),
        "abstained": abstained,
        "abstention_rate": abstained / len(rows),
        "wrong": len(rows) - correct - abstained,
        "mean_seconds": sum(row.seconds for row in rows) / len(rows),
    }


def format_predictions(rows: Sequence[Row], title: str = "") -> str:
    """A few lines for a terminal: accuracy, abstentions and wrong answers of one PREDICT run."""
    s = summarize_predictions(rows)
    n = s["images"]
    lines = [title] if title else []
    lines.append("the smoothed classifier's PREDICT: a class or an abstention per image, no radii (it certifies "
                 "nothing)")
    lines.append(f"accuracy {100 * s['accuracy']:.1f}% ({n - s['abstained'] - s['wrong']} of {n}), "
                 f"abstained {100 * s['abstention_rate']:.1f}% ({s['abstained']}), "
                 f"wrong {100 * s['wrong'] / n:.1f}% ({s['wrong']})")  # fmt: skip
    return "\n".join(lines) + "\n"


def prediction_table(
    runs: Sequence[Any], fmt: str, notes: Sequence[str] = (), *, percent: bool = True, provenance: bool = False
) -> str:
    """One row per PREDICT run (``compare.Run``): label, σ, N, accuracy, abstained, wrong, images, and with
    ``provenance`` the ``metrics.PROVENANCE_COLUMNS``; in ``fmt`` (text, markdown, latex, csv), notes under it as
    ``compare.format_comparison`` puts them."""
    scale, digits = (100, 1) if percent else (1, 4)
    extra = list(PROVENANCE_COLUMNS) if provenance else []
    head = ["run", "σ", "N", "accuracy", "abstained", "wrong", "images", *extra]
    cells = []
    for run in runs:
        s = summarize_predictions(run.rows)
        shares = (s["accuracy"], s["abstention_rate"], s["wrong"] / s["images"])
        sigma = "" if run.sigma is None else f"{run.sigma:g}"
        n = run.settings.get("n")
        origin = [str(c) for c in provenance_cells(run.settings)] if provenance else []
        cells.append([run.label, sigma, "" if n is None else f"{n:,}", *(f"{scale * v:.{digits}f}" for v in shares),
                      str(s["images"]), *origin])  # fmt: skip
    unit = "%" if percent else "fraction"
    title = f"Smoothed classifier's PREDICT: accuracy, abstained and wrong ({unit}); no radii"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["run", "sigma", "n", "accuracy", "abstained", "wrong", "images", *extra])
        writer.writerows([[c[0], c[1], c[2].replace(",", ""), *c[3:]] for c in cells])
        return out.getvalue()
    if fmt == "latex":
        escape = str.maketrans({c: f"\\{c}" for c in "&%$#_{}"})
        lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{title.replace('%', chr(92) + '%')}.}}",
                 "\\begin{tabular}{l" + "c" * (len(head) - 1) + "}", "\\toprule",
                 " & ".join(["Run", "$\\sigma$", "$N$", "Accuracy", "Abstained", "Wrong", "Images",
                             *(c.replace("_", "\\_") for c in extra)]) + " \\\\",
                 "\\midrule", *(" & ".join([c[0].translate(escape).replace("σ", "$\\sigma$"), *c[1:]]) + " \\\\"
                                for c in cells), "\\bottomrule", "\\end{tabular}", "\\end{table}"]  # fmt: skip
        return "\n".join(lines + [f"% note: {note}" for note in notes]) + "\n"
    if fmt == "markdown":
        rule = "|" + "|".join([":---", *["---:"] * (len(head) - 1)]) + "|"
        lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", rule]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines + ([""] if notes else []) + [f"- note: {note}" for note in notes]) + "\n"
    widths = [max(len(r[i]) for r in [head, *cells]) for i in range(len(head))]
    lines = [title] + ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                       for r in [head, *cells]]  # fmt: skip
    return "\n".join(lines + [f"note: {note}" for note in notes]) + "\n"
