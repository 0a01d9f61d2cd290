"""Results files, metrics, tables and plots, checked against numbers worked out by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from rs_plugins.results.files import CERTIFY_COLUMNS, PREDICT_COLUMNS, ResultsFile, Row, read_results
from rs_plugins.results.report import (
    average_certified_radius,
    certified_accuracy,
    default_radii,
    format_table,
    plot_certified_accuracy,
    summarize,
    write_summary,
)

# Six images: 3 certified correctly (radii 0.25 exactly at a threshold, 0.6, 1.0), one correct with
# radius 0 (p_lower = 0.5 exactly), one wrong with a positive radius, one abstention.
ROWS = [
    Row(idx=0, label=3, predict=3, radius=0.25, correct=True, seconds=1.5),
    Row(idx=1, label=8, predict=8, radius=0.6, correct=True, seconds=2.0),
    Row(idx=2, label=8, predict=1, radius=0.9, correct=False, seconds=1.0),
    Row(idx=3, label=0, predict=-1, radius=0.0, correct=False, seconds=0.5),
    Row(idx=4, label=6, predict=6, radius=1.0, correct=True, seconds=1.0),
    Row(idx=5, label=1, predict=1, radius=0.0, correct=True, seconds=0.0),
]


def test_certified_accuracy_by_hand():
    # r=0: 4 correct of 6; r=0.25: idx 0 counts at exactly 0.25; the wrong idx 2 never counts.
    assert certified_accuracy(ROWS, [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]) == pytest.approx(
        [4 / 6, 3 / 6, 2 / 6, 1 / 6, 1 / 6, 0.0]
    )


def test_average_certified_radius_by_hand():
    assert average_certified_radius(ROWS) == pytest.approx((0.25 + 0.6 + 1.0) / 6)


def test_default_radii_stop_at_the_largest_correct_radius():
    assert default_radii(ROWS) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert default_radii(ROWS, step=0.5) == [0.0, 0.5, 1.0]
    assert default_radii([ROWS[2], ROWS[3]]) == [0.0]  # wrong or abstaining: nothing certified
    with pytest.raises(ValueError, match="step must be > 0; got 0"):
        default_radii(ROWS, step=0)


@pytest.mark.parametrize("metric", [certified_accuracy, average_certified_radius, summarize])
def test_metrics_reject_no_rows(metric):
    args = ([], [0.0]) if metric is certified_accuracy else ([],)
    with pytest.raises(ValueError, match="needs at least one row"):
        metric(*args)


def test_summarize_is_json_and_matches_the_metrics():
    summary = json.loads(json.dumps(summarize(ROWS)))
    assert summary["images"] == 6
    assert summary["abstained"] == 1
    assert summary["certified_accuracy_at_0"] == pytest.approx(4 / 6)
    assert summary["acr"] == pytest.approx(1.85 / 6)
    assert list(summary["certified_accuracy"]) == ["0.00", "0.25", "0.50", "0.75", "1.00"]
    assert summary["certified_accuracy"]["0.25"] == pytest.approx(0.5)
    assert summary["mean_seconds"] == pytest.approx(1.0)


def test_write_summary(tmp_path):
    path = tmp_path / "out" / "summary.json"
    write_summary(ROWS, path, radii=[0.5])
    assert json.loads(path.read_text())["certified_accuracy"] == {"0.50": pytest.approx(2 / 6)}


def test_format_table_has_percentages_and_acr():
    table = format_table(ROWS, title="cifar10 sigma=0.25")
    assert table.isascii()
    lines = table.splitlines()
    assert lines[0] == "cifar10 sigma=0.25"
    assert lines[1].split()[1:] == ["0.00", "0.25", "0.50", "0.75", "1.00"]
    assert lines[2].split()[3:] == ["66.7", "50.0", "33.3", "16.7", "16.7"]
    assert "ACR: 0.308" in lines
    assert "images: 6 (abstained: 1)" in lines


def test_results_file_round_trip(tmp_path):
    path = tmp_path / "runs" / "results.tsv"
    with ResultsFile(path, settings={"sigma": 0.25, "N": 1000}) as out:
        assert out.done == set()
        for row in ROWS[:4]:
            out.append(row)
    assert json.loads((tmp_path / "runs" / "results.tsv.json").read_text()) == {"sigma": 0.25, "N": 1000}
    with ResultsFile(path, settings={"N": 1000, "sigma": 0.25}) as out:
        assert out.done == {0, 1, 2, 3}
        assert out.rows == ROWS[:4]
        for row in ROWS[4:]:
            out.append(row)
        assert out.done == {0, 1, 2, 3, 4, 5}
    assert read_results(path) == ROWS


def test_results_file_parses_with_csv_module(tmp_path):
    path = tmp_path / "results.tsv"
    with ResultsFile(path) as out:
        out.append(ROWS[1])
        out.append(ROWS[3])
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        assert tuple(reader.fieldnames) == CERTIFY_COLUMNS
        records = list(reader)
    assert path.read_text().splitlines()[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime\tsamples"
    assert records[0] == {
        "idx": "1",
        "label": "8",
        "predict": "8",
        "radius": "0.6",  # repr: the float itself, never rounded
        "correct": "1",
        "time": "0:00:02",
        "samples": "",  # unknown for a Row built without it
    }
    assert records[1]["predict"] == "-1"
    assert records[1]["radius"] == "0.0"
    assert records[1]["correct"] == "0"


def test_time_column_is_a_timedelta_and_reads_back(tmp_path):
    path = tmp_path / "results.tsv"
    slow = Row(idx=7, label=2, predict=2, radius=0.1, correct=True, seconds=90061.234567)
    with ResultsFile(path) as out:
        out.append(Row(idx=6, label=2, predict=2, radius=0.1, correct=True, seconds=1.234567))
        out.append(slow)
    times = [line.split("\t")[5] for line in path.read_text().splitlines()[1:]]
    assert times == ["0:00:01.234567", "1 day, 1:01:01.234567"]
    assert [row.seconds for row in read_results(path)] == pytest.approx([1.234567, 90061.234567])


def test_predict_results_have_no_radius_column(tmp_path):
    path = tmp_path / "predict.tsv"
    with ResultsFile(path, columns=PREDICT_COLUMNS) as out:
        out.append(ROWS[0])
    assert path.read_text().splitlines() == ["idx\tlabel\tpredict\tcorrect\ttime", "0\t3\t3\t1\t0:00:01.500000"]
    assert read_results(path) == [Row(idx=0, label=3, predict=3, radius=0.0, correct=True, seconds=1.5)]


def test_partial_last_line_is_dropped_and_the_next_append_is_well_formed(tmp_path):
    path = tmp_path / "results.tsv"
    with ResultsFile(path) as out:
        out.append(ROWS[0])
    with path.open("a") as f:
        f.write("1\t8\t8\t0.60")  # killed mid-write
    assert read_results(path) == [ROWS[0]]
    with ResultsFile(path) as out:
        assert out.done == {0}
        out.append(ROWS[1])
    assert path.read_text().endswith("\n")
    assert read_results(path) == ROWS[:2]
    assert len(path.read_text().splitlines()) == 3


def test_partial_header_starts_over(tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text("idx\tlab")
    with ResultsFile(path) as out:
        out.append(ROWS[0])
    assert read_results(path) == [ROWS[0]]


def test_settings_mismatch_names_both_values(tmp_path):
    path = tmp_path / "results.tsv"
    ResultsFile(path, settings={"sigma": 0.25, "N": 1000, "alpha": 0.001}).close()
    with pytest.raises(ValueError, match="sigma=0.25; this run has sigma=0.5") as info:
        ResultsFile(path, settings={"sigma": 0.5, "N": 1000, "alpha": 0.001})
    assert "N=" not in str(info.value)
    assert str(path) in str(info.value)
    assert "Use another --out or delete the file" in str(info.value)
    with pytest.raises(ValueError, match=r"N=1000, sigma=0.25; this run has N=100000, sigma=1.0"):
        ResultsFile(path, settings={"sigma": 1.0, "N": 100000, "alpha": 0.001})
    with pytest.raises(ValueError, match="skip=<unset>; this run has skip=20"):
        ResultsFile(path, settings={"sigma": 0.25, "N": 1000, "alpha": 0.001, "skip": 20})


def test_header_mismatch_raises(tmp_path):
    path = tmp_path / "results.tsv"
    ResultsFile(path, columns=PREDICT_COLUMNS).close()
    with pytest.raises(ValueError, match="results.tsv has columns"):
        ResultsFile(path)
    other = tmp_path / "other.tsv"
    other.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="other.tsv is not a results file"):
        ResultsFile(other)
    with pytest.raises(ValueError, match="columns must be"):
        ResultsFile(tmp_path / "new.tsv", columns=("idx", "label"))


def test_read_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        read_results(tmp_path / "missing.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("\t".join(CERTIFY_COLUMNS) + "\n0\t1\t1\t0.5\tyes\t0:00:01\n")
    with pytest.raises(ValueError, match="bad.tsv, line 2: cannot parse"):
        read_results(bad)


def test_reads_cohen_style_logs(tmp_path):
    # certify.py writes the radius with 3 significant digits and correct as an int.
    path = tmp_path / "cohen.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.953\t1\t0:00:17.486215\n")
    assert read_results(path) == [Row(0, 3, 3, 0.953, True, 17.486215)]


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "plots" / "curve.png"
    plot_certified_accuracy({"gaussian": ROWS, "no certificates": ROWS[2:4]}, path, title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000
    with pytest.raises(ValueError, match="at least one curve"):
        plot_certified_accuracy({}, path)


def test_radii_read_back_exactly_and_never_round_up(tmp_path):
    """0.249996 written as 0.2500 would count as certified at r = 0.25 on a re-read: radii are written exactly."""
    path = tmp_path / "results.tsv"
    rows = [Row(0, 3, 3, 0.249996, True, 1.0), Row(1, 2, 2, 0.7249395856749493, True, 1.0)]
    rows += [Row(2 + i, 1, 1, r, True, 1.0) for i, r in enumerate((1e-7, 2 / 3, 3.1415926535897931, 0.1 + 0.2))]
    with ResultsFile(path) as out:
        for row in rows:
            out.append(row)
    again = read_results(path)
    assert [row.radius for row in again] == [row.radius for row in rows]  # bit for bit
    assert certified_accuracy(again, [0.25])[0] == certified_accuracy(rows, [0.25])[0] == 4 / 6
    assert average_certified_radius(again) == average_certified_radius(rows)


def test_format_table_in_fractions():
    table = format_table(ROWS, [0.0, 0.5], percent=False)
    assert "cert. acc " in table and "%" not in table
    assert table.splitlines()[1].split()[2:] == ["0.6667", "0.3333"]  # 4 of 6 at 0; 2 of 6 at 0.5


def test_largest_radius_is_the_radius_at_the_clopper_pearson_bound_with_all_votes():
    from scipy.stats import norm
    from statsmodels.stats.proportion import proportion_confint

    from rs_plugins.builtin.gaussian import GaussianNoise
    from rs_plugins.builtin.laplace import LaplaceNoise
    from rs_plugins.results.report import largest_radius

    for n, alpha in ((100, 0.001), (100_000, 0.001), (1000, 0.05)):
        p_lower = proportion_confint(n, n, alpha=2 * alpha, method="beta")[0]  # one-sided at alpha: alpha**(1/n)
        assert largest_radius(GaussianNoise(0.25), n, alpha) == pytest.approx(0.25 * norm.ppf(p_lower), rel=1e-9)
        laplace = -(0.5 / 2**0.5) * np.log(2 * (1 - p_lower))  # Teng et al.: -lambda log(2 (1 - p))
        assert largest_radius(LaplaceNoise(0.5), n, alpha) == pytest.approx(laplace, rel=1e-9)


def test_planned_images_and_norm_come_from_the_latest_run():
    from rs_plugins.results.files import planned_images, recorded

    sidecar = {"sigma": 0.25, "provenance": {"images": 10, "norm": "l1"}, "resumed": [{"images": 20}]}
    assert planned_images(sidecar) == 20 and recorded(sidecar, "norm") == "l1"
    assert planned_images({"provenance": {"images": 10}}) == 10
    assert planned_images({}) is None and planned_images(None) is None and recorded({}, "norm") is None
