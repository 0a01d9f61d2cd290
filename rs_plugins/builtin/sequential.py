"""Sequential certification: stop sampling an image as soon as its answer is decided.

CERTIFY draws N = 100 000 noisy copies of every image even when a few thousand already decide it. This
certifier looks at the counts at a few sample sizes n_1 < ... < n_K = N_max (x1.5 apart) and stops an image once
more samples cannot change what is reported. Its lower bounds form a confidence sequence built from
one-sided Clopper-Pearson bounds and a union bound over the looks (alpha/2 at the last look, alpha/(2(K - 1))
at each earlier one), so P(some look's bound exceeds p_A) <= alpha and the result is valid whenever the
image stops (anytime-valid). An upper bound at level beta/K per look (futility) only decides when to give up.

The idea and the savings follow the sequential-certification literature; this union-bound construction is the
simplest valid one and is our own (spec section 15), not a port of either paper's code:

* M. Z. Horváth, M. N. Müller, M. Fischer, M. Vechev. "Boosting Randomized Smoothing with Variance Reduced
  Classifiers", ICLR 2022, arXiv:2106.06946 (adaptive sampling to decide a radius with far fewer samples).
* V. Voráček. "Treatment of Statistical Estimation Problems in Randomized Smoothing for Adversarial
  Robustness", NeurIPS 2024, arXiv:2406.17830 (confidence sequences for certification; code RS_conf_seq).

Pitfalls of public code not repeated here: no betting sequence stopped at 1/(2 alpha) (Ville's inequality
then gives only 2 alpha), and the class-selection samples are never reused in a bound.
"""

from __future__ import annotations

import math
import warnings
from collections import deque

import numpy as np
import torch
from scipy.stats import beta as beta_distribution
from torch import Tensor, nn

import rs_plugins
from rs_plugins.certify.from_counts import choose_classes, records, selection_spent
from rs_plugins.certify.sampling import chunked, count_pass, eval_mode, per_image_generators
from rs_plugins.certify.smoothing import check_class_selection, check_images, check_sampling, selection_counts
from rs_plugins.certify.stats import clopper_pearson_lower, clopper_pearson_upper, min_samples_to_certify
from rs_plugins.errors import NeedsFreshSamplesError
from rs_plugins.types import ABSTAIN, Certificate, CertifierSpec, NoiseSampler
from rs_plugins.validation import check_integer, check_number

REFERENCE = "Horváth et al., ICLR 2022, arXiv:2106.06946; Voráček, NeurIPS 2024, arXiv:2406.17830"
MODES = ("grid", "tolerance")
TABLE_RADII = tuple(0.25 * i for i in range(17))  # 0, 0.25, ..., 4: the papers' table radii


def look_schedule(n_max: int, batch_size: int, first: int = 50, growth: float = 1.5) -> list[int]:
    """Sample sizes at which the counts are looked at: ``first`` times ``growth``**k, ending at ``n_max``.

    Looks at or above ``batch_size`` are rounded to a multiple of it, so the samples between them fill whole
    passes; smaller ones share passes with other images.
    """
    looks, size = [], float(first)
    while size < n_max:
        look = round(size) if size < batch_size else batch_size * round(size / batch_size)
        if look < n_max and (not looks or look > looks[-1]):
            looks.append(look)
        size *= growth
    return [*looks, n_max]


def spending(looks: int, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-look levels: alpha/2 at the last look and alpha/(2(K - 1)) before (sum alpha); beta/K each."""
    alphas = np.full(looks, alpha / (2 * (looks - 1)) if looks > 1 else alpha)
    alphas[-1] = alpha / 2 if looks > 1 else alpha
    return alphas, np.full(looks, beta / looks)


def thresholds(noise: NoiseSampler, radii) -> np.ndarray:
    """The smallest top-class bound p whose certified radius reaches each r (1/2 for r = 0; inf if none does)."""
    r = torch.as_tensor(list(radii), dtype=torch.float64)
    lo, hi = torch.full_like(r, 0.5), torch.ones_like(r)
    for _ in range(60):  # bisection on the noise's own radius, so any noise works
        mid = (lo + hi) / 2
        reached = noise.radius(mid).to(torch.float64) >= r
        hi, lo = torch.where(reached, mid, hi), torch.where(reached, lo, mid)
    reachable = (noise.radius(torch.ones_like(r)).to(torch.float64) >= r) | (r <= 0)
    return torch.where(r <= 0, torch.full_like(r, 0.5), torch.where(reachable, hi, torch.inf)).numpy()


class SequentialCertifier:
    """Union-bound confidence-sequence certification: the fewest samples that decide each image (any noise).

    ``n`` (``--n``) is N_max, so the same command line certifies with ``cohen`` or ``sequential``.

    Args:
        mode: grid (stop once each radius of ``radii`` is decided: certified, or out of reach) | tolerance (stop
            once the radius is within ``tau`` of what N_max samples could certify).
        radii: the radii to decide in grid mode; default 0, 0.25, ..., 4, those N_max cannot reach skipped.
        tau: the tolerance, in radius units (0.05).
        beta: the futility level (0.001): the chance of giving up on a radius N_max would certify; cost only.
        first, growth: the first look (50 samples) and the spacing of the looks (x1.5).
        best: in grid mode, also keep sampling (up to N_max) until the radius is within ``tau`` of what N_max could
            certify, as tolerance mode does: the best radius when every table radius is out of reach or already
            certified, at the cost of more samples (False: stop once the table is decided).
        class_selection: n0 (a fresh n0 sample picks the class) | label (evaluation only: certifies
            "g(x) = y and robust").
    """

    images_per_call = 64  # the runner hands over this many images, so the queue keeps passes full

    def __init__(
        self,
        mode: str = "grid",
        radii: list[float] | None = None,
        tau: float = 0.05,
        beta: float = 0.001,
        first: int = 50,
        growth: float = 1.5,
        class_selection: str = "n0",
        best: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        radii = TABLE_RADII if radii is None else radii
        try:
            radii = sorted(float(r) for r in radii)
        except (TypeError, ValueError):
            raise ValueError(f"radii must be a list of non-negative numbers like [0, 0.5, 1]; got {radii!r}") from None
        if not radii or radii[0] < 0 or not all(math.isfinite(r) for r in radii):
            raise ValueError(f"radii must be a list of non-negative numbers like [0, 0.5, 1]; got {radii!r}")
        tau = check_number("tau", tau, above=0)
        beta = check_number("beta", beta, above=0, below=1)
        first = check_integer("first", first)
        growth = check_number("growth", growth, above=1)
        self.mode, self.radii, self.tau, self.beta = mode, radii, float(tau), float(beta)
        if not isinstance(best, bool):
            raise ValueError(f"--certifier-option best must be true or false; got {best!r}")
        self.first, self.growth, self.best = first, float(growth), best
        self.class_selection = check_class_selection(class_selection)

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
        labels: Tensor | None = None,
    ) -> list[Certificate]:
        check_images(x)
        check_sampling(n0=n0, n=n, alpha=alpha, batch_size=batch_size)
        looks = look_schedule(n, batch_size, self.first, self.growth)
        if n < min_samples_to_certify(spending(len(looks), alpha, self.beta)[0][-1]):
            warnings.warn(f"n={n} is too small for alpha={alpha}: every input will abstain", stacklevel=2)
        targets = self._targets(noise, n, len(looks), alpha)
        generators = per_image_generators(generator, len(x))
        with eval_mode(model):
            selection = selection_counts(model, x, noise, n0=n0, batch_size=batch_size, generators=generators,
                                         class_selection=self.class_selection)  # fmt: skip
            top = choose_classes(selection, self.class_selection, labels, len(x))
            spent = 0 if selection is None else n0
            state = _Queue(len(x), looks, batch_size)
            first = spent == 0  # without an n0 pass, the first estimation pass is where inputs are checked
            while state.pending:
                segments = state.next_pass()
                counts = count_pass(model, x, noise, segments, generators, first=first)
                first = False
                for (i, size), votes in zip(segments, counts):
                    if state.add(i, size, votes):  # image i reached its next look
                        k = state.look[i]
                        state.lower[i], state.upper[i], stop = self._look(
                            int(state.votes[i][top[i]]), looks[k], k, len(looks), alpha, noise, n,
                            state.lower[i], state.upper[i], targets,
                        )  # fmt: skip
                        if stop:
                            state.finish(i)
                        else:
                            state.advance(i)
        extra = {"looks_planned": len(looks), "n_max": n}
        counts = records(torch.stack(state.votes), selection, state.recorded, extra)
        return self._certificates(top, state.lower, [spent + d for d in state.drawn], noise, counts)

    def certify_counts(
        self,
        counts_n0: Tensor | None,
        counts_n: Tensor,
        noise: NoiseSampler,
        *,
        alpha: float,
        labels: Tensor | None = None,
        looks=None,
        extra=None,
    ) -> list[Certificate]:
        """Replay the looks a sequential run recorded (``rs-plugins recertify``): each image stops at the first look
        this certifier's rule decides, or at the last recorded one. The bounds form a confidence sequence, valid at
        any look, so stopping where the recorded samples end keeps the certificate sound."""
        planned = ("looks_planned", "n_max")
        if looks is None or not all(looks) or extra is None or not all(set(planned) <= e.keys() for e in extra):
            raise NeedsFreshSamplesError(
                "sequential recertifies the counts log of a sequential run, replaying its looks; these counts have "
                "one fixed-n estimation pass and no looks: recertify them with cohen (or feng, cpm)"
            )
        top = choose_classes(counts_n0, self.class_selection, labels, len(counts_n))
        spent = selection_spent(counts_n0, self.class_selection, len(counts_n))
        lowers, drawn, found = [], [], {}  # found: the thresholds per (n_max, looks), one run's for every image
        for c, image_looks, record in zip(top.tolist(), looks, extra):
            planned, n_max = int(record["looks_planned"]), int(record["n_max"])
            if (n_max, planned) not in found:
                found[n_max, planned] = self._targets(noise, n_max, planned, alpha)
            targets = found[n_max, planned]
            lower, upper = 0.0, 1.0
            for k, (size, votes) in enumerate(image_looks):
                lower, upper, stop = self._look(
                    int(votes[c]), size, k, planned, alpha, noise, n_max, lower, upper, targets
                )
                if stop:
                    break
            lowers.append(lower)
            drawn.append(size)
        return self._certificates(top, lowers, [s + d for s, d in zip(spent, drawn)], noise)

    def _targets(self, noise: NoiseSampler, n_max: int, planned: int, alpha: float) -> np.ndarray:
        """The table radii's thresholds on the bound that a full run could reach (the rest are out of reach)."""
        last = spending(planned, alpha, self.beta)[0][-1]
        targets = thresholds(noise, self.radii)
        return targets[targets < last ** (1 / n_max)]

    def _look(self, hits, drawn, k, planned, alpha, noise, n_max, lower, upper, targets) -> tuple[float, float, bool]:
        """The running bounds after look k (``hits`` of ``drawn``), and whether the image stops there."""
        alphas, betas = spending(planned, alpha, self.beta)
        lower = max(lower, float(clopper_pearson_lower(hits, drawn, alphas[k])))
        upper = min(upper, float(clopper_pearson_upper(hits, drawn, betas[k])))
        stop = k == planned - 1 or self._decided(lower, upper, noise, n_max, alphas[-1], targets)
        return lower, upper, stop

    @staticmethod
    def _certificates(top: Tensor, lowers, samples, noise: NoiseSampler, counts=None) -> list[Certificate]:
        radii = noise.radius(torch.tensor(lowers, dtype=torch.float64)).tolist()
        counts = counts or [None] * len(top)
        return [
            Certificate(int(c), float(r), p, d, rec) if p >= 0.5 else Certificate(ABSTAIN, 0.0, p, d, rec)
            for c, r, p, d, rec in zip(top.tolist(), radii, lowers, samples, counts)
        ]

    @property
    def stopping(self) -> str:
        """When an image stops sampling, and what that costs, in a line for the summary."""
        if self.mode == "tolerance":
            return f"tolerance: each image stops once its radius is within tau={self.tau:g} of what N_max could certify"
        if self.best:
            return f"grid, best=true: each image stops once the radii are decided and within tau={self.tau:g} of best"
        return (
            "grid (default): each image stops once every radius of radii is decided, so its radius can be far below "
            "what N_max could certify (ACR too); best=true samples on for it, at more cost"
        )

    def _decided(self, lower: float, upper: float, noise: NoiseSampler, n_max: int, last: float, targets) -> bool:
        """Whether more samples could still change the reported answer."""
        if self.mode == "grid":
            table = bool(np.all((lower >= targets) | (upper < targets)))
            return table and (not self.best or self._near_best(lower, upper, noise, n_max, last))
        return self._near_best(lower, upper, noise, n_max, last)

    def _near_best(self, lower: float, upper: float, noise: NoiseSampler, n_max: int, last: float) -> bool:
        """Whether the radius is within tau of what N_max samples could certify, or the image abstains anyway."""
        if upper <= 0.5:
            return True
        # What a full run would certify if p_A were `upper`: its bound from upper * n_max hits at the last level.
        if upper < 1:
            reachable = beta_distribution.ppf(last, upper * n_max, (1 - upper) * n_max + 1)
        else:
            reachable = last ** (1 / n_max)
        bounds = torch.tensor([max(lower, 0.5), max(reachable, 0.5)], dtype=torch.float64)
        now, best = noise.radius(bounds).tolist()
        return best - now <= self.tau


class _Queue:
    """The samples still to draw, as a FIFO of (image, size) chunks, and each image's running bounds.

    Each image has at most one look's chunks queued; when its last chunk is counted it is looked at and either
    finishes or queues the next look's chunks at the back. A pass takes chunks from the front until full.
    """

    def __init__(self, images: int, looks: list[int], batch_size: int) -> None:
        self.looks, self.batch_size = looks, batch_size
        self.look = [0] * images  # index of the look each image is heading for
        self.drawn = [0] * images
        self.owed = [looks[0]] * images  # samples still to count before the next look
        self.lower = [0.0] * images
        self.upper = [1.0] * images
        self.votes: list[Tensor] = [None] * images  # cumulative counts over all classes
        self.recorded: list[list[tuple[int, tuple[int, ...]]]] = [[] for _ in range(images)]  # (drawn, votes)
        self.pending: deque[tuple[int, int]] = deque(c for i in range(images) for c in chunked(i, looks[0], batch_size))

    def next_pass(self) -> list[tuple[int, int]]:
        segments, size = [], 0
        while self.pending and size + self.pending[0][1] <= self.batch_size:
            segments.append(self.pending.popleft())
            size += segments[-1][1]
        return segments

    def add(self, image: int, size: int, votes: Tensor) -> bool:
        """Count a chunk's votes; True when the image reached its next look (which is then recorded)."""
        self.votes[image] = votes.clone() if self.votes[image] is None else self.votes[image] + votes
        self.drawn[image] += size
        self.owed[image] -= size
        if self.owed[image] == 0:
            self.recorded[image].append((self.drawn[image], tuple(self.votes[image].tolist())))
        return self.owed[image] == 0

    def advance(self, image: int) -> None:
        self.look[image] += 1
        self.owed[image] = self.looks[self.look[image]] - self.drawn[image]
        self.pending.extend(chunked(image, self.owed[image], self.batch_size))

    def finish(self, image: int) -> None:
        self.owed[image] = -1


@rs_plugins.hookimpl
def rs_certifiers():
    yield CertifierSpec(
        "sequential",
        SequentialCertifier,
        "sequential CERTIFY: union-bound confidence sequence, stops each image once decided (--n is N_max)",
        REFERENCE,
    )
