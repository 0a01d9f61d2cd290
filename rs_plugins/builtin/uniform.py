"""Uniform noise with its l1 certificate, after Yang et al. (2020).

Reference: G. Yang, T. Duan, J. E. Hu, H. Salman, I. Razenshteyn, J. Li. "Randomized Smoothing of All Shapes
and Sizes", ICML 2020, arXiv:2002.08118. The radius R = 2 lambda (p_A - 1/2) is their l1 certificate for
U[-lambda, lambda]^d, checked against the short derivation in ``UniformNoise``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import rs_plugins
from rs_plugins.types import NoiseSpec
from rs_plugins.validation import check_number

YANG = "Yang et al., ICML 2020, arXiv:2002.08118"


def check_sigma(sigma) -> float:
    """``sigma`` as a finite float > 0, or ValueError naming it (an infinite sigma would certify radius inf)."""
    return check_number("sigma", sigma, above=0)


class UniformNoise:
    """I.i.d. uniform noise on [-lambda, lambda] per pixel, lambda = sqrt(3) sigma (standard deviation sigma).

    Certifies l1. Shifting the cube by delta changes any event's probability by at most the total variation
    1 - prod_i (1 - |delta_i| / (2 lambda)) <= ||delta||_1 / (2 lambda), so the top class keeps more than 1/2
    while ||delta||_1 < 2 lambda (p_A - 1/2). A classifier that thresholds one pixel attains it: the bound is tight.
    """

    norm = "l1"

    def __init__(self, sigma: float) -> None:
        self.sigma = check_sigma(sigma)
        self.lambd = math.sqrt(3) * self.sigma  # the half-width; `lambda` is reserved

    def sample(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)  # U[0, 1)
        return x + self.lambd * (2 * u - 1)

    def radius(self, p_lower: Tensor) -> Tensor:
        p = torch.as_tensor(p_lower, dtype=torch.float64)
        return torch.where(p > 0.5, 2 * self.lambd * (p - 0.5), torch.zeros_like(p))

    def __repr__(self) -> str:
        return f"UniformNoise(sigma={self.sigma})"


@rs_plugins.hookimpl
def rs_noise_samplers():
    yield NoiseSpec("uniform", UniformNoise, "i.i.d. uniform on [-lambda, lambda], std sigma; certifies l1", YANG)
