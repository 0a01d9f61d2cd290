"""`rs-plugins report a.tsv b.tsv ...`: the comparison table in four formats, the plot, the norm refusal, the notes."""

from __future__ import annotations

import csv
import io
import json

import pytest

from rs_plugins import compare
from rs_plugins.cli import main

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tsamples\n"


def _write(path, rows, **settings):
    """A results TSV of (idx, label, predict, radius) rows, and its sidecar when settings are given."""
    lines = [f"{i}\t{y}\t{p}\t{r:.4f}\t{int(p == y)}\t0:00:01\t100\n" for i, y, p, r in rows]
    path.write_text(HEADER + "".join(lines), encoding="utf-8")
    if settings:
        path.with_name(path.name + ".json").write_text(json.dumps(settings), encoding="utf-8")
    return path


GAUSS = dict(noise="gaussian", sigma=0.25, noise_option={}, n=1000, alpha=0.001, data="digits", split="test")
A = [(0, 1, 1, 0.6), (1, 2, 2, 0.3), (2, 3, 4, 0.9), (3, 0, -1, 0.0)]  # correct at 0.6 and 0.3; a wrong; an abstain
B = [(0, 1, 1, 0.1), (1, 2, 2, 0.2), (2, 3, 3, 0.7), (3, 0, 0, 0.05)]


@pytest.fixture
def files(tmp_path):
    a = _write(tmp_path / "a.tsv", A, **GAUSS)
    b = _write(tmp_path / "b.tsv", B, **(GAUSS | {"sigma": 0.5}))
    return a, b


def test_text_table_holds_certified_accuracy_and_acr(files, capsys):
    assert main(["report", *map(str, files), "--label", "Cohen", "--label", "Ours", "--radii", "0", "0.25", "0.5"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("Certified accuracy (%) at l2 radius r; N = 1,000, α = 0.001, 4 images") :]
    cohen = next(line for line in table.splitlines() if line.startswith("Cohen")).split()
    ours = next(line for line in table.splitlines() if line.startswith("Ours")).split()
    # a: correct radii 0.6, 0.3 of 4 images -> 50% at 0, 0.25; 25% at 0.5; ACR (0.6 + 0.3) / 4
    assert cohen == ["Cohen", "0.25", "50.0", "50.0", "25.0", f"{0.9 / 4:.3f}"]
    # b: all 4 correct, radii 0.1 0.2 0.7 0.05 -> 100% at 0; 25% at 0.25 and 0.5; ACR 1.05 / 4
    assert ours == ["Ours", "0.5", "100.0", "25.0", "25.0", f"{1.05 / 4:.3f}"]


@pytest.mark.parametrize("suffix", [".md", ".tex", ".csv", ".txt"])
def test_table_file_format_follows_its_extension(files, tmp_path, suffix):
    out = tmp_path / f"table{suffix}"
    assert main(["report", *map(str, files), "--label", "Cohen", "--label", "Ours", "--table", str(out)]) == 0
    text = out.read_text()
    if suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [r["run"] for r in rows] == ["Cohen", "Ours"]
        assert float(rows[0]["acc@0"]) == 50.0 and float(rows[1]["acr"]) == pytest.approx(1.05 / 4, abs=1e-4)
        assert rows[1]["sigma"] == "0.5"
    elif suffix == ".md":
        table = [line for line in text.splitlines() if line.startswith("|")]
        assert table[0].startswith("| run | σ | r=0 |") and len(table) == 4  # header, rule, two runs
        assert table[2].startswith("| Cohen | 0.25 | 50.0 |")
    elif suffix == ".tex":
        assert "\\begin{tabular}" in text and "\\toprule" in text and "\\end{table}" in text
        rows = [line for line in text.splitlines() if line.startswith(("Cohen", "Ours"))]
        assert rows[0].split(" & ")[:3] == ["Cohen", "0.25", "50.0"] and rows[1].endswith("\\\\")
        assert "\\caption{Certified accuracy (\\%) at l2 radius r; N = 1,000, $\\alpha$ = 0.001, 4 images.}" in text
    else:
        assert text.startswith("Certified accuracy (%) at l2 radius r")


def test_format_flag_and_unknown_extension(files, tmp_path, capsys):
    assert main(["report", *map(str, files), "--format", "markdown"]) == 0
    assert "| gaussian σ=0.25 |" in capsys.readouterr().out  # default labels: noise and sigma
    assert main(["report", *map(str, files), "--table", str(tmp_path / "t.xlsx")]) == 2
    assert "--table" in capsys.readouterr().err


def test_different_norms_are_refused(tmp_path, capsys):
    l1 = _write(tmp_path / "l1.tsv", A, **(GAUSS | {"noise": "laplace"}))
    foreign = _write(tmp_path / "paper.tsv", B)  # no sidecar: a paper repository's log, Gaussian, so l2
    assert main(["report", str(l1), str(foreign)]) == 2
    err = capsys.readouterr().err
    assert "different norms" in err and "l1.tsv: l1" in err and "paper.tsv: l2" in err and "one norm" in err
    with pytest.raises(ValueError, match="different norms"):
        compare.load_runs([l1, foreign])


def test_notes_flag_different_n_alpha_images_and_missing_settings(tmp_path):
    a = _write(tmp_path / "a.tsv", A, **GAUSS)
    b = _write(tmp_path / "b.tsv", B[:3], **(GAUSS | {"n": 100000, "alpha": 0.01}))
    c = _write(tmp_path / "c.tsv", A)
    notes = compare.comparison_notes(compare.load_runs([a, b, c], ["a", "b", "c"]))
    text = "\n".join(notes)
    assert "different N: a 1000, b 100000" in text and "different alpha: a 0.001, b 0.01" in text
    assert "different images certified (counts: a 4, b 3, c 4)" in text
    assert "c: no settings file" in text
    same = compare.comparison_notes(compare.load_runs([a, _write(tmp_path / "d.tsv", B, **GAUSS)], ["a", "d"]))
    assert same == []
    table = compare.format_comparison(compare.load_runs([a, b], ["a", "b"]), "text", notes=notes)
    assert "note: different N" in table


def test_labels_must_match_the_files(files, capsys):
    assert main(["report", *map(str, files), "--label", "only-one"]) == 2
    assert "one per results file" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".pdf", ".svg", ".png"])
def test_plot_is_a_figure_for_a_paper(files, tmp_path, suffix):
    plot = tmp_path / f"compare{suffix}"
    assert main(["report", *map(str, files), "--label", "Cohen", "--label", "Ours", "--plot", str(plot)]) == 0
    data = plot.read_bytes()
    assert data.startswith({".pdf": b"%PDF", ".svg": b"<?xml", ".png": b"\x89PNG"}[suffix])
    if suffix == ".svg":
        svg = data.decode()
        assert "<path" in svg and "<image" not in svg  # vector, not an embedded bitmap
        assert str(tmp_path) not in svg


def test_plot_text_names_labels_sigma_norm_and_n(files, tmp_path, monkeypatch):
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "svg.fonttype", "none")  # text stays text, so it can be read here
    plot = tmp_path / "compare.svg"
    compare.plot_comparison(compare.load_runs(files, ["Cohen", "Ours"]), plot)
    svg = plot.read_text()
    for text in ("Cohen, σ = 0.25", "Ours, σ = 0.5", "l2 radius", "N = 1,000, α = 0.001, 4 images"):
        assert text in svg, text
    assert "a.tsv" not in svg and str(tmp_path) not in svg


def test_summary_of_several_files(files, tmp_path):
    summary = tmp_path / "s.json"
    assert main(["report", *map(str, files), "--label", "Cohen", "--label", "Ours", "--summary", str(summary)]) == 0
    found = json.loads(summary.read_text())
    assert set(found) == {"Cohen", "Ours"}
    assert found["Cohen"]["acr"] == pytest.approx(0.9 / 4) and found["Ours"]["norm"] == "l2"
    assert found["Ours"]["run"]["sigma"] == 0.5
