"""The statistical tests of Cohen et al. (2019) and the one-sided bounds the other certifiers need, with SciPy only."""

from __future__ import annotations

import numpy as np
from scipy.stats import beta, binomtest


def clopper_pearson_lower(k, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion from k successes in n.

    This is the alpha-quantile of Beta(k, n - k + 1), i.e. the lower end of the two-sided interval at level
    1 - 2 alpha that Cohen's code computes with statsmodels; it is 0 for k = 0 and alpha**(1/n) for k = n.
    """
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(alpha, k, n - k + 1)
    return np.where(k == 0, 0.0, bound)


def clopper_pearson_upper(k, n, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on a binomial proportion from k successes in n.

    This is the (1 - alpha)-quantile of Beta(k + 1, n - k): 1 for k = n and 1 - alpha**(1/n) for k = 0.
    ``n`` may be an array (one trial count per bound), as the sequential certifier needs. It is computed as the
    upper alpha-quantile (``isf``): 1 - alpha rounds to 1 in float64 for alpha < 1e-16, and ppf(1) is 1.
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta.isf(alpha, k + 1, n - k)
    return np.where(k >= n, 1.0, bound)


def binomial_pvalue(k: int, n: int) -> float:
    """Two-sided p-value of k successes in n trials against p = 1/2 (PREDICT's test)."""
    return binomtest(int(k), int(n), 0.5).pvalue


def min_samples_to_certify(alpha: float) -> int:
    """Smallest n for which CERTIFY can return anything but ABSTAIN at level alpha (all n samples agree)."""
    # alpha**(1/n) >= 1/2  <=>  n >= log(alpha) / log(1/2)
    return int(np.ceil(np.log(alpha) / np.log(0.5)))


def min_samples_to_predict(alpha: float) -> int:
    """Smallest n for which PREDICT can answer at level alpha: 2 * 0.5**n <= alpha."""
    return int(np.ceil(np.log(alpha / 2) / np.log(0.5)))
