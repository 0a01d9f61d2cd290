"""The certificate of a mixed classifier whose robust member is Gaussian-smoothed (Bai et al., SIMODS 2024).

Setting: m(x) = (1 - α)·g(x) + α·h̄(x), g arbitrary (treated adversarially: its output may be anything in the
probability simplex), h̄ the Gaussian smoothing of a [0, 1]-valued robust classifier h (hard votes or softmax).
With μ = (1 - α)/α, y = argmax h̄(x), p₁ = h̄_y(x) and p₂ = max_{i≠y} h̄_i(x), m keeps predicting y within

    r = σ/2 · (Φ⁻¹(p₁/(1 + μ)) - Φ⁻¹((p₂ + μ)/(1 + μ)))

of x (positive only when p₁ - p₂ > μ, so α > 1/2). At α = 1 this is Cohen et al.'s two-class radius. Applying
Cohen et al.'s lemma to h̄'s two probabilities directly gives the default, never smaller radius σ·t, t the largest
t with Φ(Φ⁻¹(p₁) - t) - Φ(Φ⁻¹(p₂) + t) > μ (docs/certifiers.md derives both). Either grows with p₁ and α and falls
with p₂, so plugging in a lower bound on p₁ and an upper bound on p₂ (over *all* other classes) that hold together
with probability 1 - alpha keeps the certificate sound. The authors' notebook plugged in point estimates instead;
that is not a certificate.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor, nn

from ...certify.from_counts import NO_SELECTION, records
from ...certify.sampling import noise_input, per_image_generators, sample_counts
from ...certify.stats import clopper_pearson_lower, clopper_pearson_upper
from ...errors import IncompatibleComponentsError, NeedsFreshSamplesError
from ...results.provenance import describe
from ...types import ABSTAIN, Certificate, NoiseSampler

VOTES = ("hard", "soft")
BOUNDS = ("hoeffding", "bernstein")
RADII = ("tight", "closed_form")


def mixed_radius(p1, p2, alpha_mix: float, sigma: float) -> np.ndarray:
    """σ/2·(Φ⁻¹(p₁/(1+μ)) - Φ⁻¹((p₂+μ)/(1+μ))) with μ = (1-α)/α, floored at 0; 0 for α <= 1/2.

    Args:
        p1: (a lower bound on) the robust member's smoothed probability of its top class.
        p2: (an upper bound on) the largest smoothed probability of any other class.
        alpha_mix: the robust member's weight α in (0, 1].
        sigma: the Gaussian noise level of the robust member's smoothing.
    """
    p1, p2 = np.asarray(p1, dtype=np.float64), np.asarray(p2, dtype=np.float64)
    if alpha_mix <= 0.5:
        return np.zeros(np.broadcast(p1, p2).shape)
    mu = (1 - alpha_mix) / alpha_mix
    with np.errstate(divide="ignore", invalid="ignore"):
        r = sigma / 2 * (norm.ppf(p1 / (1 + mu)) - norm.ppf((p2 + mu) / (1 + mu)))
    return np.where(np.isnan(r), 0.0, np.maximum(r, 0.0))


def tight_mixed_radius(p1, p2, alpha_mix: float, sigma: float, steps: int = 64) -> np.ndarray:
    """σ·t, t the largest t >= 0 with Φ(Φ⁻¹(p₁) - t) - Φ(Φ⁻¹(p₂) + t) > μ = (1-α)/α, by bisection; 0 if none.

    The left side falls with t and equals -μ <= 0 at t = (Φ⁻¹(p₁) - Φ⁻¹(p₂))/2, which brackets the root; the lower
    end of the bracket is returned, so rounding never certifies more. Arguments as for ``mixed_radius``.
    """
    p1, p2 = np.broadcast_arrays(np.asarray(p1, dtype=np.float64), np.asarray(p2, dtype=np.float64))
    if alpha_mix <= 0.5:
        return np.zeros(p1.shape)
    mu = (1 - alpha_mix) / alpha_mix
    a, b = norm.ppf(p1), norm.ppf(p2)

    def margin(t):
        return norm.cdf(a - t) - norm.cdf(b + t) - mu

    with np.errstate(invalid="ignore"):
        ok = margin(0.0) > 0  # also False for NaN
    low = np.zeros(p1.shape)
    high = np.where(ok, (a - b) / 2, 0.0)
    for _ in range(steps):
        middle = (low + high) / 2
        inside = ok & (margin(middle) > 0)
        low, high = np.where(inside, middle, low), np.where(inside, high, middle)
    return np.where(ok, sigma * low, 0.0)


def hoeffding_lower(mean, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Hoeffding lower bound on the mean of n i.i.d. values in [0, 1]."""
    return np.asarray(mean, dtype=np.float64) - math.sqrt(math.log(1 / alpha) / (2 * n))


def hoeffding_upper(mean, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Hoeffding upper bound on the mean of n i.i.d. values in [0, 1]."""
    return np.asarray(mean, dtype=np.float64) + math.sqrt(math.log(1 / alpha) / (2 * n))


def bernstein_margin(variance, n: int, alpha: float) -> np.ndarray:
    """Maurer & Pontil's (2009, Thm 4) one-sided empirical-Bernstein margin for n >= 2 values in [0, 1].

    ``variance`` is the unbiased sample variance; mean ± margin bounds the true mean with probability 1 - alpha.
    At n = 1 there is no variance estimate and the margin is 1, which bounds any mean in [0, 1].
    """
    if n < 2:
        return np.ones_like(np.asarray(variance, dtype=np.float64))
    log = math.log(2 / alpha)
    return np.sqrt(2 * np.asarray(variance, dtype=np.float64) * log / n) + 7 * log / (3 * (n - 1))


class MixedCertifier:
    """Certify a ``mix`` or ``adaptive`` classifier through its robust member smoothed with Gaussian noise.

    The first n0 draws pick y = argmax h̄; n fresh draws bound p₁ from below at level alpha/2 and p₂ from above
    by the largest of the other classes' upper bounds, each at level alpha/2: the class j holding the true p₂ is
    fixed before these draws, and its bound alone covering p₂ makes the largest one cover it, so no Bonferroni over
    K - 1 is needed. With p₂ ≤ min(that, 1 - p₁ lower), both hold with probability at least 1 - alpha.
    ``adaptive`` is certified at its α_min (its eval-mode α never falls below it, and r grows with α). A radius of
    0 abstains.

    Args:
        votes: hard (h's top-1 class; Clopper-Pearson bounds) | soft (h's softmax at the mixer's rob_scale,
            averaged; Hoeffding or empirical-Bernstein bounds).
        bound: hoeffding | bernstein, for soft votes.
        radius: tight (Cohen's lemma on p₁ and p₂, by bisection) | closed_form (Bai et al.'s formula, smaller).
    """

    def __init__(self, votes: str = "hard", bound: str = "hoeffding", radius: str = "tight") -> None:
        if votes not in VOTES:
            raise ValueError(f"--certifier-option votes must be one of {', '.join(VOTES)}; got {votes!r}")
        if bound not in BOUNDS:
            raise ValueError(f"--certifier-option bound must be one of {', '.join(BOUNDS)}; got {bound!r}")
        if radius not in RADII:
            raise ValueError(f"--certifier-option radius must be one of {', '.join(RADII)}; got {radius!r}")
        self.votes, self.bound, self.radius = votes, bound, radius
        formula = "tight_mixed_radius" if radius == "tight" else "mixed_radius"
        self.radius_formula = f"rs_plugins.mixed_certificate.{formula}"  # in results sidecars: a format, kept

    def check_model(self, model: nn.Module) -> None:
        """Refuse, before any sampling, a classifier that is not a mixture with a robust member."""
        _robust_member(model)

    def certify(
        self,
        model: nn.Module,
        x: Tensor,
        noise: NoiseSampler,
        *,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator=None,
    ) -> list[Certificate]:
        _check_noise(noise)
        robust, alpha_mix, scale = _robust_member(model)
        generators = per_image_generators(generator, len(x))
        counts = None
        if self.votes == "hard":
            selection = sample_counts(robust, x, noise, n0, batch_size=batch_size, generator=generators)
            estimation = sample_counts(robust, x, noise, n, batch_size=batch_size, generator=generators)
            counts = records(estimation, selection, extra={"member": "robust", "alpha_mix": alpha_mix})
            top, p1, others = _hard_bounds(selection, estimation, alpha)
        else:
            top = _soft_sums(robust, x, noise, n0, batch_size, generators, scale)[0].argmax(1).numpy()
            sums, squares = _soft_sums(robust, x, noise, n, batch_size, generators, scale)
            mean = sums.numpy() / n
            if self.bound == "hoeffding":
                p1 = hoeffding_lower(mean[np.arange(len(x)), top], n, alpha / 2)
                others = hoeffding_upper(mean, n, alpha / 2)
            else:
                variance = np.maximum(squares.numpy() - n * mean**2, 0) / max(n - 1, 1)
                idx = (np.arange(len(x)), top)
                p1 = mean[idx] - bernstein_margin(variance[idx], n, alpha / 2)
                others = mean + bernstein_margin(variance, n, alpha / 2)
        return self._certificates(top, p1, others, [alpha_mix] * len(x), noise.sigma, counts=counts)

    def certify_counts(
        self, counts_n0: Tensor | None, counts_n: Tensor, noise: NoiseSampler, *, alpha: float, extra=None
    ) -> list[Certificate]:
        """The hard-vote certificate from a ``mixed`` run's counts log: the robust member's votes and the
        mixture's weight it recorded (``rs-plugins recertify``)."""
        if self.votes != "hard":
            raise NeedsFreshSamplesError(
                "votes=soft averages the robust member's softmax outputs, which no counts log holds: it needs fresh "
                "samples; votes=hard certifies from counts"
            )
        _check_noise(noise)
        if extra is None or any(e.get("member") != "robust" or "alpha_mix" not in e for e in extra):
            raise NeedsFreshSamplesError(
                "the mixed certificate needs the robust member's votes and the mixture's weight, which only the counts "
                "log of a run with --certifier mixed (votes=hard) records; these counts are of another certifier"
            )
        if counts_n0 is None:
            raise NeedsFreshSamplesError(NO_SELECTION)
        top, p1, others = _hard_bounds(counts_n0, counts_n, alpha)
        samples = (counts_n0.sum(1) + counts_n.sum(1)).tolist()
        return self._certificates(top, p1, others, [float(e["alpha_mix"]) for e in extra], noise.sigma, samples)

    def _certificates(self, top, p1, others, weights, sigma, samples=None, counts=None) -> list[Certificate]:
        """Certificates from p₁'s lower bounds and every class's upper bounds (B, K), at each image's weight."""
        p1 = np.clip(p1, 0, 1 - 1e-12)  # bounds of soft votes can reach 0 or 1; keep Phi^-1 finite
        others[np.arange(len(top)), top] = -np.inf
        p2 = np.clip(np.minimum(others.max(1), 1 - p1), 1e-12, 1)
        radius = tight_mixed_radius if self.radius == "tight" else mixed_radius
        weights = np.asarray(weights, dtype=np.float64)
        radii = np.zeros(len(top))
        for weight in np.unique(weights):  # one weight per run: one vectorised call
            where = weights == weight
            radii[where] = radius(p1[where], p2[where], float(weight), sigma)
        radii = radii.tolist()
        samples = samples or [None] * len(top)
        counts = counts or [None] * len(top)
        return [
            Certificate(int(c), r, float(p), s, rec) if r > 0 else Certificate(ABSTAIN, 0.0, float(p), s, rec)
            for c, r, p, s, rec in zip(top, radii, p1, samples, counts)
        ]


def _check_noise(noise: NoiseSampler) -> None:
    from ..gaussian import GaussianNoise

    if not isinstance(noise, GaussianNoise):
        raise IncompatibleComponentsError(
            "certifier 'mixed' supports noise ['gaussian'] (its robust member is Gaussian-smoothed); "
            f"got {describe(noise, type(noise).__name__)}"
        )


def _hard_bounds(selection: Tensor, estimation: Tensor, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hard votes: the top class of the n0 pass, p₁'s Clopper-Pearson lower bound and every class's upper bound
    from the n pass, each at alpha/2."""
    top = selection.argmax(1).numpy()
    counts, n = estimation.numpy(), estimation.sum(1).numpy()
    p1 = clopper_pearson_lower(counts[np.arange(len(top)), top], n, alpha / 2)
    others = clopper_pearson_upper(counts, n[:, None], alpha / 2)
    return top, p1, others


def _unwrap(model: nn.Module) -> tuple[nn.Module, Any]:
    """The mixture inside the execution wrappers (``RunAs``, ``torch.compile``) and the ``RunAs`` settings, if any."""
    from ...certify.execution import RunAs

    execution = None
    for _ in range(8):
        if hasattr(model, "certified_alpha"):
            break
        if isinstance(model, RunAs):
            execution, model = model.execution, model.model
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            break
    return model, execution


def _robust_member(model: nn.Module) -> tuple[nn.Module, float, float]:
    """The robust member h (run with the mixture's precision and memory format), the certified α and h's scale."""
    from ...certify.denoising import DenoisedClassifier
    from ...certify.execution import RunAs

    mixture, execution = _unwrap(model)
    if isinstance(mixture, DenoisedClassifier):
        msg = "--certifier mixed with --denoiser: the mixed certificate smooths the mixture's robust member on x + "
        msg += "delta and its accurate member sees x, so a denoiser in front of the whole mixture is not part of it; "
        raise ValueError(msg + "certify the denoised model with --certifier cohen (or sequential), or drop --denoiser")
    robust, alpha_mix = getattr(mixture, "robust", None), getattr(mixture, "certified_alpha", None)
    if not isinstance(robust, nn.Module) or alpha_mix is None:
        msg = "certifier 'mixed' certifies a mixture with a smoothed robust member: use --mixer mix or adaptive "
        raise ValueError(msg + f"with two --model (accurate, robust); got a {type(mixture).__name__}")
    if execution is not None:
        robust = RunAs(robust, execution).eval()
    return robust, float(alpha_mix), float(getattr(mixture, "rob_scale", 1.0))


@torch.no_grad()
def _soft_sums(model, x, noise, num, batch_size, generators, scale) -> tuple[Tensor, Tensor]:
    """Per-image sums of softmax(scale·h(x + δ)) and of its squares over ``num`` draws. Shape: (B, K) each, CPU."""
    sums, squares = [], []
    for image, generator in zip(x, generators):
        total = square = 0
        for start in range(0, num, batch_size):
            count = min(batch_size, num - start)
            clean = noise_input(image.expand(count, *image.shape))
            batch = noise.sample(clean, generator=generator).to(image.dtype)
            probs = torch.softmax(scale * model(batch).double(), dim=1)
            total = total + probs.sum(0)
            square = square + (probs**2).sum(0)
        sums.append(total.cpu())
        squares.append(square.cpu())
    return torch.stack(sums), torch.stack(squares)
