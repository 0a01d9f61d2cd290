"""Issue 28: the soundness bench (``rs_plugins.testing.check_certifier_soundness``, ``rs-plugins check-certifier``)
passes every built-in certifier and fails each deliberately unsound one; its closed forms are checked by simulation."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

import rs_plugins
from rs_plugins import cli
from rs_plugins.certify.soundness import SIGMA, IntervalClassifier, exact_radius, standard_cases
from rs_plugins.testing import check_certifier_soundness

HELPERS = Path(__file__).parent / "helpers"

BUILT_IN = {
    "cohen": {},
    "cohen_label": {"class_selection": "label"},
    "feng": {},
    "cpm": {},
    "sequential": {},
    "mixed": {},
}
TRIALS = {"sequential": 200}
"""Fewer trials where a certification costs more (sequential bounds each image at every look): seconds each."""


@pytest.fixture(scope="module")
def host():
    return rs_plugins.Host()


@pytest.fixture(scope="module")
def unsound(tmp_path_factory):
    import sys

    sys.path.insert(0, str(HELPERS))
    try:
        import unsound_certifiers  # noqa: PLC0415
    finally:
        sys.path.remove(str(HELPERS))
    return unsound_certifiers


@pytest.mark.parametrize("case", list(BUILT_IN))
def test_every_built_in_certifier_passes(host, case):
    spec = host.component("certifier", case.split("_")[0]).spec
    report = check_certifier_soundness(spec, options=BUILT_IN[case], host=host, trials=TRIALS.get(case, 400))
    assert report.sound and report.results
    assert all(r.answered > 0 for r in report.results if "near-tie" not in r.case)  # it certified, not abstained


@pytest.mark.parametrize("name", ["largest_of_looks", "reused_selection", "empirical_runner_up"])
def test_each_deliberately_unsound_certifier_fails(unsound, name):
    host = rs_plugins.Host(plugins=[unsound])
    spec = host.component("certifier", name).spec
    with pytest.raises(AssertionError, match="UNSOUND: a case fails more than alpha"):
        check_certifier_soundness(spec, host=host)
    report = check_certifier_soundness(spec, host=host, strict=False)
    caught = {"largest_of_looks": "two classes", "reused_selection": "near-tie",
              "empirical_runner_up": "runner-up + 8 thin classes"}[name]  # fmt: skip
    assert any(r.case.startswith(caught) and r.low > report.alpha for r in report.results)


def test_the_cases_closed_forms_match_simulation_and_cohens_theorem():
    """Each half-space case's smoothed probabilities (Monte Carlo, 200 000 draws) and, where Cohen et al.'s
    Theorem 1 is tight (one class above, one below, thin classes between), its exact radius."""
    cases = {c.name: c for c in standard_cases()}
    for case in [c for c in cases.values() if isinstance(c.model, IntervalClassifier)]:
        model = case.model
        exact = model.probabilities(np.array([model.offset]), SIGMA)[0]
        x = case.x.expand(200_000, *case.x.shape)
        votes = model(x + SIGMA * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).argmax(1)
        np.testing.assert_allclose(np.bincount(votes.numpy(), minlength=len(exact)) / 200_000, exact, atol=0.004)
        assert case.prediction == int(np.argmax(exact))
    assert cases["two classes, p_A 0.8"].radius == pytest.approx(SIGMA * norm.ppf(0.8), abs=1e-9)
    probabilities = cases["runner-up + 8 thin classes"].model.probabilities(
        np.array([cases["runner-up + 8 thin classes"].model.offset]), SIGMA
    )[0]
    top, runner_up = np.sort(probabilities)[::-1][:2]
    theorem = SIGMA / 2 * (norm.ppf(top) - norm.ppf(runner_up))
    assert cases["runner-up + 8 thin classes"].radius == pytest.approx(theorem, abs=1e-9)


def test_exact_radius_finds_the_nearest_change_either_way():
    assert exact_radius(lambda s: (s > -0.3).astype(int), 2.0, 0.01) == pytest.approx(0.3, abs=1e-12)
    assert exact_radius(lambda s: (s < 0.7).astype(int) + (s < -1.5), 3.0, 0.01) == pytest.approx(0.7, abs=1e-12)
    assert exact_radius(lambda s: np.zeros(len(s), dtype=int), 1.0, 0.1) == np.inf


def test_the_command_says_sound_or_unsound_with_exit_status(unsound, monkeypatch, capsys):
    monkeypatch.setattr(cli.shared, "Host", functools.partial(rs_plugins.Host, plugins=[unsound]))
    assert cli.main(["check-certifier", "cohen", "--trials", "200"]) == 0
    printed = capsys.readouterr().out
    assert "soundness bench: cohen" in printed and "sound: no case fails more than alpha" in printed
    assert cli.main(["check-certifier", "empirical_runner_up"]) == 1
    assert "UNSOUND" in capsys.readouterr().out
    assert cli.main(["check-certifier", "nope"]) == 2
    assert "no certifier named 'nope'" in capsys.readouterr().err
