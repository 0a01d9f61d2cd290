"""What an attack run reports: robust accuracy per eps as a summary, a table and a plot, and the cross-check against
a certify run (an adversarial point inside a certified radius is a break the certificate's alpha must explain).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..results.figures import place_legend, save
from ..results.files import AttackRow, Row
from ..types import ABSTAIN
from .adversaries import Adversary

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from ..types import NoiseSampler


def summarize_attack(rows: Sequence[AttackRow]) -> dict[str, Any]:
    """Per eps: images, clean and robust accuracy, abstentions and the mean perturbation; JSON-ready.

    Robust means correct on the clean image and at the adversarial point, so robust accuracy never exceeds clean
    accuracy; an abstention (-1) is never correct.
    """
    per_eps: dict[str, Any] = {}
    for e in sorted({row.eps for row in rows}):
        at = [row for row in rows if row.eps == e]
        per_eps[f"{e:g}"] = {
            "eps": e,
            "images": len(at),
            "clean_accuracy": sum(row.correct for row in at) / len(at),
            "robust_accuracy": sum(row.robust for row in at) / len(at),
            "clean_abstained": sum(row.predict == ABSTAIN for row in at),
            "adv_abstained": sum(row.adv_predict == ABSTAIN for row in at),
            "mean_perturbation": sum(row.perturbation for row in at) / len(at),
        }
    seconds = sum(row.seconds for row in rows) / len(rows) if rows else 0.0
    return {"rows": len(rows), "per_eps": per_eps, "mean_seconds": seconds}


def format_attack_table(rows: Sequence[AttackRow], title: str = "") -> str:
    """Plain-ASCII table of clean and robust accuracy (percent) per eps, for a terminal."""
    per_eps = summarize_attack(rows)["per_eps"]
    if not per_eps:
        return (f"{title}\n" if title else "") + "no (image, eps) pair to attack\n"
    cells = list(per_eps.items())
    widths = [max(len(k), 6) + 2 for k, _ in cells]
    lines = [title] if title else []
    lines.append("eps            " + "".join(k.rjust(w) for (k, _), w in zip(cells, widths)))
    for label, key in (("clean acc %   ", "clean_accuracy"), ("robust acc %  ", "robust_accuracy")):
        lines.append(label + " " + "".join(f"{100 * v[key]:.1f}".rjust(w) for (_, v), w in zip(cells, widths)))
    lines.append("images         " + "".join(str(v["images"]).rjust(w) for (_, v), w in zip(cells, widths)))
    abstained = sum(v["adv_abstained"] for _, v in cells)
    if abstained:
        lines.append(f"abstentions at the adversarial points: {abstained}")
    return "\n".join(lines) + "\n"


def plot_robust_accuracy(curves: dict[str, Sequence[AttackRow]], path, *, title: str = "", norm: str = "") -> Any:
    """Write a PNG of robust accuracy against eps, one line per label (eps = 0 is clean accuracy), the legend where
    it covers no line (``figures.place_legend``); returns the matplotlib Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: leave global state alone
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("plot_robust_accuracy() needs at least one curve in `curves`; got none")
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, rows in curves.items():
        per_eps = summarize_attack(rows)["per_eps"].values()
        xs = [v["eps"] for v in per_eps]
        ax.plot(xs, [v["robust_accuracy"] for v in per_eps], marker="o", label=label)
    ax.set(ylim=(0, 1.02), xlabel=f"eps ({norm})" if norm else "eps", ylabel="robust accuracy")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    place_legend(ax)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save(fig, path)
    return fig


def allowed_breaks(rows: Sequence[AttackRow], certify_alpha: float, predict_alpha: float) -> float:
    """The expected number of breaks if both tests are correct, at most: each attacked image's certificate fails
    with probability <= certify_alpha (one event for all its radii), and each PREDICT at an adversarial point
    errs with probability <= predict_alpha."""
    return len({row.idx for row in rows}) * certify_alpha + len(rows) * predict_alpha


def certified_breaks(rows: Sequence[AttackRow], certified: Sequence[Row]) -> list[dict[str, Any]]:
    """Every attacked (image, eps) with eps below the image's certified radius where PREDICT at the adversarial
    point returned a class other than the certified one; an abstention is not a break.

    With certification at level alpha_c and PREDICT at level alpha_p, each listed pair has probability at most
    alpha_c + alpha_p when both sides are correct, so more breaks than that rate allows point to a bug.
    """
    by_idx = {row.idx: row for row in certified if row.predict != ABSTAIN}
    breaks = []
    for row in rows:
        cert = by_idx.get(row.idx)
        if cert is None or not row.eps < cert.radius:
            continue
        if row.adv_predict not in (cert.predict, ABSTAIN):
            breaks.append(
                {"idx": row.idx, "eps": row.eps, "radius": cert.radius, "certified": cert.predict,
                 "adv_predict": row.adv_predict, "perturbation": row.perturbation}
            )  # fmt: skip
    return breaks


def certified_targets(certified: Sequence[Row]) -> tuple[dict[int, int], dict[int, float]]:
    """(class to attack, radius to stay below) per index, for the images a certify run did not abstain on."""
    kept = [row for row in certified if row.predict != ABSTAIN and row.radius > 0]
    return {row.idx: row.predict for row in kept}, {row.idx: row.radius for row in kept}


def read_certified(path: str | Path, sigma: float, noise: str) -> tuple[list[Row], float | None]:
    """The rows of a certify TSV and its alpha (None if unknown); refused if its settings sidecar (``<path>.json``,
    written by ``rs-plugins certify``) has another sigma or noise."""
    from ..results.files import read_results, read_sidecar

    rows = read_results(path)  # one row per image (files.unique_rows: identical repeats once, differing ones refused)
    stored = read_sidecar(path) or {}
    for key, value in (("sigma", sigma), ("noise", noise)):
        if key in stored and stored[key] != value:
            raise ValueError(f"--certified {path} was certified with --{key} {stored[key]}; this run has {value}")
    return rows, stored.get("alpha")


def check_certified(dataset: Dataset, certified: Sequence[Row], adversary: Adversary, noise: NoiseSampler) -> None:
    """Refuse a cross-check that cannot hold: another norm than the certificate's, or another data set (a
    certified index beyond the data, or a label that differs)."""
    if adversary.norm.lower() != str(getattr(noise, "norm", "l2")).lower():
        msg = f"--certified radii are {noise.norm} radii of the noise; the attack must use --norm {noise.norm.upper()}"
        raise ValueError(msg + f", not {adversary.norm}")
    for row in certified:
        if not 0 <= row.idx < len(dataset):
            raise ValueError(f"--certified has image {row.idx}, but --data has {len(dataset)} images")
        label = int(dataset[row.idx][1])
        if label != row.label:
            msg = f"--certified says image {row.idx} has label {row.label}, --data says {label}: not the same data"
            raise ValueError(msg)


def report_attack(
    rows: Sequence[AttackRow],
    adversary: Adversary,
    *,
    title: str = "",
    certified: Sequence[Row] | None = None,
    certified_path: str | None = None,
    alphas: tuple[float, float] = (0.001, 0.001),
    plot: str | Path | None = None,
    summary: str | Path | None = None,
    record: dict | None = None,
    plot_title: str | None = None,
) -> str:
    """The table (and cross-check) text for a terminal; writes the plot and the JSON summary when given paths.

    ``alphas`` are the certify run's and PREDICT's levels, for the number of breaks chance allows; ``record``
    (the results file's sidecar: settings and provenance) goes into the summary under ``"run"``. ``plot_title``
    (default ``title``) titles the plot: what was attacked, not where the rows are.
    """
    lines = [format_attack_table(rows, title=title)]
    data = summarize_attack(rows) | {"attack": adversary.name, "norm": adversary.norm}
    if certified is not None:
        breaks = certified_breaks(rows, certified)
        allowed = allowed_breaks(rows, *alphas)
        data["cross_check"] = {"certified": certified_path, "pairs": len(rows), "breaks": breaks}
        data["cross_check"] |= {"certify_alpha": alphas[0], "predict_alpha": alphas[1]}
        data["cross_check"]["expected_breaks_at_most"] = allowed
        lines.append(
            f"cross-check with {certified_path}: {len(rows)} (image, eps < radius) pairs, {len(breaks)} breaks "
            f"(chance allows {allowed:.2g} on average at certify alpha {alphas[0]:g}, PREDICT alpha {alphas[1]:g})"
        )
        lines += [
            f"  BREAK image {b['idx']}: certified {b['certified']} at radius {b['radius']:.4f}, "
            f"PREDICT {b['adv_predict']} at eps {b['eps']:g}"
            for b in breaks
        ]
    if plot and rows:
        plot_robust_accuracy({adversary.name: rows}, plot, title=title if plot_title is None else plot_title,
                             norm=adversary.norm)  # fmt: skip
        lines.append(f"plot: {plot}")
    if summary:
        if record is not None:
            data["run"] = record
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        Path(summary).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        lines.append(f"summary: {summary}")
    return "\n".join(lines)
