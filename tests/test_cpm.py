"""Issue 28: the CPM certifier (Delattre et al., AISTATS 2025) against the authors' code on identical counts, its
bucket rule by hand, and its bounds by simulation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from rs_plugins import ABSTAIN
from rs_plugins.builtin.cpm import CpmCertifier, cpm_buckets, cpm_certificates
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.builtin.uniform import UniformNoise
from rs_plugins.errors import IncompatibleComponentsError

GOLDEN = json.loads((Path(__file__).parent / "data" / "cpm_golden.json").read_text())


def test_golden_values_cover_answers_abstentions_and_many_classes():
    cases = GOLDEN["cases"]
    assert "bridging_the_gap_rs" in GOLDEN["source"] and len(cases) >= 50
    assert sum(c["prediction"] == ABSTAIN for c in cases) >= 5 and sum(c["radius"] > 0 for c in cases) >= 30
    assert any(len(c["selection"]) == 100 for c in cases)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: c["note"])
def test_cpm_matches_the_authors_code_on_identical_counts(case):
    """Golden values made once by running ``Smooth.certify_from_log_cpm(..., mode="Rmulti")`` of
    blaisedelattre/bridging_the_gap_rs on these counts (their statsmodels bounds, ours from scipy's beta)."""
    (cert,) = CpmCertifier().certify_counts(
        torch.tensor([case["selection"]]), torch.tensor([case["estimation"]]), GaussianNoise(case["sigma"]),
        alpha=case["alpha"],
    )  # fmt: skip
    assert cert.prediction == case["prediction"]
    assert cert.radius == pytest.approx(case["radius"] if case["prediction"] != ABSTAIN else 0.0, abs=1e-9)


def test_buckets_by_hand():
    # I1 = 0, I2 = 1 (20 votes); the rest hold 8 + 6 + 6 = 20, not more than 20: one bucket for all of them
    assert cpm_buckets([60, 20, 8, 6, 6, 0, 0]) == [[0], [1], [2, 3, 4, 5, 6]]
    # I2 = class 2 (12); the rest hold 28 > 12: class 1 (10) alone, 18 > 12: class 3 (9) alone, 9 <= 12: together
    assert cpm_buckets([50, 10, 12, 9, 5, 4, 0]) == [[0], [2], [1], [3], [4, 5, 6]]
    assert cpm_buckets([3, 7]) == [[1], [0]]  # two classes: two buckets, no rest
    assert cpm_buckets([5, 5, 5]) == [[0], [1], [2]]  # ties go to the lower class index


def test_cpm_bounds_fail_together_at_most_alpha():
    """Simulated counts with known class probabilities: a radius above sigma/2 (Phi^-1 p_A - Phi^-1 p_B) needs a
    bound to fail; that happens at most alpha of the time (99% Clopper-Pearson interval)."""
    from statsmodels.stats.proportion import proportion_confint

    p = np.array([0.55, 0.3, 0.08, 0.04, 0.03] + [0.0] * 5)
    sigma, alpha, trials = 0.5, 0.1, 2000
    rng = np.random.default_rng(1)
    selection = torch.as_tensor(rng.multinomial(100, p, size=trials))
    estimation = torch.as_tensor(rng.multinomial(1000, p, size=trials))
    certs = cpm_certificates(selection, estimation, sigma, alpha)
    exact = sigma / 2 * (norm.ppf(p[0]) - norm.ppf(p[1]))
    failures = sum(c.prediction != ABSTAIN and (c.prediction != 0 or c.radius > exact + 1e-12) for c in certs)
    assert proportion_confint(failures, trials, alpha=0.01, method="beta")[0] <= alpha
    assert sum(c.prediction == 0 for c in certs) > 0.9 * trials


def test_cpm_refuses_a_noise_it_has_no_radius_for():
    with pytest.raises(IncompatibleComponentsError, match="certifier 'cpm' supports noise \\['gaussian'\\]"):
        CpmCertifier().certify_counts(torch.tensor([[3, 1]]), torch.tensor([[30, 10]]), UniformNoise(0.5), alpha=0.1)
