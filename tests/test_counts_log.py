"""Issue 28: the counts log beside every certify and predict results file: what it holds (checked against the rows
with independent statistics), the sequential certifier's looks, `--counts-log none`, and resuming after a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, norm
from statsmodels.stats.proportion import proportion_confint
from torchrun_model import write_model

from rs_plugins import ABSTAIN, Certificate, Counts
from rs_plugins.builtin.sequential import look_schedule
from rs_plugins.cli import main
from rs_plugins.errors import PluginBuildError, ResultsFileError
from rs_plugins.results.counts import CountsLog, counts_path, format_counts, merge_counts, read_counts
from rs_plugins.results.files import load_rows, read_results

TESTS = Path(__file__).parent
SIGMA, ALPHA = 0.5, 0.01


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A folder with ``counts_model.py``: a fixed linear classifier of digits whose votes spread over classes."""
    root = tmp_path_factory.mktemp("counts")
    write_model(root, "counts_model", 3.0)
    return root


def run(root, monkeypatch, command, out, *extra):
    monkeypatch.syspath_prepend(str(root))
    sampling = ["--n", "300"] + (["--n0", "30"] if command == "certify" else [])
    argv = [command, "--random-weights", "--model", "counts_model:net", "--data", "digits", "--limit", "8",
            "--sigma", str(SIGMA), "--alpha", str(ALPHA), *sampling, "--device", "cpu", "--no-progress",
            "--batch-size", "100", "--out", str(out), *extra]  # fmt: skip
    assert main(argv) == 0


def test_certify_logs_each_images_votes_and_they_give_its_row(root, monkeypatch):
    """Every image has n0 selection and n estimation votes over all 10 classes; its row is CERTIFY on them, recomputed
    here with statsmodels' Clopper-Pearson bound and scipy's Phi^-1."""
    out = root / "certify.tsv"
    run(root, monkeypatch, "certify", out)
    logged = read_counts(counts_path(out), 10)
    rows = read_results(out)
    assert [r.idx for r in logged] == [r.idx for r in rows] and [r.label for r in logged] == [r.label for r in rows]
    assert any(sum(v > 0 for v in r.counts.estimation) > 2 for r in logged)  # spread votes: a real test of sparsity
    for counts, row in zip((r.counts for r in logged), rows):
        assert sum(counts.selection) == 30 and sum(counts.estimation) == 300 and len(counts.estimation) == 10
        assert counts.looks == () and counts.extra == {}
        top = int(np.argmax(counts.selection))
        low = proportion_confint(counts.estimation[top], 300, alpha=2 * ALPHA, method="beta")[0]
        assert row.samples == 330
        if low < 0.5:
            assert row.predict == ABSTAIN and row.radius == 0
        else:
            assert row.predict == top and row.radius == pytest.approx(SIGMA * norm.ppf(low), abs=1e-9)


def test_predict_logs_its_votes_without_a_selection_pass(root, monkeypatch):
    out = root / "predict.tsv"
    run(root, monkeypatch, "predict", out)
    for logged, row in zip(read_counts(counts_path(out), 10), read_results(out)):
        votes = logged.counts.estimation
        assert logged.counts.selection is None and sum(votes) == 300
        first, second = sorted(votes, reverse=True)[:2]
        answer = int(np.argmax(votes)) if binomtest(first, first + second, 0.5).pvalue <= ALPHA else ABSTAIN
        assert row.predict == answer


def test_counts_log_none_writes_none(root, monkeypatch):
    out = root / "none.tsv"
    run(root, monkeypatch, "certify", out, "--counts-log", "none")
    assert out.is_file() and not counts_path(out).exists()


def test_sequential_logs_the_cumulative_counts_at_each_look(root, monkeypatch):
    out = root / "sequential.tsv"
    run(root, monkeypatch, "certify", out, "--certifier", "sequential")
    rows = {r.idx: r for r in read_results(out)}
    schedule = look_schedule(300, 100)
    for logged in read_counts(counts_path(out), 10):
        looks = logged.counts.looks
        sizes = [size for size, _ in looks]
        assert sizes == sorted(set(sizes)) and sizes[0] == 50 and all(sum(v) == s for s, v in looks)
        assert all(np.all(np.array(b) >= np.array(a)) for (_, a), (_, b) in zip(looks, looks[1:]))  # cumulative
        assert looks[-1][1] == logged.counts.estimation and rows[logged.idx].samples == 30 + sizes[-1]
        assert sizes == schedule[: len(sizes)]
        assert logged.counts.extra == {"looks_planned": len(schedule), "n_max": 300}


def test_a_line_without_its_row_and_a_half_written_line_are_dropped_on_resume(tmp_path):
    """A kill between an image's counts and its row leaves counts of an image the results file lacks; a kill
    mid-write leaves a line without its newline. Reopened with the results file's images, the log keeps neither."""
    path = tmp_path / "r.tsv.counts"
    with CountsLog(path, keep=[]) as log:
        for idx in range(3):
            log.append(idx, idx, Counts((5, idx), (1, 0)))
    with path.open("a") as f:
        f.write("3\t1\t0:1\t0:")
    with CountsLog(path, keep={0, 1}) as log:
        assert log.done == {0, 1}
        log.append(2, 2, Counts((4, 2), (1, 0)))
    assert [(r.idx, r.counts.estimation) for r in read_counts(path)] == [(0, (5, 0)), (1, (5, 1)), (2, (4, 2))]


def test_reading_refuses_an_image_twice_and_another_file(tmp_path):
    path = tmp_path / "r.tsv.counts"
    with CountsLog(path, keep=[]) as log:
        log.append(0, 1, Counts((3, 4)))
    with path.open("a") as f:
        f.write(format_counts(0, 1, Counts((3, 4))))
    with pytest.raises(ResultsFileError, match="image 0 appears twice"):
        read_counts(path)
    (tmp_path / "x.counts").write_text("idx\tlabel\tpredict\n")
    with pytest.raises(ResultsFileError, match="is not a counts log"):
        read_counts(tmp_path / "x.counts")


def test_merging_parts_keeps_only_images_their_results_hold(tmp_path):
    """Parts of a killed run: the results part holds images 1 and 3; its counts part also 5 (killed before the row)."""
    out = tmp_path / "m.tsv"
    header = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tsamples\n"
    part = tmp_path / "m.tsv.part-1-of-2"
    part.write_text(header + "".join(f"{i}\t0\t0\t0.1\t1\t0:00:00\t5\n" for i in (1, 3)))
    with CountsLog(counts_path(part), keep=[]) as log:
        for idx in (1, 3, 5):
            log.append(idx, 0, Counts((5,)))
    parts = merge_counts(out, lambda path: {row.key for row in load_rows(path)[1]})
    assert parts == [counts_path(part)]
    assert [r.idx for r in read_counts(counts_path(out))] == [1, 3]


def certify_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "rs_plugins", "certify", "--random-weights", "--model", "killable_model:build",
            "--data", "digits", "--limit", "12", "--n0", "10", "--n", "60", "--batch-size", "20", "--sigma", "0.5",
            "--out", str(out), "--device", "cpu", "--no-progress"]  # fmt: skip


def test_certify_killed_mid_run_resumes_its_counts_log_with_its_rows(tmp_path, monkeypatch):
    """SIGKILL part-way (the model kills its own process), then the same command: the counts log ends equal to an
    uninterrupted run's, line for line, one line per image."""
    reference, killed = tmp_path / "reference.tsv", tmp_path / "killed.tsv"
    monkeypatch.syspath_prepend(str(TESTS / "helpers"))
    monkeypatch.delenv("KILL_AFTER_FORWARDS", raising=False)
    assert main(certify_command(reference)[3:]) == 0
    env = {k: v for k, v in os.environ.items() if k != "KILL_AFTER_FORWARDS"} | {"OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS / "helpers"), env.get("PYTHONPATH", "")]))
    done = subprocess.run(certify_command(killed), env=env | {"KILL_AFTER_FORWARDS": "20"}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert 0 < len(read_counts(counts_path(killed))) < 12
    done = subprocess.run(certify_command(killed), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert counts_path(killed).read_text() == counts_path(reference).read_text()


class WrongCounts:
    """A plugin certifier whose certificates carry votes over 2 classes for a 10-class model."""

    def certify(self, model, x, noise, *, n0, n, alpha, batch_size, generator=None):
        return [Certificate(0, 0.1, 0.9, counts=Counts((n, 0))) for _ in x]


def test_counts_that_do_not_fit_the_model_are_refused_naming_the_certifier(tmp_path):
    from rs_plugins.builtin.gaussian import GaussianNoise
    from rs_plugins.certify.runner import certify_dataset
    from rs_plugins.nets import SmallCNN
    from rs_plugins.results.files import ResultsFile
    from rs_plugins.sources.data import load_digits

    out = tmp_path / "w.tsv"
    with ResultsFile(out) as results, CountsLog(counts_path(out), []) as log:
        with pytest.raises(PluginBuildError, match="returned counts that are not a Counts of 10 votes per pass"):
            certify_dataset(SmallCNN(), load_digits("test"), GaussianNoise(0.5), WrongCounts(), results, indices=[0],
                            n0=2, n=4, alpha=0.1, batch_size=8, progress=False, counts_log=log)  # fmt: skip
    assert read_counts(counts_path(out)) == [] and read_results(out) == []


@pytest.mark.parametrize(
    "counts",
    [Counts((1.5, 2) + (0,) * 8), Counts((-3, 5) + (0,) * 8), Counts((1,) * 10, looks=((1, 2),))],
    ids=["fractional-votes", "negative-votes", "look-not-a-pair"],
)
def test_counts_the_log_could_not_read_back_break_the_certifier_contract(counts):
    """Votes that are not whole counts >= 0, or looks that are not (samples, votes): refused as the plugin's fault
    when certified, not written to a log that recertify would later fail to read."""
    from rs_plugins.validation import check_certificates

    with pytest.raises(PluginBuildError, match="returned counts that are not a Counts of 10 votes per pass"):
        check_certificates([Certificate(0, 0.1, 0.9, counts=counts)], 1, 10, WrongCounts())
