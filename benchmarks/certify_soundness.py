"""How often each certifier's certificate exceeds the exact radius, on closed forms, with Clopper-Pearson intervals.

The unit tests (tests/test_certifiers.py) assert the same thing at 1,000 trials; this prints the figures, at as
many trials as asked. A certificate fails when it names a class other than g(x) or a radius above the exact one;
a sound certifier fails at a rate of at most alpha.

Settings: a hyperplane under Gaussian noise (sigma 0.5, distance 0.5, p_A = 0.841); a one-pixel binning into 3
classes with p = (0.6, 0.2, 0.2) under Gaussian noise for feng (exact: Theorem 1 at the exact probabilities); a
one-pixel threshold under uniform and Laplace noise (sigma 0.5, distance 0.3; exact l1 radius 0.3); for mixed, a
mixture at weight 0.8 whose robust member is the hyperplane (two classes, the worst g: exact radius
sigma (Phi^-1(p_A) - Phi^-1((1 + mu) / 2)), mu = 0.25).

    python benchmarks/certify_soundness.py --trials 4000
    python benchmarks/certify_soundness.py --trials 1000 --only feng mixed
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from rs_plugins import ABSTAIN
from rs_plugins.builtin.adaptive.certificate import MixedCertifier
from rs_plugins.builtin.feng import FengCertifier
from rs_plugins.builtin.gaussian import CohenCertifier, GaussianNoise
from rs_plugins.builtin.laplace import LaplaceNoise
from rs_plugins.builtin.sequential import SequentialCertifier
from rs_plugins.builtin.uniform import UniformNoise
from rs_plugins.testing import CoordinateClassifier, LinearClassifier


class ThreeBins(torch.nn.Module):
    """Class 0 where pixel 0 is within 0.4208 of 0.5, class 1 below, class 2 above: p = (0.6, 0.2, 0.2) at 0.5."""

    def forward(self, x):
        z = x.flatten(1)[:, 0]
        bins = torch.bucketize(z.contiguous(), torch.tensor([0.0792, 0.9208]))
        return torch.nn.functional.one_hot(bins, 3)[:, [1, 0, 2]].float()


class Mixture(torch.nn.Module):
    """What the mixed certifier reads of a mixer: the robust member and its certified weight."""

    def __init__(self, robust: torch.nn.Module, alpha_mix: float) -> None:
        super().__init__()
        self.robust, self.certified_alpha, self.rob_scale = robust, alpha_mix, 1.0


def settings():
    w = torch.tensor([1.0, -1.0] * 8).reshape(1, 4, 4)
    centre = torch.full((1, 4, 4), 0.5)
    linear = LinearClassifier(w, b=-float((w * centre).sum()))
    at = centre + 0.5 * w / w.norm()
    pixel = torch.full((1, 4, 4), 0.4)
    pixel.view(-1)[5] += 0.3
    coordinate = CoordinateClassifier(5, 0.4)
    p = np.array([0.6, 0.2, 0.2])
    feng_exact = 0.25 * (norm.ppf(p[0]) - norm.ppf(p[1]))
    for name, certifier in (
        ("cohen", CohenCertifier()),
        ("feng", FengCertifier()),
        ("sequential grid", SequentialCertifier()),
        ("sequential tolerance", SequentialCertifier(mode="tolerance", tau=0.02)),
    ):
        yield name, "gaussian, hyperplane", certifier, linear, at, GaussianNoise(0.5), 1, 0.5
    three = "gaussian, 3 bins (0.6, 0.2, 0.2)"
    yield "feng", three, FengCertifier(), ThreeBins(), centre, GaussianNoise(0.5), 0, feng_exact
    mixed_exact = 0.5 * (1.0 - norm.ppf((1 + 0.25) / 2))
    for radius in ("tight", "closed_form"):
        setting = "gaussian, hyperplane robust member, weight 0.8"
        certifier, mixture = MixedCertifier(radius=radius), Mixture(linear, 0.8)
        yield f"mixed {radius}", setting, certifier, mixture, at, GaussianNoise(0.5), 1, mixed_exact
    for noise in (UniformNoise(0.5), LaplaceNoise(0.5)):
        for name, certifier in (("cohen", CohenCertifier()), ("sequential grid", SequentialCertifier())):
            yield name, f"{noise}, one pixel", certifier, coordinate, pixel, noise, 1, 0.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--n", type=int, default=1000, help="n (N_max for sequential)")
    parser.add_argument("--only", nargs="*", default=None, help="certifiers whose name starts with one of these")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"alpha={args.alpha}, n0=100, n={args.n}, {args.trials} independent certifications each\n")
    print("| certifier | setting | exact radius | failures | share | 95% CP interval | mean radius |")
    print("|---|---|---|---|---|---|---|")
    for seed, (name, setting, certifier, model, image, noise, true, exact) in enumerate(settings()):
        if args.only is not None and not any(name.startswith(prefix) for prefix in args.only):
            continue
        x = image.expand(args.trials, *image.shape).clone()
        generators = [torch.Generator().manual_seed(seed * 10**7 + i) for i in range(args.trials)]
        sampling = dict(n0=100, n=args.n, alpha=args.alpha, batch_size=1000, generator=generators)
        certs = certifier.certify(model, x, noise, **sampling)
        failures = sum(c.prediction != ABSTAIN and (c.prediction != true or c.radius > exact + 1e-9) for c in certs)
        low, high = proportion_confint(failures, args.trials, alpha=0.05, method="beta")
        mean = np.mean([c.radius for c in certs])
        cells = [name, setting, f"{exact:.3f}", str(failures), f"{failures / args.trials:.4f}"]
        cells += [f"{low:.4f}-{high:.4f}", f"{mean:.3f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
