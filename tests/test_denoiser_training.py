"""Salman et al.'s trained denoiser: the DnCNN (``--denoiser dncnn:``) and ``rs-plugins train-denoiser``.

The architecture is checked against the authors' ``cifar_dncnn`` (its parameter count, in closed form), the
stability loss against a hand computation, training on digits against the PSNR of the noisy input itself
(20 log10(1 / sigma) for Gaussian noise), and resuming against an uninterrupted run. Nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from rs_plugins import cli
from rs_plugins.builtin.denoisers.dncnn import DnCNNDenoiser
from rs_plugins.host import Host
from rs_plugins.nets import SmallCNN
from rs_plugins.results.provenance import weights_sha256
from rs_plugins.testing import check_denoiser
from rs_plugins.train.denoiser import DenoiserTrainConfig, DnCNN, load_dncnn, psnr, stability_loss

FAST = ["--device", "cpu", "--no-progress"]
CLASSIFIER = ["--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 4}']
TINY = ["--data", "digits", "--sigma", "0.25", "--depth", "4", "--width", "8", "--batch-size", "64", "--lr", "0.01"]


def run(capsys, *argv) -> int:
    code = cli.main([str(a) for a in argv])
    capsys.readouterr()
    return code


def log_of(directory) -> list[dict[str, str]]:
    with open(directory / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DnCNN trained for 3 epochs with the mse objective, and the classifier's weights next to it."""
    root = tmp_path_factory.mktemp("dncnn")
    torch.manual_seed(0)
    torch.save(SmallCNN(width=4).state_dict(), root / "clf.pt")
    argv = ["train-denoiser", *TINY, "--epochs", "3", "--val-images", "100", "--checkpoint-dir", root / "mse", *FAST]
    assert cli.main([str(a) for a in argv]) == 0
    return root


# -- the architecture -------------------------------------------------------------------------------------------


def test_dncnn_has_the_authors_layers_and_parameter_count():
    net = DnCNN(channels=3)  # the authors' cifar_dncnn: depth 17, width 64
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 17 and len(norms) == 15
    assert convs[0].bias is not None and all(c.bias is None for c in convs[1:])
    assert all(n.eps == 1e-4 and n.momentum == 0.95 for n in norms)
    first, middle, last = 3 * 64 * 9 + 64, 15 * (64 * 64 * 9 + 2 * 64), 64 * 3 * 9
    assert sum(p.numel() for p in net.parameters()) == first + middle + last == 558_400


def test_an_untrained_dncnn_is_the_identity_and_the_plugin_keeps_the_contract(tmp_path):
    net = DnCNN(channels=3, depth=5, width=8).eval()
    x = torch.rand(4, 3, 8, 8) + 0.25 * torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), x)  # the last convolution starts at zero
    torch.save({"format": "rs-plugins dncnn", "state_dict": net.state_dict()}, tmp_path / "d.pt")
    denoiser = DnCNNDenoiser(0.25, str(tmp_path / "d.pt"))
    check_denoiser(denoiser)  # shape, dtype, finite, in [0, 1]
    with torch.no_grad():
        assert torch.equal(denoiser(x), x.clamp(0, 1))


def test_the_authors_checkpoint_layout_loads_with_the_same_outputs(tmp_path):
    torch.manual_seed(1)
    net = DnCNN(channels=3, depth=5, width=8)
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    theirs = {k.replace("layers.", "module.dncnn."): v for k, v in net.state_dict().items()}  # DataParallel keys
    torch.save({"epoch": 90, "arch": "imagenet_dncnn", "state_dict": theirs, "optimizer": {}}, tmp_path / "c.pth.tar")
    loaded, meta = load_dncnn(tmp_path / "c.pth.tar")
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), net.eval()(x))
    assert meta == {"arch": "imagenet_dncnn"} and loaded.architecture() == {"channels": 3, "depth": 5, "width": 8}


# -- the objectives ---------------------------------------------------------------------------------------------


def test_stability_loss_equals_a_hand_computation():
    """CE(f(D(x + delta)), argmax f(x)) for a linear f, by hand in float64: mean of logsumexp(l) - l[target]."""
    torch.manual_seed(0)
    weight, bias = torch.randn(3, 4), torch.randn(3)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    classifier[1].weight.data, classifier[1].bias.data = weight.clone(), bias.clone()
    x, denoised = torch.rand(5, 1, 2, 2), torch.rand(5, 1, 2, 2)

    def logits(image):
        pixels = image.flatten().tolist()
        return [sum(w * p for w, p in zip(weight[k].tolist(), pixels)) + bias[k].item() for k in range(3)]

    expected = 0.0
    for clean, out in zip(x, denoised):
        clean_logits = logits(clean)
        target = clean_logits.index(max(clean_logits))  # the classifier's own prediction, not a label
        values = logits(out)
        expected += math.log(sum(math.exp(v) for v in values)) - values[target]
    got = stability_loss(classifier, denoised, x)
    assert got.item() == pytest.approx(expected / len(x), rel=1e-5)


def test_psnr_of_gaussian_noise_is_twenty_log10_one_over_sigma():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    assert psnr(x + 0.25 * torch.randn_like(x), x).mean().item() == pytest.approx(20 * math.log10(4), abs=0.02)


def test_config_refuses_unknown_objective_and_optimizer():
    with pytest.raises(ValueError, match="--objective must be one of mse, stability, classification; got 'l1'"):
        DenoiserTrainConfig(objective="l1")
    with pytest.raises(ValueError, match="--optimizer must be one of adam, sgd; got 'rmsprop'"):
        DenoiserTrainConfig(optimizer="rmsprop")
    d = DenoiserTrainConfig()  # the authors' train_denoiser.py defaults
    assert (d.optimizer, d.lr, d.weight_decay, d.epochs, d.batch_size, d.lr_step, d.lr_gamma) == (
        "adam", 1e-3, 1e-4, 90, 256, 30, 0.1
    )  # fmt: skip


# -- train-denoiser ---------------------------------------------------------------------------------------------


def test_train_denoiser_decreases_mse_on_digits(trained):
    log = log_of(trained / "mse")
    losses = [float(row["loss_mse"]) for row in log]
    assert len(log) == 3 and losses[-1] < losses[0]
    noisy = float(log[-1]["psnr_noisy"])
    assert noisy == pytest.approx(20 * math.log10(4), abs=0.3)  # the noisy input itself: 20 log10(1 / sigma)
    assert float(log[-1]["psnr"]) > noisy + 2  # the denoiser removes noise
    assert float(log[-1]["psnr"]) > float(log[0]["psnr"])


def test_resume_gives_exactly_the_weights_of_an_uninterrupted_run(capsys, tmp_path, trained):
    """Interrupted after epoch 1, rerun to 3 epochs: the same weights (Adam's state included) and log."""
    base = ["train-denoiser", *TINY, *CLASSIFIER, "--checkpoint", trained / "clf.pt", "--val-images", "50", *FAST]
    assert run(capsys, *base, "--epochs", "1", "--checkpoint-dir", tmp_path / "r") == 0
    assert run(capsys, *base, "--epochs", "3", "--checkpoint-dir", tmp_path / "r") == 0
    assert run(capsys, *base, "--epochs", "3", "--checkpoint-dir", tmp_path / "u") == 0
    resumed, whole = (torch.load(tmp_path / d / "denoiser.pt", weights_only=True) for d in ("r", "u"))
    assert resumed["state_dict"].keys() == whole["state_dict"].keys()
    assert all(torch.equal(resumed["state_dict"][k], whole["state_dict"][k]) for k in whole["state_dict"])
    rows = [[{k: v for k, v in row.items() if k != "seconds"} for row in log_of(tmp_path / d)] for d in ("r", "u")]
    assert rows[0] == rows[1] and {"clean_acc", "noisy_acc", "denoised_acc", "psnr"} <= rows[0][0].keys()


def test_stability_fine_tunes_an_mse_denoiser_and_keeps_the_classifier_frozen(capsys, tmp_path, trained):
    before = torch.load(trained / "clf.pt", weights_only=True)
    argv = ["train-denoiser", *TINY, *CLASSIFIER, "--checkpoint", trained / "clf.pt", "--objective", "stability",
            "--init", trained / "mse" / "denoiser.pt", "--epochs", "1", "--val-images", "50",
            "--checkpoint-dir", tmp_path / "s", *FAST]  # fmt: skip
    assert run(capsys, *argv) == 0
    saved = torch.load(tmp_path / "s" / "denoiser.pt", weights_only=True)
    assert saved["objective"] == "stability" and saved["sigma"] == 0.25
    assert float(log_of(tmp_path / "s")[0]["loss_stability"]) >= 0
    after = torch.load(trained / "clf.pt", weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- certify through the trained denoiser -----------------------------------------------------------------------


def test_certify_with_the_trained_dncnn_records_it_and_report_shows_it(capsys, tmp_path, trained):
    argv = ["certify", *CLASSIFIER, "--checkpoint", trained / "clf.pt", "--data", "digits", "--sigma", "0.25",
            "--n0", "5", "--n", "20", "--limit", "2", *FAST]  # fmt: skip
    path = trained / "mse" / "denoiser.pt"
    assert run(capsys, *argv, "--denoiser", f"dncnn:{path}", "--out", tmp_path / "file.tsv") == 0
    assert run(capsys, *argv, "--denoiser", f"dncnn:{trained / 'mse'}", "--out", tmp_path / "dir.tsv") == 0
    sidecar = json.loads((tmp_path / "file.tsv.json").read_text())
    denoiser = sidecar["denoiser"]
    assert denoiser["name"] == "dncnn" and denoiser["path"] == str(path)
    assert denoiser["sha256"] == weights_sha256(DnCNNDenoiser(0.25, str(path)))
    assert (denoiser["depth"], denoiser["width"], denoiser["trained"]["objective"]) == (4, 8, "mse")

    def rows(name):  # the directory form loads the same weights: the same rows on the same seeds
        return [line.split("\t")[:5] for line in (tmp_path / name).read_text().splitlines()]

    assert rows("file.tsv") == rows("dir.tsv") and len(rows("file.tsv")) == 3
    assert cli.main(["report", str(tmp_path / "file.tsv")]) == 0
    out = capsys.readouterr().out
    assert f"denoiser: dncnn:{path} sha256={denoiser['sha256'][:16]}" in out and "objective=mse" in out


def test_mixed_certifier_refuses_a_denoiser_before_sampling(capsys, tmp_path, trained):
    two = ["--model", "rs_plugins.nets:SmallCNN", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs",
           '{"width": 4}', "--checkpoint", trained / "clf.pt", "--checkpoint", trained / "clf.pt"]  # fmt: skip
    argv = ["certify", *two, "--mixer", "mix", "--mixer-option", "alpha=0.8", "--certifier", "mixed", "--denoiser",
            f"dncnn:{trained / 'mse'}", "--data", "digits", "--sigma", "0.25", "--n0", "5", "--n", "20", "--limit",
            "1", "--out", tmp_path / "m.tsv", *FAST]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "--certifier mixed with --denoiser" in err and "--certifier cohen" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.tsv").exists()


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["train-denoiser", *TINY, "--objective", "l1"], "argument --objective: invalid choice: 'l1'"),
        (["train-denoiser", *TINY, "--objective", "stability"], "--objective stability needs --model"),
        (
            ["certify", *CLASSIFIER, "--factory-weights", "--denoiser", "dncnn:no_such.pt"],
            "--denoiser dncnn:PATH: no file 'no_such.pt'",
        ),
        (
            ["certify", *CLASSIFIER, "--factory-weights", "--denoiser", "dncnn:{clf}"],
            "--denoiser dncnn:PATH: another architecture's weights in",
        ),
        (["certify", *CLASSIFIER, "--factory-weights", "--denoiser", "dncnn"], "--denoiser dncnn:PATH: give the"),
        (["train-denoiser", *TINY, "--init", "{clf}"], "--init: another architecture's weights in"),
    ],
    ids=["objective", "stability-no-model", "missing", "other-architecture", "no-path", "init-other-architecture"],
)
def test_bad_inputs_get_one_line_naming_the_option(argv, expect, capsys, tmp_path, trained, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{clf}", str(trained / "clf.pt")) for a in argv]
    if argv[0] == "certify":
        argv += ["--data", "digits", "--sigma", "0.25", "--n0", "5", "--n", "10", "--limit", "1"]
    try:
        code = cli.main([*argv, *FAST])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and expect in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("rs-plugins")]) == 1
    assert not list(tmp_path.glob("*.tsv")) and not (tmp_path / "denoiser" / "denoiser.pt").exists()


def test_compared_runs_with_different_denoisers_are_labelled_and_noted(tmp_path):
    from rs_plugins.results import compare
    from rs_plugins.results.files import CERTIFY_COLUMNS

    settings = {"noise": "gaussian", "sigma": 0.25, "n": 100, "alpha": 0.001, "data": "digits", "split": "test"}
    for name, denoiser in (("plain", None), ("denoised", {"name": "dncnn", "path": "d.pt", "sha256": "ab" * 32})):
        (tmp_path / f"{name}.tsv").write_text("\t".join(CERTIFY_COLUMNS) + "\n0\t3\t3\t0.5\t1\t0:00:01\t100\n")
        sidecar = settings | ({"denoiser": denoiser} if denoiser else {})
        (tmp_path / f"{name}.tsv.json").write_text(json.dumps(sidecar))
    runs = compare.load_runs([str(tmp_path / "plain.tsv"), str(tmp_path / "denoised.tsv")], build_noise=Host().noise)
    assert [run.label for run in runs] == ["gaussian σ=0.25", "gaussian σ=0.25 + dncnn"]
    notes = compare.comparison_notes(runs)
    assert "different denoiser: gaussian σ=0.25 none, gaussian σ=0.25 + dncnn dncnn:d.pt (sha256 abababab)" in notes
