"""Issue 28: certifying again from a counts log (``rs.recertify``, ``rs-plugins recertify``): the same certifier and
alpha reproduce the original rows exactly; another alpha or certifier gives what that certifier gives on the same
votes; certifiers that need fresh samples, or whose bound the counts cannot support, are refused with the reason."""

from __future__ import annotations

import json
import os

import pytest
from statsmodels.stats.proportion import proportion_confint
from torchrun_model import write_model

import rs_plugins as rs
from rs_plugins import Certificate, CertifierSpec, Host
from rs_plugins.cli import main
from rs_plugins.errors import NeedsFreshSamplesError, ResultsFileError
from rs_plugins.results.counts import counts_path, read_counts
from rs_plugins.results.files import read_results, read_sidecar

ALPHA = 0.01


CENTROIDS = '''
import torch

from rs_plugins.sources.data import load_digits


class Net(torch.nn.Module):
    """Nearest class mean of the digits training images: right on most test images, and confident."""

    def __init__(self):
        super().__init__()
        x, y = load_digits("train").tensors
        self.register_buffer("means", torch.stack([x[y == c].mean(0).flatten() for c in range(10)]))

    def forward(self, x):
        return -torch.cdist(x.flatten(1), self.means)


def net():
    return Net()
'''


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("recertify")
    write_model(root, "votes_model", 3.0)  # a fixed linear classifier of digits: votes spread over classes
    (root / "sure_model.py").write_text(CENTROIDS)  # a nearest-mean classifier: most images certify, correctly
    return root


def certify(root, monkeypatch, out, *extra, model="votes_model:net", command="certify"):
    monkeypatch.syspath_prepend(str(root))
    sampling = ["--n", "400"] + (["--n0", "40"] if command == "certify" else [])
    sigma = "0.1" if model.startswith("sure") else "0.5"
    argv = [command, "--random-weights", "--model", model, "--data", "digits", "--limit", "10", "--sigma", sigma,
            "--alpha", str(ALPHA), *sampling, "--batch-size", "200", "--device", "cpu", "--no-progress",
            "--out", str(out), *extra]  # fmt: skip
    assert main(argv) == 0
    return out


def cells(rows):
    """Everything but the time column."""
    return [(r.idx, r.label, r.predict, r.radius, r.correct, r.samples) for r in rows]


CASES = {
    "cohen": [],
    "cohen_label": ["--certifier-option", "class_selection=label"],
    "feng": ["--certifier-option", "split=0.3"],
    "cpm": [],
    "sequential": [],
    "sequential_tolerance": ["--certifier-option", "mode=tolerance"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_same_certifier_and_alpha_reproduce_the_rows_exactly(root, monkeypatch, tmp_path, case):
    name = case.split("_")[0]
    options = CASES[case]
    out = certify(root, monkeypatch, tmp_path / "run.tsv", "--certifier", name, *options, model="sure_model:net")
    parsed = dict(option.split("=") for option in options[1::2])
    parsed = {k: json.loads(v) if v[0].isdigit() else v for k, v in parsed.items()}
    again = rs.recertify(counts_path(out), name, options=parsed, out=tmp_path / "again.tsv")
    original = read_results(out)
    assert cells(again) == cells(original) and cells(read_results(tmp_path / "again.tsv")) == cells(original)
    assert sum(r.radius > 0 for r in original) >= 3  # certificates with radii, not only abstentions


def test_the_mixed_certificate_recertifies_a_mixed_runs_counts(root, monkeypatch, tmp_path):
    models = ["--model", "sure_model:net", "--model", "sure_model:net", "--mixer", "mix", "--mixer-option", "alpha=0.9"]
    out = tmp_path / "mixed.tsv"
    monkeypatch.syspath_prepend(str(root))
    argv = ["certify", "--random-weights", *models, "--certifier", "mixed", "--data", "digits", "--limit", "6",
            "--sigma", "0.1", "--n0", "40", "--n", "400", "--alpha", str(ALPHA), "--no-progress", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert {r.counts.extra["alpha_mix"] for r in read_counts(counts_path(out))} == {0.9}
    assert cells(rs.recertify(out, "mixed")) == cells(read_results(out))
    with pytest.raises(NeedsFreshSamplesError, match="robust member alone"):
        rs.recertify(out, "cohen")  # the counts are of the robust member, not of the mixture that was certified
    with pytest.raises(NeedsFreshSamplesError, match="votes=soft .* needs fresh samples"):
        rs.recertify(out, "mixed", options={"votes": "soft"})


def test_another_alpha_and_certifier_give_what_they_give_on_the_same_votes(root, monkeypatch, tmp_path):
    """Cohen at alpha = 0.1 from the counts: statsmodels' Clopper-Pearson bound on the n0 top class's votes."""
    from scipy.stats import norm

    out = certify(root, monkeypatch, tmp_path / "run.tsv")
    rows = rs.recertify(out, "cohen", alpha=0.1)
    for row, logged in zip(rows, read_counts(counts_path(out))):
        top = max(range(10), key=lambda c: (logged.counts.selection[c], -c))
        low = proportion_confint(logged.counts.estimation[top], 400, alpha=0.2, method="beta")[0]
        assert (row.predict, row.radius) == ((top, pytest.approx(0.5 * norm.ppf(low))) if low >= 0.5 else (-1, 0.0))
    tight = {r.idx: r.radius for r in rs.recertify(out, "cohen", alpha=0.001)}
    assert all(r.radius >= tight[r.idx] for r in rows) and any(r.radius > tight[r.idx] for r in rows)


def test_the_new_file_records_where_it_came_from_and_resumes(root, monkeypatch, tmp_path):
    out = certify(root, monkeypatch, tmp_path / "runs" / "run.tsv")
    target = tmp_path / "other" / "cpm.tsv"
    first = rs.recertify(out, "cpm", alpha=0.05, out=target)
    sidecar = read_sidecar(target)
    assert sidecar["recertified_from"] == os.path.join("..", "runs", "run.tsv.counts")
    assert (sidecar["certifier"], sidecar["alpha"], sidecar["n0"], sidecar["n"]) == ("cpm", 0.05, 40, 400)
    assert sidecar["model_sha256"] == read_sidecar(out)["model_sha256"]
    assert sidecar["provenance"]["counts_images"] == 10 and sidecar["provenance"]["norm"] == "l2"
    assert cells(rs.recertify(out, "cpm", alpha=0.05, out=target)) == cells(first)  # resumed: no image twice
    assert len(read_results(target)) == 10
    with pytest.raises(ResultsFileError, match="alpha=0.05.*alpha=0.1"):
        rs.recertify(out, "cpm", alpha=0.1, out=target)


def test_counts_without_a_selection_pass_take_the_label_only(root, monkeypatch, tmp_path):
    """A predict run's votes have no n0 pass: picking the class on them again would reuse the samples of the
    bound. class_selection=label certifies the label from them, as a label run would."""
    from scipy.stats import norm

    out = certify(root, monkeypatch, tmp_path / "p.tsv", command="predict", model="sure_model:net")
    with pytest.raises(NeedsFreshSamplesError, match="these counts have none"):
        rs.recertify(out, "cohen")
    with pytest.raises(NeedsFreshSamplesError, match="cpm chooses its buckets"):
        rs.recertify(out, "cpm")
    rows = rs.recertify(out, "cohen", options={"class_selection": "label"})
    for row, logged in zip(rows, read_counts(counts_path(out))):
        low = proportion_confint(logged.counts.estimation[row.label], 400, alpha=2 * ALPHA, method="beta")[0]
        assert row.radius == (pytest.approx(0.1 * norm.ppf(low)) if low >= 0.5 else 0.0) and row.samples == 400


def test_a_sequential_runs_counts_take_only_a_certifier_that_replays_its_looks(root, monkeypatch, tmp_path):
    out = certify(root, monkeypatch, tmp_path / "s.tsv", "--certifier", "sequential")
    with pytest.raises(NeedsFreshSamplesError, match="optional stopping"):
        rs.recertify(out, "cohen")
    fixed = certify(root, monkeypatch, tmp_path / "c.tsv")
    with pytest.raises(NeedsFreshSamplesError, match="no looks"):
        rs.recertify(fixed, "sequential")
    larger = rs.recertify(out, "sequential", alpha=0.1)  # valid at any look: it may stop earlier, never later
    original = {r.idx: r for r in read_results(out)}
    assert all(r.samples <= original[r.idx].samples for r in larger)


class FreshOnly:
    def certify(self, model, x, noise, *, n0, n, alpha, batch_size, generator=None):
        return [Certificate(0, 0.1, 0.9) for _ in x]


class FreshOnlyPlugin:
    @rs.hookimpl
    def rs_certifiers(self):
        yield CertifierSpec("fresh_only", FreshOnly, "needs its own samples")


def test_a_certifier_without_certify_counts_is_refused_naming_it(root, monkeypatch, tmp_path, capsys):
    out = certify(root, monkeypatch, tmp_path / "run.tsv")
    host = Host(plugins=[FreshOnlyPlugin()])
    with pytest.raises(NeedsFreshSamplesError, match="certifier 'fresh_only' from plugin .* has no certify_counts"):
        rs.recertify(out, "fresh_only", host=host)
    code = main(["recertify", str(out), "--certifier", "fresh_only", "--out", str(tmp_path / "x.tsv")])
    err = capsys.readouterr().err
    assert code == 2 and "no certifier named 'fresh_only'" in err  # the CLI's own host: not installed there
    code = main(["recertify", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "x.tsv")])
    assert code == 2 and "no counts log" in capsys.readouterr().err


def test_the_command_prints_the_table_and_writes_plot_and_summary(root, monkeypatch, tmp_path, capsys):
    out = certify(root, monkeypatch, tmp_path / "run.tsv")
    capsys.readouterr()
    argv = ["recertify", str(counts_path(out)), "--certifier", "feng", "--alpha", "0.05", "--out",
            str(tmp_path / "feng.tsv"), "--plot", str(tmp_path / "feng.png"), "--summary", str(tmp_path / "s.json"),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "recertify" in printed and "(feng, l2 radius, sigma=0.5, n=400, alpha=0.05)" in printed
    assert "p_A lower bound: q10" in printed
    summary = json.loads((tmp_path / "s.json").read_text())
    assert list(summary)[0] == "certified_accuracy" and summary["p_a_lower"]["images"] == 10
    assert (tmp_path / "feng.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda cells: cells[:3] + ["5:1000000"] + cells[4:], "do not add up to the run's draws"),
        (lambda cells: cells[:1] + ["-1"] + cells[2:], "label -1 of image 0 is outside 0..9"),
        (lambda cells: cells[:1] + ["12"] + cells[2:], "label 12 of image 0 is outside 0..9"),
        (lambda cells: cells[:3] + [cells[3] + "," + cells[3].split(",")[0]] + cells[4:], "named once"),
        (lambda cells: cells[:5] + ["[1]"], "not a JSON object"),
    ],
    ids=["votes-beyond-n", "label-abstain", "label-beyond-classes", "class-twice", "extra-not-object"],
)
def test_an_edited_counts_log_is_refused_not_certified(root, monkeypatch, tmp_path, edit, match):
    """Votes the run never drew, labels that are no class, a class given twice: refused naming the log, never
    certified (a label of -1 would score an abstention as correct)."""
    out = certify(root, monkeypatch, tmp_path / "run.tsv")
    log = counts_path(out)
    header, first, *rest = log.read_text().splitlines()
    log.write_text("\n".join([header, "\t".join(edit(first.split("\t"))), *rest]) + "\n")
    with pytest.raises((ResultsFileError, ValueError), match=match):
        rs.recertify(out, "cohen")
