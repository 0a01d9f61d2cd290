"""`rs-plugins report a.tsv b.tsv ...`: the comparison table in four formats, the plot, the norm refusal, the notes."""

from __future__ import annotations

import csv
import io
import json

import pytest

from rs_plugins.cli import main
from rs_plugins.host import Host
from rs_plugins.results import compare

NOISES = Host().noise  # how the results layer learns a noise's norm: from the installed plugins, as report does

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
        compare.load_runs([l1, foreign], build_noise=NOISES)


def test_notes_flag_different_n_alpha_images_and_missing_settings(tmp_path):
    a = _write(tmp_path / "a.tsv", A, **GAUSS)
    b = _write(tmp_path / "b.tsv", B[:3], **(GAUSS | {"n": 100000, "alpha": 0.01}))
    c = _write(tmp_path / "c.tsv", A)
    notes = compare.comparison_notes(compare.load_runs([a, b, c], ["a", "b", "c"], build_noise=NOISES))
    text = "\n".join(notes)
    assert "different N: a 1000, b 100000" in text and "different alpha: a 0.001, b 0.01" in text
    assert "different images certified (counts: a 4, b 3, c 4)" in text
    assert "c: no settings file" in text
    d = _write(tmp_path / "d.tsv", B, **GAUSS)
    same = compare.comparison_notes(compare.load_runs([a, d], ["a", "d"], build_noise=NOISES))
    assert same == []
    table = compare.format_comparison(compare.load_runs([a, b], ["a", "b"], build_noise=NOISES), "text", notes=notes)
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
    compare.plot_comparison(compare.load_runs(files, ["Cohen", "Ours"], build_noise=NOISES), plot)
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


def test_the_readme_layout_gets_unique_default_labels(tmp_path, monkeypatch, capsys):
    """README: `rs-plugins report runs/*/certify.tsv --plot compare.png`, two Gaussian σ = 0.25 runs in folders."""
    for name, rows in (("gauss025", A), ("con025", B)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        _write(tmp_path / "runs" / name / "certify.tsv", rows, **GAUSS)
    monkeypatch.chdir(tmp_path)
    paths = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("runs/*/certify.tsv"))  # as the shell expands
    assert main(["report", *paths, "--plot", "compare.png"]) == 0
    table = capsys.readouterr().out.split("Certified accuracy (%)")[1]
    assert [line.split()[0] for line in table.splitlines()[2:4]] == ["con025", "gauss025"]
    assert (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")


def test_path_labels_are_the_shortest_distinguishing_part():
    assert compare.path_labels(["runs/gauss025/certify.tsv", "runs/con025/certify.tsv"]) == ["gauss025", "con025"]
    assert compare.path_labels(["runs/a.tsv", "runs/b.tsv"]) == ["a", "b"]
    assert compare.path_labels(["a/x/certify.tsv", "b/x/certify.tsv"]) == ["a", "b"]
    assert compare.path_labels(["x/certify.tsv", "y/x/certify.tsv", "y/certify.tsv"]) == [
        "x/certify", "y/x/certify", "y/certify"]  # fmt: skip


def test_the_same_file_twice_is_refused_without_blaming_label(files, capsys):
    assert main(["report", str(files[0]), str(files[0])]) == 2
    err = capsys.readouterr().err
    assert "given more than once" in err and "--label" not in err


def test_sigma_and_noise_describe_files_without_a_sidecar(tmp_path, capsys):
    foreign = _write(tmp_path / "paper.tsv", A)  # e.g. an l1 log from another repository
    ours = _write(tmp_path / "ours.tsv", B, **(GAUSS | {"noise": "laplace", "sigma": 0.5}))
    assert main(["report", str(foreign), str(ours), "--noise", "laplace", "--sigma", "0.5"]) == 0
    out, err = capsys.readouterr()
    assert f"{foreign} (l1 radius, sigma=0.5 (--sigma))" in out and "taken as" not in err
    table = out.split("Certified accuracy (%) at l1 radius r")[1]
    assert table.splitlines()[2].split()[:2] == ["paper", "0.5"]  # σ shows for the foreign file
    # Without --noise the norm is assumed, and said so: l2, which a laplace file cannot be compared with.
    assert main(["report", str(foreign), str(ours)]) == 2
    err = capsys.readouterr().err
    assert "paper.tsv has no settings file" in err and "taken as l2" in err and "different norms" in err
    assert main(["report", str(foreign), "--noise", "laplac"]) == 2
    assert "--noise 'laplac'" in capsys.readouterr().err


def test_radii_apply_to_the_per_file_tables(files, capsys):
    assert main(["report", str(files[0]), "--radii", "0", "0.5"]) == 0
    radius_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("radius"))
    assert radius_line.split() == ["radius", "0.00", "0.50"]


def test_a_run_short_of_its_planned_images_is_flagged(tmp_path, capsys):
    done = _write(tmp_path / "done.tsv", A, **(GAUSS | {"provenance": {"images": 4}}))
    short = _write(tmp_path / "short.tsv", A[:3], **(GAUSS | {"provenance": {"images": 4}}))
    resumed = _write(tmp_path / "resumed.tsv", A, **(GAUSS | {"provenance": {"images": 2}, "resumed": [{"images": 9}]}))
    assert main(["report", str(done), str(short), str(resumed)]) == 0
    out = capsys.readouterr().out
    assert "short: 3 of the 4 images its run planned" in out and "resumed: 4 of the 9 images" in out
    assert "done: " not in out
    notes = compare.comparison_notes(compare.load_runs([done, short], build_noise=NOISES))
    assert any("short: 3 of the 4 images its run planned (stopped early, or still running)" in n for n in notes)


def test_fractions_instead_of_percent(files, tmp_path, capsys):
    argv = ["report", *map(str, files), "--label", "Cohen", "--label", "Ours", "--radii", "0", "0.5", "--fractions"]
    assert main([*argv, "--table", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    assert "Certified accuracy (fraction) at l2 radius r" in out and "cert. acc %" not in out
    assert next(line for line in out.splitlines() if line.startswith("Cohen")).split()[2:4] == ["0.5000", "0.2500"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert rows[0]["acc@0"] == "0.5000" and rows[1]["acc@0"] == "1.0000"


def test_the_sidecar_norm_is_read_first_when_the_plugin_is_not_installed(tmp_path, capsys):
    recorded = GAUSS | {"noise": "my_uniform", "provenance": {"norm": "l1", "radius": "my_pkg.Uniform.radius"}}
    mine = _write(tmp_path / "mine.tsv", A, **recorded)
    l1 = _write(tmp_path / "laplace.tsv", B, **(GAUSS | {"noise": "laplace"}))
    assert main(["report", str(mine), str(l1)]) == 0
    out, err = capsys.readouterr()
    assert "(l1 radius)" in out and "Certified accuracy (%) at l1 radius r" in out and "unknown" not in out + err
    # a file from before the norm was recorded, plugin missing: unknown, and so not comparable
    old = _write(tmp_path / "old.tsv", A, **(GAUSS | {"noise": "my_uniform"}))
    assert compare.load_runs([old], build_noise=NOISES)[0].norm == "unknown (my_uniform)"


def test_plot_title_names_data_and_model_and_marks_the_largest_radius(tmp_path, monkeypatch):
    import matplotlib
    from scipy.stats import norm

    monkeypatch.setitem(matplotlib.rcParams, "svg.fonttype", "none")
    model = GAUSS | {"model": ["rs_plugins.nets:SmallCNN"], "mixer": None}
    a = _write(tmp_path / "a.tsv", A, **model)
    b = _write(tmp_path / "b.tsv", B, **(model | {"sigma": 0.5}))
    plot = tmp_path / "compare.svg"
    compare.plot_comparison(compare.load_runs([a, b], ["Cohen", "Ours"], build_noise=NOISES), plot)
    svg = plot.read_text()
    assert "digits test, rs_plugins.nets:SmallCNN" in svg
    largest = [s * norm.ppf(0.001 ** (1 / 1000)) for s in (0.25, 0.5)]  # σ Φ⁻¹(α^(1/N)), N = 1000
    assert f"largest radius N can certify ({largest[0]:.3f}, {largest[1]:.3f})" in svg


def test_no_largest_radius_mark_where_the_certifier_has_its_own_radius(tmp_path):
    gaussian = {"norm": "l2", "radius": "rs_plugins.builtin.gaussian.GaussianNoise.radius"}
    own = {"norm": "l2", "radius": "rs_plugins.mixed_certificate.mixed_radius"}
    a = _write(tmp_path / "a.tsv", A, **(GAUSS | {"provenance": gaussian}))
    b = _write(tmp_path / "b.tsv", B, **(GAUSS | {"sigma": 0.5, "provenance": own}))
    c = _write(tmp_path / "c.tsv", B)  # no sidecar: no N, no mark
    assert set(compare.largest_radii(compare.load_runs([a, b, c], ["a", "b", "c"], build_noise=NOISES))) == {"a"}


# -- PREDICT files: accuracy and abstentions, never radii -----------------------------------------------------------

PREDICT_HEADER = "idx\tlabel\tpredict\tcorrect\ttime\n"


def _write_predict(path, rows, **settings):
    """A PREDICT TSV of (idx, label, predict) rows (-1: abstain), and its sidecar when settings are given."""
    lines = [f"{i}\t{y}\t{p}\t{int(p == y)}\t0:00:01\n" for i, y, p in rows]
    path.write_text(PREDICT_HEADER + "".join(lines), encoding="utf-8")
    if settings:
        path.with_name(path.name + ".json").write_text(json.dumps(settings), encoding="utf-8")
    return path


PREDICTED = [(0, 1, 1), (1, 2, 2), (2, 3, -1), (3, 4, 5), (4, 0, 0), (5, 6, -1), (6, 7, 7), (7, 8, 8), (8, 9, 9)]


def test_a_predict_file_is_reported_as_accuracy_and_abstentions_not_radii(tmp_path, capsys):
    p = _write_predict(tmp_path / "predict.tsv", PREDICTED, **{k: v for k, v in GAUSS.items() if k != "n"}, n=1000)
    summary = tmp_path / "s.json"
    assert main(["report", str(p), "--summary", str(summary)]) == 0
    out = capsys.readouterr().out
    assert "accuracy 66.7% (6 of 9), abstained 22.2% (2), wrong 11.1% (1)" in out
    assert "radius" not in out.replace("no radii", "") and "ACR" not in out and "cert. acc" not in out
    found = json.loads(summary.read_text())
    assert found["kind"] == "predict" and found["accuracy"] == pytest.approx(6 / 9) and found["abstained"] == 2
    assert "acr" not in found and "certified_accuracy" not in found


def test_predict_files_compare_in_a_table_of_their_own(tmp_path, capsys):
    a = _write_predict(tmp_path / "a.tsv", PREDICTED, **GAUSS)
    b = _write_predict(tmp_path / "b.tsv", [(i, y, y) for i, y, _ in PREDICTED], **(GAUSS | {"sigma": 0.5}))
    table = tmp_path / "t.csv"
    assert main(["report", str(a), str(b), "--label", "A", "--label", "B", "--table", str(table)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ["A", "0.25", "1,000", "66.7", "22.2", "11.1", "9"] in [line.split() for line in lines]
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert rows[1] == {"run": "B", "sigma": "0.5", "n": "1000", "accuracy": "100.0", "abstained": "0.0",
                       "wrong": "0.0", "images": "9"}  # fmt: skip
    for fmt, marker in (("markdown", "| A | 0.25 | 1,000 | 66.7 | 22.2 | 11.1 | 9 |"), ("latex", "\\toprule")):
        assert main(["report", str(a), str(b), "--label", "A", "--label", "B", "--format", fmt]) == 0
        assert marker in capsys.readouterr().out


@pytest.mark.parametrize("flag", [["--plot", "p.png"], ["--radii", "0.5"]])
def test_radius_options_are_refused_for_predict_files(tmp_path, capsys, flag):
    p = _write_predict(tmp_path / "predict.tsv", PREDICTED, **GAUSS)
    assert main(["report", str(p), *flag]) == 2
    assert f"{flag[0]}: {p} is a PREDICT file (predictions and abstentions, no radii)" in capsys.readouterr().err


def test_a_predict_file_is_not_compared_with_certify_files(tmp_path, capsys):
    c = _write(tmp_path / "certify.tsv", A, **GAUSS)
    p = _write_predict(tmp_path / "predict.tsv", PREDICTED, **GAUSS)
    assert main(["report", str(c), str(p)]) == 2
    err = capsys.readouterr().err
    assert "PREDICT and CERTIFY files cannot be compared" in err and "predict.tsv: predict" in err


# -- what differs between compared runs --------------------------------------------------------------------------


def test_every_setting_that_differs_is_noted(tmp_path):
    cohen = GAUSS | {"certifier": "cohen", "certifier_option": {}, "n0": 100, "mixer": None, "mixer_option": {},
                     "model": ["rs_plugins.nets:SmallCNN"], "precision": "fp32", "seed": 0, "checkpoint": "a.pt",
                     "model_sha256": "aa",
                     "provenance": {"norm": "l2", "radius": "rs_plugins.builtin.gaussian.GaussianNoise.radius"}}
    mixed = cohen | {"certifier": "mixed", "noise_option": {"scale": 2}, "mixer": "mix",
                     "mixer_option": {"alpha": 0.9}, "model": ["a:A", "b:B"], "precision": "bf16", "seed": 3,
                     "checkpoint": "b.pt", "model_sha256": "bb", "sigma": 0.5,
                     "certifies": "class_selection=label: certifies g(x) = y and robust",
                     "provenance": {"norm": "l2",
                                    "radius": "rs_plugins.builtin.adaptive.certificate.mixed_radius"}}  # fmt: skip
    a, b = _write(tmp_path / "a.tsv", A, **cohen), _write(tmp_path / "b.tsv", A, **mixed)
    notes = compare.comparison_notes(compare.load_runs([a, b], ["a", "b"], build_noise=NOISES))
    assert notes == [
        "different certifier: a cohen, b mixed",
        'different noise options: a {}, b {"scale": 2}',
        "different model: a rs_plugins.nets:SmallCNN, b a:A + b:B",
        "different mixer: a None, b mix",
        'different mixer options: a {}, b {"alpha": 0.9}',
        "different precision: a fp32, b bf16",
        "different seed: a 0, b 3",
        "different claims certified: a: g(x) and its robustness; b: class_selection=label: certifies g(x) = y and "
        "robust",
        "different radius formulas (the radii come from different certificates): a "
        "rs_plugins.builtin.gaussian.GaussianNoise.radius, b rs_plugins.builtin.adaptive.certificate.mixed_radius",
    ]  # the weights (checkpoint, hash) are what is compared, and sigma has its own column: no note


def test_runs_of_models_with_other_numbers_of_classes_are_refused(tmp_path, capsys):
    a = _write(tmp_path / "a.tsv", A, **(GAUSS | {"provenance": {"num_classes": 10}}))
    b = _write(tmp_path / "b.tsv", B, **(GAUSS | {"provenance": {"num_classes": 100}}))
    assert main(["report", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "different numbers of classes" in err and "a.tsv: 10 classes" in err and "b.tsv: 100 classes" in err


def test_without_a_noise_builder_an_unrecorded_norm_is_unknown(tmp_path):
    """The results layer sits below the plugin host: a file whose sidecar names its noise but not the norm gets
    that norm only from the builder it is given, and without one it is unknown, never guessed."""
    old = _write(tmp_path / "old.tsv", A, noise="gaussian", sigma=0.25)
    assert compare.load_runs([old])[0].norm == "unknown (gaussian)"
    assert compare.load_runs([old], build_noise=NOISES)[0].norm == "l2"
