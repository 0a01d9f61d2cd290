"""Issue 28: what report shows beside certified accuracy: the p_A lower bounds from the counts log (quantiles in the
summary, a histogram in the plot), the ACR caveat in the notes, and each run's provenance as table columns."""

from __future__ import annotations

import csv
import json
import struct

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from rs_plugins import Counts
from rs_plugins.cli import main
from rs_plugins.results.counts import CountsLog, counts_path
from rs_plugins.results.files import Row
from rs_plugins.results.metrics import ACR_CAVEAT, p_lower_bounds, provenance_cells, quantiles
from rs_plugins.results.report import summarize


def test_p_lower_bounds_are_clopper_pearson_on_the_selected_class(tmp_path):
    """The class is the n0 pass's top (ties to the lower index), or the label where there is no n0 pass."""
    out = tmp_path / "r.tsv"
    with CountsLog(counts_path(out), keep=[]) as log:
        log.append(0, 1, Counts((10, 85, 5), (2, 7, 1)))
        log.append(1, 2, Counts((40, 20, 40), (4, 1, 4)))  # tie on top: class 0
        log.append(2, 2, Counts((0, 30, 70)))  # no selection pass: the label, 2
    found = p_lower_bounds(out, {"alpha": 0.05, "provenance": {"num_classes": 3}})
    expected = [proportion_confint(k, 100, alpha=0.1, method="beta")[0] for k in (85, 40, 70)]
    np.testing.assert_allclose(found, expected, rtol=1e-10)
    assert p_lower_bounds(tmp_path / "none.tsv", {"alpha": 0.05}) is None


def test_quantiles_match_numpy():
    values = list(np.random.default_rng(0).uniform(size=37))
    found = quantiles(values)
    for q in (10, 25, 50, 75, 90):
        assert found[f"q{q}"] == pytest.approx(np.percentile(values, q))
    assert found["mean"] == pytest.approx(np.mean(values)) and found["images"] == 37


def test_the_summary_leads_with_certified_accuracy():
    rows = [Row(0, 1, 1, 0.5, True, 0.1, 100), Row(1, 2, -1, 0.0, False, 0.1, 100)]
    assert list(summarize(rows))[:2] == ["certified_accuracy", "certified_accuracy_at_0"]


def test_provenance_cells_read_the_sidecar():
    settings = {"certifier": "feng", "certifier_option": {"split": 0.3}, "n0": 100, "n": 1000, "alpha": 0.01,
                "seed": 2, "model_sha256": "ab" * 32, "recertified_from": "run.tsv.counts",
                "provenance": {"subset": {"start": 0, "max": None, "every": 20, "limit": None}}}  # fmt: skip
    assert provenance_cells(settings) == ["feng split=0.3", "100", "1000", "0.01", "2", "every=20", "ab" * 6,
                                          "run.tsv.counts"]  # fmt: skip
    assert provenance_cells({}) == [""] * 8


def png_width(path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def test_report_shows_p_a_acr_caveat_and_provenance_columns(tmp_path, capsys):
    out = tmp_path / "run.tsv"
    argv = ["certify", "--random-weights", "--model", "rs_plugins.nets:SmallCNN", "--data", "digits", "--sigma", "0.5",
            "--n0", "20", "--n", "100", "--limit", "4", "--every", "3", "--no-progress", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert main(["recertify", str(out), "--certifier", "cohen", "--alpha", "0.1", "--out", str(tmp_path / "a.tsv"),
                 "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    table, summary = tmp_path / "t.csv", tmp_path / "s.json"
    argv = ["report", str(out), str(tmp_path / "a.tsv"), "--label", "run", "--label", "a", "--provenance",
            "--table", str(table), "--summary", str(summary), "--plot", str(tmp_path / "p.png")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("p_A lower bound: q10") == 2 and f"note: {ACR_CAVEAT}" in printed
    rows = list(csv.DictReader(table.open()))
    assert rows[0]["certifier"] == "cohen" and rows[1]["alpha"] == "0.1" and rows[0]["subset"] == "every=3,limit=4"
    assert rows[1]["recertified_from"] == "run.tsv.counts" and rows[0]["recertified_from"] == ""
    assert rows[0]["model_sha256"] == rows[1]["model_sha256"] != ""
    found = json.loads(summary.read_text())
    assert found["a"]["p_a_lower"]["q50"] >= found["run"]["p_a_lower"]["q50"]  # alpha 0.1: higher bounds
    assert main(["report", str(out), "--plot", str(tmp_path / "one.png")]) == 0
    counts_path(out).rename(tmp_path / "elsewhere")  # without the counts log: no histogram panel
    assert main(["report", str(out), "--plot", str(tmp_path / "bare.png")]) == 0
    assert png_width(tmp_path / "one.png") > 1.5 * png_width(tmp_path / "bare.png")
