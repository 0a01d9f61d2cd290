"""The soundness bench: run a certifier many times on base classifiers whose smoothed classifier is known in closed
form, count the certificates that are wrong, and compare the failure rate with alpha.

Each case is an image and a base classifier whose smoothed class probabilities, prediction g(x) and exact radius
R* (the distance to g's nearest decision boundary) are computed, not estimated: a certificate fails when it answers
a class other than g(x), or a radius above R*. A sound certifier fails at most alpha of the time on every case, so
the bench fails a certifier when the Clopper-Pearson interval of a case's failure rate lies above alpha (at 99 %
confidence, Bonferroni over the cases). The cases are half-spaces along one direction w (only w.delta moves the
score s = w.x + b, so g depends on s alone and R* is found on a line), with several runner-up structures, a
near-tie, one-pixel thresholds for the l1 noises, and a mixture for the mixed certificate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor, nn

from ..testing import CoordinateClassifier
from ..types import ABSTAIN, CertifierSpec
from ..validation import accepts_keyword
from .stats import clopper_pearson_lower, clopper_pearson_upper

SIGMA = 0.5
CONFIDENCE = 0.99
"""The confidence of the failure rates' intervals, over all cases together."""


class IntervalClassifier(nn.Module):
    """Classes by the score s = w.x + offset with ||w|| = 1: class ``classes[j]`` on the j-th interval that
    ``thresholds`` cut the line into. Under N(0, sigma^2 I) the score of x + delta is N(s, sigma^2), so every
    smoothed class probability is a difference of Phi's (``probabilities``)."""

    def __init__(self, w: Tensor, offset: float, thresholds: Sequence[float], classes: Sequence[int]) -> None:
        super().__init__()
        if len(classes) != len(thresholds) + 1:
            raise ValueError("classes: one per interval, len(thresholds) + 1")
        self.register_buffer("w", (w.flatten() / w.norm()).double())
        self.offset = float(offset)
        self.register_buffer("thresholds", torch.tensor(sorted(thresholds), dtype=torch.float64))
        self.register_buffer("classes", torch.tensor(list(classes), dtype=torch.int64))
        self.num_classes = int(max(classes)) + 1

    def forward(self, x: Tensor) -> Tensor:
        score = x.flatten(1).double() @ self.w + self.offset
        votes = self.classes[torch.bucketize(score, self.thresholds, right=True)]
        return nn.functional.one_hot(votes, self.num_classes).to(x.dtype)

    def probabilities(self, scores: np.ndarray, sigma: float) -> np.ndarray:
        """Smoothed class probabilities at each score, (len(scores), K)."""
        edges = np.array([-np.inf, *self.thresholds.tolist(), np.inf])
        mass = np.diff(norm.cdf((edges[None, :] - np.asarray(scores)[:, None]) / sigma), axis=1)
        out = np.zeros((len(scores), self.num_classes))
        for j, c in enumerate(self.classes.tolist()):
            out[:, c] += mass[:, j]
        return out


def exact_radius(top_at: Callable[[np.ndarray], np.ndarray], span: float, step: float) -> float:
    """The distance from score 0 to the nearest score where ``top_at`` (scores -> smoothed top class) changes:
    scanned both ways on a grid of ``step`` up to ``span``, then bisected. inf if it never changes."""
    start = int(top_at(np.zeros(1))[0])
    best = math.inf
    for sign in (-1.0, 1.0):
        grid = sign * np.arange(0, span, step)
        changed = np.nonzero(top_at(grid) != start)[0]
        if not len(changed):
            continue
        lo, hi = abs(grid[changed[0] - 1]), abs(grid[changed[0]])
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if top_at(np.array([sign * mid]))[0] != start else (mid, hi)
        best = min(best, hi)
    return best


class Mixture(nn.Module):
    """The attributes the mixed certificate reads (``robust``, ``certified_alpha``, ``rob_scale``): an accurate
    member that puts all its weight on class 0 (the worst case for class 1) and the robust member ``robust``."""

    def __init__(self, robust: nn.Module, alpha_mix: float) -> None:
        super().__init__()
        self.robust, self.certified_alpha, self.rob_scale = robust, float(alpha_mix), 1.0

    def forward(self, x: Tensor) -> Tensor:
        mixed = (1 - self.certified_alpha) * nn.functional.one_hot(torch.zeros(len(x), dtype=torch.int64), 2)
        return torch.log(mixed + self.certified_alpha * self.robust(x) + 1e-12)


@dataclass(frozen=True)
class SoundnessCase:
    """An image, a base classifier and a noise whose smoothed classifier's prediction and exact radius are known."""

    name: str
    model: nn.Module
    x: Tensor
    noise: str
    prediction: int
    radius: float
    sigma: float = SIGMA
    mixture: bool = False


def _direction() -> tuple[Tensor, Tensor]:
    x = torch.full((1, 4, 4), 0.5)
    w = torch.tensor([1.0, -1.0] * 8).reshape(1, 4, 4)  # w.x = 0 at x = 0.5: the offset is the score
    return x, w


def interval_case(name: str, p_top: float, thresholds: Sequence[float], classes: Sequence[int]) -> SoundnessCase:
    """A half-space case: the image's score sits where the smoothed top class has probability ``p_top``;
    ``thresholds`` are in units of sigma relative to the boundary below that class."""
    x, w = _direction()
    offset = SIGMA * float(norm.ppf(p_top))  # the top class starts at score 0
    model = IntervalClassifier(w, offset, [SIGMA * t for t in thresholds], classes)

    def top_at(shifts):
        return model.probabilities(offset + shifts, SIGMA).argmax(1)

    prediction = int(top_at(np.zeros(1))[0])
    return SoundnessCase(name, model, x, "gaussian", prediction, exact_radius(top_at, 12 * SIGMA, SIGMA / 500))


def standard_cases() -> list[SoundnessCase]:
    """The bench's cases: Gaussian half-spaces with several runner-up structures, a near-tie, l1 one-pixel
    thresholds under uniform and Laplace noise, and a mixture (for certifiers of mixtures)."""
    cases = [
        interval_case("two classes, p_A 0.8", 0.8, [0.0], [1, 0]),
        # a near-tie: picking the class on the samples that bound it fails twice as often here
        interval_case("near-tie, p_A 0.501", 0.501, [0.0], [1, 0]),
        # A above 0, B below -1.0 sigma, the gap split into 8 thin classes: p_B 0.105, the thin ones 0.037 each
        interval_case("runner-up + 8 thin classes", 0.6, [-1.0 + k / 8 for k in range(9)], [1, *range(2, 10), 0]),
        # A above 0, a second class on [-0.6, 0), a third below: two other classes of ~0.2 each
        interval_case("two runner-ups", 0.6, [-0.6, 0.0], [1, 2, 0]),
    ]
    x = torch.full((1, 4, 4), 0.5)
    d = 0.3
    for noise in ("uniform", "laplace"):
        cases.append(SoundnessCase(f"one pixel, {noise} (l1)", CoordinateClassifier(5, 0.5 - d), x, noise, 1, d))
    x, w = _direction()
    alpha_mix, p1 = 0.8, 0.99
    offset = SIGMA * float(norm.ppf(p1))
    robust = IntervalClassifier(w, offset, [0.0], [0, 1])
    mu = (1 - alpha_mix) / alpha_mix  # class 1 kept while a h1 - a h0 > 1 - a: h1 > (1 + mu) / 2
    cases.append(SoundnessCase("mixture, weight 0.8", Mixture(robust, alpha_mix), x, "gaussian", 1,
                               offset - SIGMA * float(norm.ppf((1 + mu) / 2)), mixture=True))  # fmt: skip
    return cases


@dataclass(frozen=True)
class CaseResult:
    """One case's tally: failures of ``trials``, their Clopper-Pearson interval, answers and radii."""

    case: str
    trials: int
    failures: int
    low: float
    high: float
    answered: int
    mean_radius: float
    exact_radius: float


@dataclass
class SoundnessReport:
    """What ``check_certifier_soundness`` found: per case, and whether every case's interval reaches alpha."""

    certifier: str
    alpha: float
    results: list[CaseResult] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        """No case's failure-rate interval lies above alpha."""
        return all(r.low <= self.alpha for r in self.results)

    def format(self) -> str:
        """A table for a terminal, with the verdict."""
        lines = [f"soundness bench: {self.certifier}, alpha = {self.alpha:g}, {CONFIDENCE:.0%} intervals"]
        lines.append(f"{'case':<30} {'failures':>12} {'rate interval':>17} {'answered':>9} {'radius / R*':>13}")
        for r in self.results:
            verdict = "  ABOVE alpha" if r.low > self.alpha else ""
            ratio = f"{r.mean_radius:.3f}/{r.exact_radius:.3f}"
            lines.append(f"{r.case:<30} {r.failures:>5}/{r.trials:<6} {r.low:>8.3f}-{r.high:<8.3f} {r.answered:>9} "
                         f"{ratio:>13}{verdict}")  # fmt: skip
        lines.append("sound: no case fails more than alpha" if self.sound else "UNSOUND: a case fails more than alpha")
        return "\n".join(lines)



def _usable(certifier: Any, case: SoundnessCase) -> bool:
    """A certifier with ``check_model`` gets the cases whose model it accepts; one without, the plain ones."""
    check = getattr(certifier, "check_model", None)
    if check is None:
        return not case.mixture
    try:
        check(case.model)
    except ValueError:
        return False
    return True


def run_case(certifier: Any, case: SoundnessCase, noise: Any, *, trials: int, alpha: float, n0: int, n: int,
             seed: int, level: float) -> CaseResult:  # fmt: skip
    """Certify ``trials`` independent copies of the case's image and count the wrong certificates."""
    x = case.x.expand(trials, *case.x.shape).clone()
    generators = [torch.Generator().manual_seed(seed * 1_000_003 + t) for t in range(trials)]
    extra = {"labels": torch.full((trials,), case.prediction)} if accepts_keyword(certifier.certify, "labels") else {}
    with torch.no_grad():
        certificates = certifier.certify(case.model, x, noise, n0=n0, n=n, alpha=alpha, batch_size=4096,
                                         generator=generators, **extra)  # fmt: skip
    answered = [c for c in certificates if c.prediction != ABSTAIN]
    tolerance = 1e-9 + 1e-7 * case.radius
    failures = sum(c.prediction != case.prediction or c.radius > case.radius + tolerance for c in answered)
    low = float(clopper_pearson_lower(failures, trials, level / 2))
    high = float(clopper_pearson_upper(failures, trials, level / 2))
    mean = float(np.mean([c.radius for c in answered])) if answered else 0.0
    return CaseResult(case.name, trials, failures, low, high, len(answered), mean, case.radius)


def check_certifier_soundness(
    certifier: CertifierSpec | Any,
    *,
    options: dict[str, Any] | None = None,
    trials: int = 400,
    alpha: float = 0.1,
    n0: int = 64,
    n: int = 512,
    seed: int = 0,
    cases: Sequence[SoundnessCase] | None = None,
    noises: Sequence[str] | None = None,
    host: Any = None,
    strict: bool = True,
) -> SoundnessReport:
    """Run the bench on a certifier: a ``CertifierSpec`` (built with ``options``) or a built certifier.

    Each case (default ``standard_cases()``, those of a noise in ``noises``: default the spec's ``noises``, else
    all three; a certifier with ``check_model`` gets the cases whose model it accepts) is certified ``trials``
    times with fresh draws at ``alpha``. ``strict``: raise AssertionError, with the table, when unsound.
    """
    from ..host import Host

    host = host or Host(entry_points=True)
    name = certifier.name if isinstance(certifier, CertifierSpec) else type(certifier).__name__
    built = certifier.build(**(options or {})) if isinstance(certifier, CertifierSpec) else certifier
    if noises is None:
        spec_noises = certifier.noises if isinstance(certifier, CertifierSpec) else ("gaussian",)
        noises = spec_noises or ("gaussian", "uniform", "laplace")
    chosen = [c for c in (standard_cases() if cases is None else cases) if c.noise in noises and _usable(built, c)]
    if not chosen:
        raise ValueError(f"certifier {name}: no soundness case fits it (noises {list(noises)}); pass cases=")
    report = SoundnessReport(name, alpha)
    level = (1 - CONFIDENCE) / len(chosen)
    for number, case in enumerate(chosen):
        noise = host.noise(case.noise, sigma=case.sigma)
        report.results.append(run_case(built, case, noise, trials=trials, alpha=alpha, n0=n0, n=n,
                                       seed=seed + 7919 * number, level=level))  # fmt: skip
    if strict and not report.sound:
        raise AssertionError(report.format())
    return report
