"""Laplace noise with its l1 certificate, after Teng et al. (2020) and Lecuyer et al. (2019).

References: J. Teng, G.-H. Lee, Y. Yuan. "l1 Adversarial Robustness Certificates: a Randomized Smoothing
Approach", 2019/2020 (OpenReview, ICLR 2020 submission: a tight l1 certificate for isotropic Laplace noise);
M. Lecuyer, V. Atlidakis, R. Geambasu, D. Hsu, S. Jana.
"Certified Robustness to Adversarial Examples with Differential Privacy", IEEE S&P 2019, arXiv:1802.03471.
Lecuyer et al.'s differential-privacy argument gives lambda/2 log(p_A / p_B); Teng et al.'s tighter radius,
with p_B <= 1 - p_A, is R = -lambda log(2 (1 - p_A)), the one used here (derivation in ``LaplaceNoise``; the
same formula is the l1 certificate of Yang et al.'s code, tonyduan/rs4a). It is never the smaller of the two:
their difference is -lambda log(2 sqrt(p_A (1 - p_A))) >= 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import rs_plugins
from rs_plugins.builtin.uniform import check_sigma
from rs_plugins.types import NoiseSpec

TENG = "Teng et al. 2020 (l1 certificates); Lecuyer et al., IEEE S&P 2019, arXiv:1802.03471"


class LaplaceNoise:
    """I.i.d. Laplace noise of scale lambda = sigma / sqrt(2) per pixel (standard deviation sigma); certifies l1.

    Radius R = -lambda log(2 (1 - p_A)) for p_A > 1/2 (Teng et al. 2020). In one dimension it is exact: the
    worst set of probability p_A >= 1/2 is a half-line {z <= t} with p_A = 1 - exp(-t / lambda) / 2, i.e.
    t = -lambda log(2 (1 - p_A)), and a shift by delta keeps it above 1/2 exactly while delta < t. Teng et al.
    show that no l1 shift of the same length does worse in d dimensions, so a classifier that thresholds one
    pixel attains the radius.
    """

    norm = "l1"

    def __init__(self, sigma: float) -> None:
        self.sigma = check_sigma(sigma)
        self.lambd = self.sigma / math.sqrt(2)

    def sample(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        # The difference of two independent Exp(1) variables is a standard Laplace variable.
        e = torch.empty((2, *x.shape), device=x.device, dtype=x.dtype).exponential_(generator=generator)
        return x + self.lambd * (e[0] - e[1])

    def radius(self, p_lower: Tensor) -> Tensor:
        p = torch.as_tensor(p_lower, dtype=torch.float64)
        safe = torch.where(p > 0.5, p, torch.full_like(p, 0.75))  # keeps log() finite where the radius is 0
        return torch.where(p > 0.5, -self.lambd * torch.log(2 * (1 - safe)), torch.zeros_like(p))

    def __repr__(self) -> str:
        return f"LaplaceNoise(sigma={self.sigma})"


@rs_plugins.hookimpl
def rs_noise_samplers():
    yield NoiseSpec("laplace", LaplaceNoise, "i.i.d. Laplace, std sigma; certifies l1", TENG)
