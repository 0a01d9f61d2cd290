"""Gaussian smoothing: noise, augmentation training and CERTIFY, after Cohen et al. (2019).

Reference: J. Cohen, E. Rosenfeld, J. Z. Kolter. "Certified Adversarial Robustness via Randomized Smoothing",
ICML 2019, arXiv:1902.02918. Radius R = sigma * Phi^-1(p_A lower bound) for l2, using p_B <= 1 - p_A.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rs_plugins
from rs_plugins.certify.from_counts import choose_classes, cohen_from_counts, selection_spent
from rs_plugins.certify.smoothing import check_class_selection, cohen_certify
from rs_plugins.types import Certificate, CertifierSpec, LossOutput, LossSpec, NoiseSampler, NoiseSpec
from rs_plugins.validation import check_number

COHEN = "Cohen et al., ICML 2019, arXiv:1902.02918"


class GaussianNoise:
    """Isotropic Gaussian noise N(0, sigma^2 I) added in [0, 1] pixel space; certifies l2."""

    norm = "l2"

    def __init__(self, sigma: float) -> None:
        self.sigma = check_number("sigma", sigma, above=0)

    def sample(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return noise.mul_(self.sigma).add_(x)  # x + sigma * noise, bit for bit, without two more temporaries

    def radius(self, p_lower: Tensor) -> Tensor:
        p = torch.as_tensor(p_lower, dtype=torch.float64)
        return torch.where(p > 0.5, self.sigma * torch.special.ndtri(p), torch.zeros_like(p))

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma})"


class GaussianAugmentation:
    """Cross-entropy on one fresh noisy copy of each training image (Cohen et al. 2019, section 3.1)."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, noise: NoiseSampler, *, progress: float) -> LossOutput:
        loss = F.cross_entropy(model(noise.sample(x)), y)
        return LossOutput(loss, {"xent": loss.detach()})


class CohenCertifier:
    """CERTIFY: N0 selection samples, N estimation samples, one-sided Clopper-Pearson bound at level alpha.

    Args:
        class_selection: n0 (CERTIFY) | label (evaluation only: certifies "g(x) = y and robust", no n0 pass).
    """

    def __init__(self, class_selection: str = "n0") -> None:
        self.class_selection = check_class_selection(class_selection)

    def certify(
        self, model: nn.Module, x: Tensor, noise: NoiseSampler, *, labels: Tensor | None = None, **sampling
    ) -> list[Certificate]:
        return cohen_certify(model, x, noise, class_selection=self.class_selection, labels=labels, **sampling)

    def certify_counts(
        self, counts_n0: Tensor | None, counts_n: Tensor, noise: NoiseSampler, *, alpha: float, labels=None
    ) -> list[Certificate]:
        """CERTIFY's decision on stored counts (``rs-plugins recertify``): the same rows at the same alpha."""
        top = choose_classes(counts_n0, self.class_selection, labels, len(counts_n))
        spent = selection_spent(counts_n0, self.class_selection, len(counts_n))
        return cohen_from_counts(top, counts_n, noise, alpha, spent)


@rs_plugins.hookimpl
def rs_noise_samplers():
    yield NoiseSpec("gaussian", GaussianNoise, "isotropic Gaussian N(0, sigma^2 I); certifies l2", COHEN)


@rs_plugins.hookimpl
def rs_training_losses():
    yield LossSpec("gaussian", GaussianAugmentation, "cross-entropy on Gaussian-augmented inputs", COHEN)


@rs_plugins.hookimpl
def rs_certifiers():
    yield CertifierSpec(
        "cohen", CohenCertifier, "CERTIFY: Clopper-Pearson bound on the top class, abstain below 1/2", COHEN
    )
