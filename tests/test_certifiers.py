"""Every built-in certifier is sound on closed forms, and the bounds it uses match independent oracles.

Soundness: a base classifier whose smoothed classifier is known exactly (a hyperplane under Gaussian noise, a
one-pixel threshold under l1 noises, a one-pixel binning into several classes) is certified >= 1,000 times
independently at alpha = 0.05. A certificate fails when it names a class other than g(x) or a radius above the
exact one. A sound certifier fails at a rate of at most alpha, and Clopper-Pearson bounds come close to it, so
the observed share may sit a little above alpha by chance: the check is that its 99% Clopper-Pearson interval
reaches down to alpha, i.e. the data show no violation. With 1,000 trials that catches a certifier failing at
2 alpha (the usual bug: a level spent twice), as ``test_the_soundness_check_catches_a_doubled_alpha`` shows.
Points on the decision boundary must abstain.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta as beta_distribution
from scipy.stats import laplace, norm
from statsmodels.stats.proportion import proportion_confint

from rs_plugins import ABSTAIN, Host
from rs_plugins.builtin.feng import FengCertifier, feng_radius
from rs_plugins.builtin.gaussian import CohenCertifier, GaussianNoise
from rs_plugins.builtin.laplace import LaplaceNoise
from rs_plugins.builtin.sequential import SequentialCertifier, look_schedule, spending, thresholds
from rs_plugins.builtin.uniform import UniformNoise
from rs_plugins.certify.sampling import sample_counts, sample_requests
from rs_plugins.certify.stats import clopper_pearson_lower, clopper_pearson_upper
from rs_plugins.testing import CoordinateClassifier, LinearClassifier, tiny_classifier

ALPHA = 0.05
TRIALS = 1000

CERTIFIERS = {
    "cohen": (CohenCertifier, {}),
    "feng": (FengCertifier, {}),
    "sequential_grid": (SequentialCertifier, {"mode": "grid"}),
    "sequential_tolerance": (SequentialCertifier, {"mode": "tolerance", "tau": 0.02}),
}


def certify_many(certifier, model, image, noise, *, n=1000, labels=None, seed=0):
    """TRIALS independent certifications of one image (C, H, W), each with its own generator."""
    x = image.expand(TRIALS, *image.shape).clone()
    generators = [torch.Generator().manual_seed(seed * TRIALS + i) for i in range(TRIALS)]
    extra = {} if labels is None else {"labels": torch.full((TRIALS,), labels)}
    return certifier.certify(model, x, noise, n0=100, n=n, alpha=ALPHA, batch_size=1000, generator=generators, **extra)


def check_sound(certs, true_class: int, exact_radius: float, what: str = "") -> float:
    """Assert that the share of certificates naming another class or a radius above the exact one is not
    significantly above ALPHA (its 99% Clopper-Pearson interval reaches ALPHA); return the share."""
    failures = sum(
        c.prediction != ABSTAIN and (c.prediction != true_class or c.radius > exact_radius + 1e-9) for c in certs
    )
    low, high = proportion_confint(failures, len(certs), alpha=0.01, method="beta")
    share = failures / len(certs)
    assert low <= ALPHA, f"{what}: {share:.3f} of certificates fail (99% CI {low:.3f}-{high:.3f}), alpha={ALPHA}"
    return share


def linear_setting(d: float):
    """A hyperplane through the grey 4x4 image and a point at signed distance d: exact l2 radius |d|."""
    w = torch.tensor([1.0, -1.0] * 8).reshape(1, 4, 4)
    centre = torch.full((1, 4, 4), 0.5)
    return LinearClassifier(w, b=-float((w * centre).sum())), centre + d * w / w.norm()


@pytest.mark.parametrize("name", list(CERTIFIERS))
def test_gaussian_certificates_never_exceed_the_exact_radius_beyond_alpha(name):
    build, options = CERTIFIERS[name]
    sigma, d = 0.5, 0.5  # p_A = Phi(1) = 0.84
    model, image = linear_setting(d)
    certs = certify_many(build(**options), model, image, GaussianNoise(sigma))
    check_sound(certs, 1, d, name)
    assert sum(c.prediction == 1 for c in certs) > 0.9 * TRIALS  # and it does certify


def test_the_soundness_check_catches_a_doubled_alpha():
    """Cohen's CERTIFY run at 2 alpha but judged at alpha: a certifier that spends its level twice is caught."""
    model, image = linear_setting(0.5)
    x = image.expand(TRIALS, 1, 4, 4).clone()
    generators = [torch.Generator().manual_seed(i) for i in range(TRIALS)]
    noise = GaussianNoise(0.5)
    certs = CohenCertifier().certify(model, x, noise, n0=100, n=1000, alpha=2 * ALPHA, generator=generators)
    with pytest.raises(AssertionError, match="of certificates fail"):
        check_sound(certs, 1, 0.5)


@pytest.mark.parametrize("name", list(CERTIFIERS))
def test_boundary_points_abstain(name):
    build, options = CERTIFIERS[name]
    model, image = linear_setting(0.0)  # p_A = 1/2: g(x) is a tie, no class may be certified
    certs = certify_many(build(**options), model, image, GaussianNoise(0.5), seed=1)
    answered = sum(c.prediction != ABSTAIN for c in certs)
    low, high = proportion_confint(answered, TRIALS, alpha=0.01, method="beta")
    assert low <= ALPHA, f"{name} answered on {answered / TRIALS:.3f} of boundary points (99% CI {low:.3f}-{high:.3f})"


class BinClassifier(torch.nn.Module):
    """K classes from which interval between ``edges`` pixel 0 falls in, class ``labels[b]`` for interval b."""

    def __init__(self, edges, labels):
        super().__init__()
        self.edges, self.labels = torch.tensor(edges, dtype=torch.float64), torch.tensor(labels)

    def forward(self, x):
        bins = torch.bucketize(x.flatten(1)[:, 0].double(), self.edges)
        return torch.nn.functional.one_hot(self.labels[bins], len(self.labels)).float()

    def probabilities(self, value: float, sigma: float) -> np.ndarray:
        cdf = norm.cdf((np.array([-np.inf, *self.edges.tolist(), np.inf]) - value) / sigma)
        p = np.zeros(len(self.labels))
        p[self.labels.numpy()] = np.diff(cdf)
        return p


@pytest.mark.parametrize(
    "edges, labels",
    [
        ([0.2, 0.95, 1.3], [2, 0, 3, 1]),  # p = (0.54, 0.06, 0.27, 0.13) at 0.5: runner-up well below 1 - p_A
        ([0.5 - 0.4208, 0.5 + 0.4208], [1, 0, 2]),  # p = (0.6, 0.2, 0.2): the runner-up is a coin flip
    ],
)
@pytest.mark.parametrize("class_selection", ["n0", "label"])
def test_feng_never_exceeds_theorem_1_at_the_exact_probabilities(edges, labels, class_selection):
    """sigma/2 (Phi^-1 p_A - Phi^-1 max_i p_i) from the exact probabilities bounds what any sound certificate says."""
    sigma = 0.5
    model = BinClassifier(edges, labels)
    p = model.probabilities(0.5, sigma)
    top = int(p.argmax())
    assert top == 0 and p[0] > 0.5  # the settings above: a clear top class, the rest split
    exact = sigma / 2 * (norm.ppf(p[top]) - norm.ppf(np.delete(p, top).max()))
    image = torch.full((1, 2, 2), 0.5)
    certifier = FengCertifier(class_selection=class_selection)
    label = top if class_selection == "label" else None
    certs = certify_many(certifier, model, image, GaussianNoise(sigma), labels=label)
    check_sound(certs, top, exact)
    cohen = sigma * norm.ppf(p[top])
    assert np.median([c.radius for c in certs]) > cohen  # and it beats what Cohen could certify even exactly


@pytest.mark.parametrize("noise", [UniformNoise(0.5), LaplaceNoise(0.5)], ids=["uniform", "laplace"])
@pytest.mark.parametrize("name", ["cohen", "sequential_grid"])
def test_l1_certificates_never_exceed_the_exact_radius_beyond_alpha(noise, name):
    build, options = CERTIFIERS[name]
    d = 0.3
    model = CoordinateClassifier(index=5, threshold=0.4)
    image = torch.full((1, 4, 4), 0.4)
    image.view(-1)[5] += d  # pixel 5 sits d above the threshold: exact l1 radius d
    certs = certify_many(build(**options), model, image, noise, seed=2)
    check_sound(certs, 1, d, f"{name} with {noise}")
    assert np.mean([c.radius for c in certs]) > 0.5 * d


@pytest.mark.parametrize("noise, cdf", [(UniformNoise(0.4), None), (LaplaceNoise(0.4), laplace)], ids=["u", "l"])
def test_l1_radius_is_exact_on_a_one_pixel_threshold(noise, cdf):
    """At the exact top-class probability the noise's radius equals the distance to the threshold (tightness)."""
    for d in (0.05, 0.2, 0.5):
        if cdf is None:  # uniform on [-lambda, lambda]
            p = min(1.0, 0.5 + d / (2 * noise.lambd))
        else:
            p = cdf.cdf(d, scale=noise.lambd)
        assert float(noise.radius(torch.tensor(p, dtype=torch.float64))) == pytest.approx(d, rel=1e-9)


# -- the bounds --------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 10**6), fraction=st.floats(0, 1), alpha=st.floats(1e-6, 0.5))
def test_upper_bound_matches_statsmodels_and_stays_in_range(n, fraction, alpha):
    k = round(fraction * n)
    ours = float(clopper_pearson_upper(k, n, alpha))
    oracle = proportion_confint(k, n, alpha=2 * alpha, method="beta")[1]  # one side of the 1 - 2 alpha interval
    assert ours == pytest.approx(oracle, rel=1e-9, abs=1e-12)
    assert 0 <= ours <= 1
    assert ours >= float(clopper_pearson_lower(k, n, alpha))
    assert ours == 1.0 if k == n else ours == pytest.approx(beta_distribution.ppf(1 - alpha, k + 1, n - k))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 10**5), fraction=st.floats(0, 1), alpha=st.floats(1e-6, 0.5))
def test_bounds_are_monotone_in_the_count(n, fraction, alpha):
    k = min(n - 1, round(fraction * n))
    assert clopper_pearson_lower(k + 1, n, alpha) > clopper_pearson_lower(k, n, alpha)
    assert clopper_pearson_upper(k + 1, n, alpha) > clopper_pearson_upper(k, n, alpha)


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_bounds_at_edge_counts(n):
    alpha = 0.01
    assert clopper_pearson_lower(0, n, alpha) == 0.0
    assert clopper_pearson_upper(n, n, alpha) == 1.0
    assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n))
    assert clopper_pearson_upper(0, n, alpha) == pytest.approx(1 - alpha ** (1 / n))


@settings(max_examples=100, deadline=None)
@given(
    counts=st.lists(st.integers(0, 5000), min_size=2, max_size=10).filter(lambda c: sum(c) > 0),
    alpha=st.floats(1e-5, 0.2),
)
def test_feng_radius_is_theorem_1_at_one_runner_up_bound_and_never_below_cohen(counts, alpha):
    """Recomputed with statsmodels (the runner-up bounded at the whole (1 - split) alpha, issue 17); and with p_B
    clipped to 1 - p_A,low it is at least Cohen's radius at alpha/2."""
    c = torch.tensor([counts])
    top = int(c.argmax())
    n = sum(counts)
    radius, p_a = feng_radius(c, torch.tensor([top]), sigma=1.0, alpha=alpha)
    low = proportion_confint(counts[top], n, alpha=alpha, method="beta")[0]  # one side at alpha/2
    rest = [m for i, m in enumerate(counts) if i != top]
    others = [1.0 if m == n else proportion_confint(m, n, alpha=alpha, method="beta")[1] for m in rest]
    p_b = min(max(others), 1 - low)
    assert float(p_a[0]) == pytest.approx(low, abs=1e-12)
    if low > p_b:
        assert float(radius[0]) == pytest.approx(0.5 * (norm.ppf(low) - norm.ppf(p_b)), rel=1e-7, abs=1e-9)
        if low > 0.5:
            assert float(radius[0]) >= norm.ppf(low) - 1e-9  # Cohen's sigma Phi^-1(p_A,low) at the same level
    else:
        assert math.isnan(float(radius[0]))


# -- the sequential certifier ------------------------------------------------------------------------------


def test_looks_and_spending():
    looks = look_schedule(100_000, 1000)
    assert looks[0] == 50 and looks[-1] == 100_000 and looks == sorted(set(looks))
    assert all(look % 1000 == 0 for look in looks if look >= 1000)
    alphas, betas = spending(len(looks), 0.001, 0.001)
    assert alphas[-1] == 0.0005 and alphas.sum() == pytest.approx(0.001) and betas.sum() == pytest.approx(0.001)
    assert look_schedule(40, 1000) == [40]


def test_thresholds_invert_the_noise_radius():
    noise = GaussianNoise(0.5)
    t = thresholds(noise, [0.0, 0.25, 1.0])
    np.testing.assert_allclose(t, [0.5, norm.cdf(0.5), norm.cdf(2.0)], rtol=1e-9)
    assert thresholds(UniformNoise(0.5), [10.0])[0] == np.inf  # beyond what the noise can ever certify


def test_requests_draw_each_images_noise_as_sample_counts_does_whatever_the_packing():
    model, x, noise = tiny_classifier().eval(), torch.rand(3, 1, 8, 8), GaussianNoise(0.5)

    def generators():
        return [torch.Generator().manual_seed(i) for i in range(3)]

    expected = sample_counts(model, x, noise, 300, batch_size=64, generator=generators())
    for batch_size in (64, 1000):
        requests = [(0, 300), (1, 300), (2, 300)]
        got = sample_requests(model, x, noise, requests, batch_size=batch_size, generators=generators())
        assert torch.equal(got, expected)
    split = sample_requests(model, x, noise, [(2, 300), (0, 64), (0, 236)], batch_size=64, generators=generators())
    assert torch.equal(split[0], expected[2]) and torch.equal(split[1] + split[2], expected[0])


def test_sequential_result_does_not_depend_on_grouping_and_saves_samples():
    model, image = linear_setting(0.0)
    x = torch.stack([linear_setting(d)[1] for d in (0.05, 0.3, 0.9, -0.4, 2.0)])
    noise, certifier = GaussianNoise(0.5), SequentialCertifier()
    kwargs = dict(n0=100, n=20_000, alpha=0.001, batch_size=1000)
    generators = [torch.Generator().manual_seed(i) for i in range(5)]
    together = certifier.certify(model, x, noise, generator=generators, **kwargs)
    alone = [
        certifier.certify(model, x[i : i + 1], noise, generator=[torch.Generator().manual_seed(i)], **kwargs)[0]
        for i in range(5)
    ]
    assert together == alone
    assert all(100 + 50 <= c.samples <= 100 + 20_000 for c in together)
    assert together[2].samples < 20_000 and together[2].prediction == 1  # far from the boundary: decided early


def test_label_selection_skips_the_n0_pass_and_needs_labels():
    model, image = linear_setting(0.4)
    x = image.expand(2, 1, 4, 4).clone()
    for build in (CohenCertifier, FengCertifier):
        certs = build(class_selection="label").certify(
            model, x, GaussianNoise(0.5), n0=100, n=500, alpha=0.01, labels=torch.tensor([1, 0])
        )
        assert [c.samples for c in certs] == [500, 500]
        assert certs[0].prediction == 1 and certs[1].prediction == ABSTAIN  # label 0 has probability 0.21
        with pytest.raises(ValueError, match="labels"):
            build(class_selection="label").certify(model, x, GaussianNoise(0.5), n0=100, n=500, alpha=0.01)
    with pytest.raises(ValueError, match="class_selection must be one of n0, label; got 'oracle'"):
        SequentialCertifier(class_selection="oracle")


def test_options_and_noises_are_checked_before_sampling():
    host = Host()
    unknown = r"certifier 'sequential' from plugin .* has no option 'tolerance' .*; accepted: mode, radii"
    with pytest.raises(ValueError, match=unknown):
        host.certifier("sequential", tolerance=0.1)
    with pytest.raises(Exception, match=r"certifier 'feng' supports noise \['gaussian'\]; got 'laplace'"):
        host.check_compatible("feng", "laplace")
    host.check_compatible("sequential", "laplace")
    with pytest.raises(ValueError, match="feng"):
        FengCertifier().certify(*linear_setting(0.4), UniformNoise(0.5), n=100)
    with pytest.raises(ValueError, match="mode must be one of grid, tolerance"):
        SequentialCertifier(mode="fast")
    with pytest.raises(ValueError, match="split must be in"):
        FengCertifier(split=1.0)


def _pairs():
    host = Host()
    return [(c, n) for c in host.names("certifier") for n in host.names("noise")]


@pytest.mark.parametrize(("certifier", "noise"), _pairs())
def test_every_certifier_refuses_a_noise_it_has_no_radius_for_from_python(certifier, noise):
    """Issue 17 item 1: the API refuses an unsupported pair where it is built and where it is called."""
    from rs_plugins import SmoothedClassifier
    from rs_plugins.errors import IncompatibleComponentsError

    host = Host()
    supported = host.component("certifier", certifier).spec.noises
    built_certifier, built_noise = host.certifier(certifier), host.noise(noise, sigma=0.25)
    model, image = linear_setting(0.1)
    if not supported or noise in supported:
        host.check_compatible(certifier, noise)
        SmoothedClassifier(model, built_noise, built_certifier)
        return
    names = rf"certifier '{certifier}' .*supports noise .*{noise}"
    with pytest.raises(IncompatibleComponentsError, match=names):
        host.check_compatible(certifier, noise)
    with pytest.raises(IncompatibleComponentsError, match=names + ".*from plugin"):
        SmoothedClassifier(model, built_noise, built_certifier)
    with pytest.raises(ValueError if certifier == "feng" else IncompatibleComponentsError, match=certifier):
        built_certifier.certify(model, image[None], built_noise, n0=10, n=20, alpha=0.1, batch_size=20)


@pytest.mark.parametrize(("d", "radii"), [(0.9, [10.0]), (2.0, [0.0, 0.25])])
def test_sequential_best_samples_on_for_the_best_radius(d, radii):
    """Issue 17 item 8: every table radius out of reach, or all decided at once, stops the default early with a
    small radius; best=True samples on and certifies more, still within the exact radius d."""
    model, image = linear_setting(d)
    kwargs = dict(n0=100, n=20_000, alpha=0.001, batch_size=1000, generator=[torch.Generator().manual_seed(0)])
    default = SequentialCertifier(radii=radii).certify(model, image[None], GaussianNoise(0.5), **kwargs)[0]
    kwargs["generator"] = [torch.Generator().manual_seed(0)]
    best = SequentialCertifier(radii=radii, best=True).certify(model, image[None], GaussianNoise(0.5), **kwargs)[0]
    assert best.prediction == default.prediction == 1
    assert best.samples > default.samples and best.radius > default.radius + 0.1 and best.radius <= d
    assert "best=true" in SequentialCertifier().stopping
    with pytest.raises(ValueError, match="best must be true or false"):
        SequentialCertifier(best="yes")
