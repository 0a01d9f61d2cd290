"""Issue 17: the mixed certifier's tight radius and the one bound on the runner-up (feng, mixed), against
closed forms, an independent root finder and simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint
from torch import nn

from rs_plugins import ABSTAIN
from rs_plugins.builtin.adaptive.certificate import MixedCertifier, mixed_radius, tight_mixed_radius
from rs_plugins.builtin.feng import feng_radius
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.stats import clopper_pearson_lower, clopper_pearson_upper
from rs_plugins.testing import LinearClassifier

ALPHA = 0.1


def assert_not_above_alpha(failures: int, trials: int, what: str) -> None:
    low, high = proportion_confint(failures, trials, alpha=0.01, method="beta")
    assert low <= ALPHA, f"{what}: {failures}/{trials} fail (99% CI {low:.3f}-{high:.3f}), alpha={ALPHA}"


@settings(max_examples=300, deadline=None)
@given(
    st.floats(0.01, 0.999999),
    st.floats(0.0, 1.0),
    st.floats(0.5, 1.0, exclude_min=True),
    st.floats(0.05, 2.0),
)
def test_tight_mixed_radius_is_never_smaller_than_the_closed_form(p1, share, alpha_mix, sigma):
    p2 = max(share * (1 - p1), 1e-12)
    tight = float(tight_mixed_radius(p1, p2, alpha_mix, sigma))
    closed = float(mixed_radius(p1, p2, alpha_mix, sigma))
    assert tight >= closed - 1e-9 * sigma


@pytest.mark.parametrize(("p1", "p2", "alpha_mix"), [(0.9, 0.05, 0.8), (0.99, 0.01, 0.76), (0.7, 0.2, 0.9)])
def test_tight_mixed_radius_is_the_root_of_cohens_lemma(p1, p2, alpha_mix):
    """The bisection agrees with scipy's brentq on Phi(Phi^-1 p1 - t) - Phi(Phi^-1 p2 + t) = mu."""
    mu = (1 - alpha_mix) / alpha_mix
    root = brentq(lambda t: norm.cdf(norm.ppf(p1) - t) - norm.cdf(norm.ppf(p2) + t) - mu, 0, 20, xtol=1e-14)
    sigma = 0.5
    assert float(tight_mixed_radius(p1, p2, alpha_mix, sigma)) == pytest.approx(sigma * root, abs=1e-10)
    assert float(tight_mixed_radius(p1, p2, alpha_mix, sigma)) > float(mixed_radius(p1, p2, alpha_mix, sigma))
    a, b = norm.ppf(p1), norm.ppf(p2)  # alpha = 1 is Cohen et al.'s radius sigma/2 (a - b)
    assert float(tight_mixed_radius(p1, p2, 1.0, sigma)) == pytest.approx(sigma / 2 * (a - b), abs=1e-10)


class Mixture(nn.Module):
    """The attributes the mixed certifier reads: a robust member and its certified weight."""

    def __init__(self, robust: nn.Module, alpha_mix: float) -> None:
        super().__init__()
        self.robust, self.certified_alpha, self.rob_scale = robust, alpha_mix, 1.0


@pytest.mark.parametrize("radius", ["tight", "closed_form"])
def test_mixed_certificates_never_exceed_the_exact_radius_beyond_alpha(radius):
    """A hyperplane robust member: h-bar is Phi(distance / sigma), so for two classes and the worst g (all its mass
    on the other class) the mixture's exact radius is sigma (Phi^-1 p1 - Phi^-1((1 + mu) / 2))."""
    sigma, d, alpha_mix, trials = 0.5, 0.5, 0.8, 300
    w = torch.tensor([1.0, -1.0] * 8).reshape(1, 4, 4)
    centre = torch.full((1, 4, 4), 0.5)
    robust = LinearClassifier(w, b=-float((w * centre).sum()))
    image = centre + d * w / w.norm()
    mu = (1 - alpha_mix) / alpha_mix
    exact = sigma * (d / sigma - norm.ppf((1 + mu) / 2))
    x = image.expand(trials, *image.shape).clone()
    generators = [torch.Generator().manual_seed(i) for i in range(trials)]
    certs = MixedCertifier(radius=radius).certify(
        Mixture(robust, alpha_mix),
        x,
        GaussianNoise(sigma),
        n0=50,
        n=500,
        alpha=ALPHA,
        batch_size=1000,
        generator=generators,
    )
    failures = sum(c.prediction != ABSTAIN and (c.prediction != 1 or c.radius > exact + 1e-9) for c in certs)
    assert_not_above_alpha(failures, trials, radius)
    assert sum(c.prediction == 1 for c in certs) > 0.9 * trials
    if radius == "tight":  # the same draws with the closed form certify no more
        closed = MixedCertifier(radius="closed_form").certify(
            Mixture(robust, alpha_mix),
            x,
            GaussianNoise(sigma),
            n0=50,
            n=500,
            alpha=ALPHA,
            batch_size=1000,
            generator=[torch.Generator().manual_seed(i) for i in range(trials)],
        )
        assert all(t.radius >= c.radius - 1e-12 for t, c in zip(certs, closed))
        assert np.mean([t.radius for t in certs]) > np.mean([c.radius for c in closed])


def test_mixed_refuses_an_unknown_radius_option():
    with pytest.raises(ValueError, match="radius must be one of tight, closed_form"):
        MixedCertifier(radius="loose")


PROBABILITIES = {
    "one runner-up": [0.55, 0.3] + [0.15 / 8] * 8,
    "many runner-ups": [0.4] + [0.1] * 6,
}


@pytest.mark.parametrize("case", list(PROBABILITIES))
def test_feng_one_runner_up_bound_is_sound_and_tighter_than_bonferroni(case):
    """Simulated counts with known class probabilities: the bounds fail together at most alpha of the time
    (a radius above sigma/2 (Phi^-1 p_A - Phi^-1 p_B) at the true p_A, p_B needs one to fail), and the radius is
    at least the Bonferroni one over K - 1, larger on average."""
    p = np.array(PROBABILITIES[case])
    sigma, n, trials, split = 0.5, 1000, 4000, 0.5
    counts = torch.as_tensor(np.random.default_rng(0).multinomial(n, p, size=trials))
    top = torch.zeros(trials, dtype=torch.int64)
    radii, p_a = feng_radius(counts, top, sigma=sigma, alpha=ALPHA, split=split)
    true = sigma / 2 * (norm.ppf(p[0]) - norm.ppf(p[1:].max()))
    radii = radii.numpy()
    failures = int(np.sum(~np.isnan(radii) & (radii > true + 1e-12)))
    assert_not_above_alpha(failures, trials, case)
    # Bonferroni over the K - 1 others, transcribed from the previous version
    runner_up = counts[:, 1:].max(1).values.numpy()
    upper = np.minimum(clopper_pearson_upper(runner_up, n, (1 - split) * ALPHA / (len(p) - 1)), 1 - p_a.numpy())
    lower = clopper_pearson_lower(counts[:, 0].numpy(), n, split * ALPHA)
    old = np.where(lower > upper, sigma / 2 * (norm.ppf(lower) - norm.ppf(upper)), np.nan)
    both = ~np.isnan(old)
    assert np.all(~np.isnan(radii[both])) and np.all(radii[both] >= old[both] - 1e-12)
    assert radii[both].mean() > old[both].mean()
