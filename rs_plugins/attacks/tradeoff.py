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
                   *, title: str = "") -> None:  # fmt: skip
    """The trade-off table as CSV and, with ``plot``, the accuracy-robustness curve as a PNG."""
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    fixed = [r for r in rows if r["alpha"] != "" and not str(r["mixer"]).startswith("adaptive")]
    if fixed:
        ax.plot([r["robust_accuracy"] for r in fixed], [r["clean_accuracy"] for r in fixed], "o-", label="fixed α")
        for r in fixed:
            ax.annotate(f"{r['alpha']:g}", (r["robust_accuracy"], r["clean_accuracy"]), fontsize=7)
    for r in rows:
        if r not in fixed:
            ax.plot(r["robust_accuracy"], r["clean_accuracy"], "*", markersize=12, label=str(r["mixer"]))
    ax.set_xlabel("robust accuracy")
    ax.set_ylabel("clean accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    plt.close(fig)
