"""Published certified accuracies to print beside a run that reproduces a paper's set-up (``rs-plugins report``).

A run is matched by what its sidecar records, never by its numbers: for diffusion denoised smoothing (Carlini et
al., ICLR 2023), the released diffusion checkpoint the denoiser recognised (``denoiser.preset``). The figures are
the headline ones (SoK leaderboard, best over the paper's sigma in {0.25, 0.5, 1.0}), in percent, so a run at one
sigma is compared with the paper's best at each radius.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .files import Row
from .report import certified_accuracy


@dataclass(frozen=True)
class Published:
    """A paper's row: certified accuracy (percent) at the radii it reports, and the classifier it used."""

    label: str
    accuracy: dict[float, float]
    classifier: str  # the --model that reproduces it


CARLINI = "Carlini et al., ICLR 2023 (best over sigma 0.25/0.5/1.0; SoK leaderboard)"
CARLINI_CIFAR10 = Published(f"{CARLINI}, CIFAR-10", {0.25: 79.3, 1.0: 36.4},
                            "hf:aaraki/vit-base-patch16-224-in21k-finetuned-cifar10")  # fmt: skip
CARLINI_IMAGENET = Published(f"{CARLINI}, ImageNet", {0.5: 71.0, 1.0: 54.3, 2.0: 29.5}, "timm:beit_large_patch16_512")


def published_for(settings: dict[str, Any]) -> Published | None:
    """The published row for a run's sidecar settings, or None if it reproduces no paper listed here."""
    preset = (settings.get("denoiser") or {}).get("preset") or ""
    if preset.startswith("improved-diffusion CIFAR-10"):
        return CARLINI_CIFAR10
    if preset.startswith("guided-diffusion ImageNet 256x256"):
        return CARLINI_IMAGENET
    return None


def format_published(published: Published, rows: Sequence[Row], settings: dict[str, Any]) -> str:
    """Two lines: the paper's figures and this run's at the same radii (percent), and whether the classifier is the
    paper's."""
    radii = sorted(published.accuracy)
    ours = certified_accuracy(rows, radii)
    paper = ", ".join(f"r={r:g}: {published.accuracy[r]:.1f}" for r in radii)
    run = ", ".join(f"r={r:g}: {100 * a:.1f}" for r, a in zip(radii, ours))
    models = settings.get("model")
    models = models if isinstance(models, list) else [models]
    same = published.classifier in models
    note = "" if same else f" (the paper's classifier is --model {published.classifier})"
    return f"published: {published.label}: {paper}\nthis run ({len(rows)} images): {run}{note}\n"
