"""The two statistical tests against statsmodels, an independent implementation, and against coverage."""

import numpy as np
import pytest
from statsmodels.stats.proportion import binom_test, proportion_confint

from rs_plugins.certify.stats import (
    binomial_pvalue,
    clopper_pearson_lower,
    min_samples_to_certify,
    min_samples_to_predict,
)


@pytest.mark.parametrize("n", [1, 10, 100, 100_000])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_clopper_pearson_matches_statsmodels_including_edges(n, alpha):
    ks = sorted({0, 1, n // 2, n - 1, n} - {-1})
    ours = clopper_pearson_lower(ks, n, alpha)
    # Cohen et al. compute the one-sided bound as the lower end of the two-sided 1 - 2 alpha interval.
    oracle = [proportion_confint(k, n, alpha=2 * alpha, method="beta")[0] for k in ks]
    np.testing.assert_allclose(ours, oracle, rtol=1e-10, atol=1e-12)


def test_clopper_pearson_closed_form_edges():
    assert clopper_pearson_lower(0, 50, 0.01) == 0.0
    assert clopper_pearson_lower(50, 50, 0.01) == pytest.approx(0.01 ** (1 / 50), rel=1e-12)


def test_clopper_pearson_covers_the_true_proportion_at_level_alpha():
    rng = np.random.default_rng(0)
    p, n, alpha, trials = 0.7, 200, 0.05, 20_000
    bounds = clopper_pearson_lower(rng.binomial(n, p, size=trials), n, alpha)
    miss_rate = np.mean(bounds > p)
    assert miss_rate <= alpha  # exact CP is conservative: the rate of bounds above p never exceeds alpha
    assert miss_rate > alpha / 4  # ...but not absurdly so, which would mean a wrong quantile


@pytest.mark.parametrize("k, n", [(0, 1), (5, 10), (10, 10), (60, 100), (90, 100), (51, 101)])
def test_binomial_pvalue_matches_statsmodels(k, n):
    assert binomial_pvalue(k, n) == pytest.approx(binom_test(k, n, prop=0.5, alternative="two-sided"), rel=1e-9)


@pytest.mark.parametrize("alpha", [0.1, 0.01, 0.001, 1e-6])
def test_minimum_sample_sizes_are_tight(alpha):
    n = min_samples_to_certify(alpha)
    assert clopper_pearson_lower(n, n, alpha) >= 0.5 > clopper_pearson_lower(n - 1, n - 1, alpha)
    m = min_samples_to_predict(alpha)
    assert binomial_pvalue(m, m) <= alpha < binomial_pvalue(m - 1, m - 1)


@pytest.mark.parametrize("alpha", [1e-17, 1e-20, 1e-40])
@pytest.mark.parametrize(("k", "n"), [(0, 1000), (3, 1000), (500, 1000), (900, 1000)])
def test_clopper_pearson_upper_keeps_its_level_below_1e_16(k, n, alpha):
    """Issue 17 item 5: the bound U solves P[Bin(n, U) <= k] = alpha, checked with mpmath at 50 digits."""
    import mpmath

    from rs_plugins.certify.stats import clopper_pearson_upper

    mpmath.mp.dps = 50
    upper = float(clopper_pearson_upper(k, n, alpha))
    assert upper < 1
    tail = mpmath.betainc(k + 1, n - k, upper, 1, regularized=True)  # = P[Bin(n, upper) <= k]
    assert float(tail) == pytest.approx(alpha, rel=1e-6)


def test_bernstein_margin_at_one_sample_is_finite_and_sound():
    """Issue 17 item 5: one value gives no variance; the margin must be 1 (covers [0, 1]), not a division by 0."""
    from rs_plugins.builtin.adaptive.certificate import bernstein_margin

    margin = bernstein_margin(np.zeros(3), 1, 0.1)
    np.testing.assert_array_equal(margin, np.ones(3))
