"""CPM: the runner-up classes grouped into a few buckets chosen on the selection sample, after Delattre et al. (2025).

Reference: B. Delattre, P. Caillon, Q. Barthélemy, E. Fagnou, A. Allauzen. "Bridging the Theoretical Gap in
Randomized Smoothing", AISTATS 2025 (OpenReview AZ6T7HdCRt); code: blaisedelattre/bridging_the_gap_rs,
``Smooth.certify_from_log_cpm`` with ``mode="Rmulti"``, which the tests match on identical counts.

On the n0 selection votes, classes are ranked (ties to the lower class index): the top class I1 and the runner-up I2
get a bucket each; while the votes of the remaining classes sum to more than I2's, the largest of them gets its own
bucket; whatever remains is one last bucket. With B buckets, each bound is at level alpha/B (Bonferroni): a one-sided
Clopper-Pearson lower bound p_A on I1's estimation votes, and upper bounds on each other bucket's summed votes;
p_B is the largest of those. The radius is sigma/2 (Phi^-1(p_A) - Phi^-1(p_B)), abstaining where it is negative.

Sound by construction: the buckets depend on the selection draws only, so each bound holds with probability
1 - alpha/B on the estimation draws and all of them with 1 - alpha; the class that holds the true runner-up
probability lies in some other bucket, whose probability is at least that class's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import norm
from torch import Tensor, nn

import rs_plugins
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.from_counts import records
from rs_plugins.certify.sampling import eval_mode, per_image_generators, sample_counts
from rs_plugins.certify.smoothing import check_images, check_sampling
from rs_plugins.certify.stats import clopper_pearson_lower, clopper_pearson_upper
from rs_plugins.errors import IncompatibleComponentsError, NeedsFreshSamplesError
from rs_plugins.results.provenance import describe
from rs_plugins.types import ABSTAIN, Certificate, CertifierSpec, NoiseSampler

DELATTRE = "Delattre et al., AISTATS 2025 (OpenReview AZ6T7HdCRt)"


def cpm_buckets(selection: Sequence[int]) -> list[list[int]]:
    """The class buckets chosen on the selection votes: [I1], [I2], a bucket per further class while the rest's
    votes outnumber I2's, then the rest (if any). Ranking is by votes, ties to the lower class index."""
    order = sorted(range(len(selection)), key=lambda c: (-selection[c], c))
    buckets, rest = [order[:1], order[1:2]], order[2:]
    remaining = sum(selection[c] for c in rest)
    while rest and remaining > selection[order[1]]:
        buckets.append([rest[0]])  # the largest of the rest: the first of a descending order
        remaining -= selection[rest.pop(0)]
    return buckets + ([rest] if rest else [])


def cpm_bounds(selection: Tensor, estimation: Tensor, alpha: float) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Per image of (B, K) votes: the top class, the lower bound on its probability and the upper bound on the
    runner-up's, each at alpha / (that image's number of buckets). The bounds are computed in one call each."""
    tops, hits, totals, levels, owners, others = [], [], [], [], [], []
    for image, (chosen, votes) in enumerate(zip(selection.tolist(), estimation.tolist())):
        buckets = cpm_buckets(chosen)
        level, n = alpha / len(buckets), sum(votes)
        tops.append(buckets[0][0])
        hits.append(votes[buckets[0][0]])
        totals.append(n)
        levels.append(level)
        for bucket in buckets[1:]:
            owners.append(image)
            others.append((sum(votes[c] for c in bucket), n, level))
    p_a = clopper_pearson_lower(np.array(hits), np.array(totals), np.array(levels))
    votes, n, level = (np.array(column) for column in zip(*others))
    upper = clopper_pearson_upper(votes, n, level)
    p_b = np.full(len(tops), -np.inf)
    np.maximum.at(p_b, np.array(owners), upper)
    return tops, p_a, p_b


def cpm_certificates(
    selection: Tensor, estimation: Tensor, sigma: float, alpha: float, counts=None
) -> list[Certificate]:
    """CPM's certificate per image from (B, K) selection and estimation votes."""
    counts = counts or [None] * len(selection)
    tops, p_a, p_b = cpm_bounds(selection, estimation, alpha)
    with np.errstate(invalid="ignore"):
        radii = sigma / 2 * (norm.ppf(p_a) - norm.ppf(p_b))
    samples = (selection.sum(1) + estimation.sum(1)).tolist()
    return [
        Certificate(c, float(r), float(p), s, rec) if r >= 0 else Certificate(ABSTAIN, 0.0, float(p), s, rec)
        for c, r, p, s, rec in zip(tops, radii, p_a, samples, counts)
    ]


class CpmCertifier:
    """Class-partitioned multiclass certificate (CPM, Delattre et al. 2025; Gaussian noise, l2).

    Like ``feng`` it bounds the runner-up instead of taking 1 - p_A, but it pays a Bonferroni factor of the number of
    buckets (usually 3-4) rather than spending half of alpha, and it bounds a bucket's summed probability.
    """

    def certify(
        self,
        model: nn.Module,
        x: Tensor,
        noise: NoiseSampler,
        *,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        generator=None,
    ) -> list[Certificate]:
        _check_noise(noise)
        check_images(x)
        check_sampling(n0=n0, n=n, alpha=alpha, batch_size=batch_size)
        generators = per_image_generators(generator, len(x))
        with eval_mode(model):
            selection = sample_counts(model, x, noise, n0, batch_size=batch_size, generator=generators)
            estimation = sample_counts(model, x, noise, n, batch_size=batch_size, generator=generators)
        return cpm_certificates(selection, estimation, noise.sigma, alpha, records(estimation, selection))

    def certify_counts(
        self, counts_n0: Tensor | None, counts_n: Tensor, noise: NoiseSampler, *, alpha: float
    ) -> list[Certificate]:
        """The same certificates from stored counts (``rs-plugins recertify``)."""
        _check_noise(noise)
        if counts_n0 is None:
            raise NeedsFreshSamplesError(
                "cpm chooses its buckets on the n0 selection votes, and these counts have none (a run with "
                "class_selection=label, or a predict run); certify anew with --certifier cpm"
            )
        return cpm_certificates(counts_n0, counts_n, noise.sigma, alpha)


def _check_noise(noise: NoiseSampler) -> None:
    if not isinstance(noise, GaussianNoise):
        what = describe(noise, type(noise).__name__)
        raise IncompatibleComponentsError(
            f"certifier 'cpm' supports noise ['gaussian'] (its radius is Gaussian); got {what}"
        )


@rs_plugins.hookimpl
def rs_certifiers():
    yield CertifierSpec(
        "cpm",
        CpmCertifier,
        "CPM: other classes bucketed on the n0 votes, Bonferroni over the buckets, sigma/2 (Phi^-1 p_A - Phi^-1 p_B)",
        DELATTRE,
        noises=("gaussian",),
    )
