"""``certify`` with the certifiers beyond Cohen, their options and the l1 noises, end to end through the CLI.

The model is an untrained SmallCNN(width=8): what is checked is the contract (columns, sidecar, summary,
labels, errors before any sampling), not the numbers.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from rs_plugins.cli import main

MODEL = ["--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 8}', "--factory-weights"]


def certify(tmp_path, *extra, name="c.tsv"):
    out = tmp_path / name
    argv = ["certify", *MODEL, "--data", "digits", "--sigma", "0.25", "--n0", "10", "--n", "300", "--limit", "3"]
    argv += ["--device", "cpu", "--no-progress", "--out", str(out), "--summary", str(tmp_path / (name + ".sum"))]
    argv += extra
    return main([str(a) for a in argv]), out


def rows(path):
    lines = path.read_text().splitlines()
    return [dict(zip(lines[0].split("\t"), line.split("\t"), strict=True)) for line in lines[1:]]


@pytest.mark.parametrize("certifier", ["feng", "sequential"])
def test_each_certifier_writes_samples_and_a_summary(capsys, tmp_path, certifier):
    code, out = certify(tmp_path, "--certifier", certifier)
    assert code == 0, capsys.readouterr().err
    samples = [int(r["samples"]) for r in rows(out)]
    assert len(samples) == 3 and all(10 <= s <= 310 for s in samples)
    if certifier == "feng":
        assert samples == [310] * 3
    summary = json.loads((tmp_path / "c.tsv.sum").read_text())
    assert summary["mean_samples"] == pytest.approx(sum(samples) / 3)
    assert summary["certifier"] == certifier and "class_selection" not in json.dumps(summary)
    assert "samples per image" in capsys.readouterr().out
    if certifier == "sequential":  # issue 17: the default stopping rule and its cost are stated
        assert summary["stopping"].startswith("grid (default)") and "best=true" in summary["stopping"]


def test_label_selection_is_stated_in_sidecar_summary_and_table(capsys, tmp_path):
    code, out = certify(tmp_path, "--certifier-option", "class_selection=label")
    stdout = capsys.readouterr().out
    assert code == 0
    assert [int(r["samples"]) for r in rows(out)] == [300] * 3  # no n0 pass
    assert [r["predict"] in (r["label"], "-1") for r in rows(out)] == [True] * 3  # the label or nothing
    sidecar = json.loads((tmp_path / "c.tsv.json").read_text())
    summary = json.loads((tmp_path / "c.tsv.sum").read_text())
    for text in (sidecar["certifies"], summary["certifies"], stdout):
        assert "g(x) = y and robust" in text and "evaluation only" in text
    code = main(["report", str(out)])
    assert code == 0 and "g(x) = y and robust" in capsys.readouterr().out


def test_l1_noise_radii_are_labelled_l1_by_certify_and_report(capsys, tmp_path):
    code, out = certify(tmp_path, "--noise", "laplace", "--certifier", "sequential")
    assert code == 0
    assert "l1 radius" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.tsv.sum").read_text())["norm"] == "l1"
    assert main(["report", str(out), "--plot", str(tmp_path / "p.png")]) == 0
    assert "(l1 radius)" in capsys.readouterr().out
    code, gauss = certify(tmp_path, name="g.tsv")
    capsys.readouterr()
    assert main(["report", str(out), str(gauss), "--plot", str(tmp_path / "q.png")]) == 2
    assert "one norm" in capsys.readouterr().err


def test_unsupported_pair_and_unknown_option_fail_before_the_model_is_loaded(capsys, tmp_path):
    missing = ["--checkpoint", str(tmp_path / "no-such-checkpoint.pt")]  # would fail if the model were loaded
    code, _ = certify(tmp_path, "--certifier", "feng", "--noise", "uniform", *missing)
    err = capsys.readouterr().err
    assert code == 2 and "certifier 'feng' supports noise ['gaussian']; got 'uniform'" in err
    code, _ = certify(tmp_path, "--certifier", "sequential", "--certifier-option", "tolerance=0.1", *missing)
    err = capsys.readouterr().err
    accepted = "accepted: mode, radii, tau, beta, first, growth, class_selection, best"
    assert code == 2 and "has no option 'tolerance' (--certifier-option); " + accepted in err


COST = re.compile(
    r"^(certify|predict): (at most )?([\d ]+) samples per image(?: \(([\d ]+) \+ ([\d ]+)\))? in ([\d.]+) passes of "
    r"(\d+); (?:at most )?about ([\d.e+-]+) (s|min|h) per image, ([\d.e+-]+) (s|min|h) for (\d+) images? on cpu$",
    re.M,
)


@pytest.mark.parametrize(
    ("command", "extra", "samples", "passes", "most"),
    [
        ("certify", ["--n0", "20", "--n", "500", "--batch-size", "200"], (20, 500), 3 + 1 / 10, False),
        ("certify", ["--n0", "10", "--n", "300", "--certifier", "sequential", "--batch-size", "100"], (10, 300), 3.1,
         True),
        ("predict", ["--n", "450", "--batch-size", "200"], (450,), 3, False),
    ],
)  # fmt: skip
def test_the_cost_of_a_row_is_said_before_sampling(capsys, tmp_path, command, extra, samples, passes, most):
    """One line before any sampling: samples and passes per image follow from --n0, --n and --batch-size, and the
    run's time is the per-image time times the images still to do (a resumed run counts only those)."""
    argv = [command, *MODEL, "--data", "digits", "--sigma", "0.25", "--limit", "3", "--device", "cpu"]
    argv += ["--no-progress", "--out", str(tmp_path / "c.tsv"), *extra]
    torch.manual_seed(0)  # the same random weights on each run, so the file resumes
    assert main(argv) == 0
    out = capsys.readouterr().out
    found = COST.search(out)
    assert found, out
    assert out.index(found.group(0)) == 0  # before the results are reported
    assert found.group(1) == command and bool(found.group(2)) == most
    assert int(found.group(3).replace(" ", "")) == sum(samples)
    if len(samples) > 1:
        assert tuple(int(g.replace(" ", "")) for g in found.group(4, 5)) == samples
    assert float(found.group(6)) == pytest.approx(passes, rel=1e-2)
    assert int(found.group(7)) == int(extra[extra.index("--batch-size") + 1])
    scale = {"s": 1, "min": 60, "h": 3600}
    per_image, total = float(found.group(8)) * scale[found.group(9)], float(found.group(10)) * scale[found.group(11)]
    assert int(found.group(12)) == 3 and total == pytest.approx(3 * per_image, rel=0.1)
    (tmp_path / "c.tsv").write_text("\n".join((tmp_path / "c.tsv").read_text().splitlines()[:2]) + "\n")  # 1 row kept
    torch.manual_seed(0)
    assert main(argv) == 0
    found = COST.search(capsys.readouterr().out)
    assert found and int(found.group(12)) == 2
    torch.manual_seed(0)
    assert main(argv) == 0
    assert not COST.search(capsys.readouterr().out)  # nothing left to do: no plan


@pytest.mark.parametrize("source", ["torchscript:m.ts", "robustbench:Standard"])
def test_forms_that_carry_their_weights_need_no_checkpoint(source):
    """Only a package.module:factory is refused without --checkpoint; README's TorchScript command used to be."""
    from rs_plugins.errors import RsPluginError
    from rs_plugins.sources.models import load_model
    from rs_plugins.types import ModelRequest

    with pytest.raises((RsPluginError, ValueError, OSError)) as info:  # the file is missing: another refusal
        load_model(ModelRequest(source))
    assert "--factory-weights" not in str(info.value)
    with pytest.raises(ValueError, match="--factory-weights"):
        load_model(ModelRequest("rs_plugins.nets:SmallCNN"))
