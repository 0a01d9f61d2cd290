"""The decision half of a certifier: certificates from vote counts.

``certify`` (fresh samples) and ``certify_counts`` (a counts log, ``recertify``) share these functions, so a row
recertified with the same certifier and alpha equals the original one exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import NeedsFreshSamplesError
from ..types import ABSTAIN, Certificate, Counts
from .stats import binomial_pvalue, clopper_pearson_lower

if TYPE_CHECKING:
    from torch import Tensor

    from ..types import NoiseSampler

NO_SELECTION = (
    "class_selection=n0 picks the class on the n0 selection pass, and these counts have none (the run used "
    "class_selection=label, or was a predict run); recertify with class_selection=label, or certify anew"
)


def choose_classes(counts_n0: Tensor | None, class_selection: str, labels: Tensor | None, images: int) -> Tensor:
    """The class to certify per image: the top of the n0 counts (first on ties), or the label (evaluation only).

    Shape: counts_n0 (B, K) or None; labels (B,) or None. returns: (B,) int64 on the CPU.
    """
    if class_selection == "label":
        if labels is None:
            raise ValueError("class_selection='label' needs the labels: pass labels=(B,) tensor")
        labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
        if labels.shape != (images,):
            raise ValueError(f"labels must have shape ({images},), one per image; got {tuple(labels.shape)}")
        return labels
    if counts_n0 is None:
        raise NeedsFreshSamplesError(NO_SELECTION)
    return counts_n0.argmax(1)


def records(
    estimation: Tensor,
    selection: Tensor | None = None,
    looks: Sequence[Sequence[tuple[int, Sequence[int]]]] | None = None,
    extra: dict[str, Any] | None = None,
) -> list[Counts]:
    """One ``Counts`` per image from (B, K) tensors (``looks``: per image, (samples, counts) at each look)."""
    selection_rows = [None] * len(estimation) if selection is None else [tuple(r) for r in selection.tolist()]
    looks = looks or [()] * len(estimation)
    return [
        Counts(
            tuple(row),
            chosen,
            tuple((int(size), tuple(int(v) for v in votes)) for size, votes in image_looks),
            dict(extra or {}),
        )
        for row, chosen, image_looks in zip(estimation.tolist(), selection_rows, looks)
    ]


def cohen_from_counts(
    top: Tensor,
    counts_n: Tensor,
    noise: NoiseSampler,
    alpha: float,
    spent: int | Sequence[int],
    counts: Sequence[Counts | None] | None = None,
) -> list[Certificate]:
    """CERTIFY's decision: the one-sided Clopper-Pearson bound on class ``top`` from the estimation counts at level
    ``alpha``, the noise's radius for it, abstaining below 1/2. ``spent`` selection samples are added to each
    image's ``samples``; ``counts`` (one per image) go into the certificates.
    """
    n = counts_n.sum(1)
    n_top = counts_n.gather(1, top[:, None]).squeeze(1)
    p_lower = torch.as_tensor(clopper_pearson_lower(n_top.numpy(), n.numpy(), alpha), dtype=torch.float64)
    radii = noise.radius(p_lower)
    counts = counts or [None] * len(top)
    spent = [spent] * len(top) if isinstance(spent, int) else list(spent)
    return [
        Certificate(int(c), float(r), float(p), s + int(m), record)
        if p >= 0.5
        else Certificate(ABSTAIN, 0.0, float(p), s + int(m), record)
        for c, r, p, s, m, record in zip(top.tolist(), radii.tolist(), p_lower.tolist(), spent, n.tolist(), counts)
    ]


def selection_spent(counts_n0: Tensor | None, class_selection: str, images: int) -> list[int]:
    """Selection samples per image that a certificate from counts rests on: the n0 pass's votes, none with the
    label (what a run with that class selection draws)."""
    if counts_n0 is None or class_selection == "label":
        return [0] * images
    return [int(v) for v in counts_n0.sum(1).tolist()]


def predict_from_counts(counts: Tensor, alpha: float) -> list[int]:
    """PREDICT's decision: the top class where a two-sided binomial test at ``alpha`` tells it from the runner-up
    (Cohen et al.), else ABSTAIN. Shape: counts (B, K)."""
    top2_counts, top2 = counts.topk(2, dim=1)
    return [
        int(c) if binomial_pvalue(n_a, n_a + n_b) <= alpha else ABSTAIN
        for c, (n_a, n_b) in zip(top2[:, 0].tolist(), top2_counts.tolist())
    ]
