"""The plain classifier (``--loss standard``, no ``--sigma``) and the cost line every trainer prints before it
trains (``train``, ``train-denoiser``, ``train-mixer``), with or without progress bars."""

from __future__ import annotations

import csv
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from rs_plugins import Host
from rs_plugins.builtin.gaussian import GaussianAugmentation, GaussianNoise
from rs_plugins.cli import main
from rs_plugins.nets import SmallCNN
from rs_plugins.sources.data import load_digits
from rs_plugins.train import estimate
from rs_plugins.train.config import TrainConfig
from rs_plugins.train.estimate import EpochClock
from rs_plugins.train.loop import train

SMALL = ["--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 4}', "--data", "digits"]


def _log(directory) -> list[dict[str, str]]:
    with open(directory / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


# -- the standard loss ----------------------------------------------------------------------------------------------


def test_standard_is_the_cross_entropy_of_the_clean_batch_whatever_the_noise():
    loss = Host().loss("standard")
    torch.manual_seed(0)
    model, x, y = SmallCNN(width=4), torch.rand(6, 1, 8, 8), torch.arange(6) % 10
    expected = F.cross_entropy(model(x), y)
    for noise in (None, GaussianNoise(0.5)):
        out = loss(model, x, y, noise, progress=0.0)
        assert torch.allclose(out.loss, expected) and torch.allclose(out.parts["xent"], expected)


def test_train_standard_needs_no_sigma_and_learns_on_clean_images(tmp_path, capsys):
    argv = ["train", "--model", "rs_plugins.nets:SmallCNN", "--data", "digits", "--loss", "standard", "--epochs",
            "2", "--batch-size", "32", "--val-images", "100", "--checkpoint-dir", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    rows = _log(tmp_path)
    assert "noisy_acc" not in rows[-1]  # no noise: no accuracy under it
    assert float(rows[-1]["clean_acc"]) > 0.5  # 10 classes: chance is 0.1
    stored = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["config"]
    assert stored["loss"] == "standard" and stored["sigma"] is None and stored["noise"] is None
    # Given a --sigma, it only sets the noise of noisy_acc.
    assert main([*argv[:-3], "--sigma", "0.25", "--checkpoint-dir", str(tmp_path / "s"), "--no-progress"]) == 0
    assert "noisy_acc" in _log(tmp_path / "s")[-1]
    capsys.readouterr()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--loss", "gaussian"], "--loss gaussian trains under noise: give --sigma"),
        (["--loss", "standard", "--noise-option", "scale=2"], "--noise-option given without --sigma"),
    ],
)
def test_without_sigma_a_noise_loss_and_noise_options_are_refused(tmp_path, capsys, extra, message):
    assert main(["train", *SMALL, *extra, "--epochs", "1", "--checkpoint-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_the_python_loop_refuses_no_noise_for_a_loss_that_uses_it(tmp_path):
    data = Subset(load_digits("train"), range(32))
    with pytest.raises(ValueError, match="trains under noise; give a noise sampler"):
        train(SmallCNN(width=4), data, GaussianAugmentation(), None, config=TrainConfig(epochs=1),
              checkpoint_dir=tmp_path, progress=False)  # fmt: skip


# -- the cost line --------------------------------------------------------------------------------------------------


def test_the_clock_times_the_batches_after_the_warm_up_one(monkeypatch):
    """Batch 1 takes 5 s (warm-up, left out), each later one 2 s: 10 batches are 20 s an epoch, 60 s for 3."""
    now = iter([0.0, 5.0, 11.0])  # read when built, after the warm-up batch, after batch 4
    monkeypatch.setattr(estimate.time, "perf_counter", lambda: next(now))
    lines: list[str] = []
    clock = EpochClock("train", 10, 3, "cpu", evaluates=True, say=lines.append)
    for _ in range(10):
        clock.batch_done()
    assert lines == [
        "train: about 20 s per epoch of 10 batches, 60 s for the 3 epochs left on cpu (timed over batches 2-4; "
        "held-out evaluation not included)"
    ]


def test_a_one_batch_epoch_is_timed_over_its_only_batch(monkeypatch):
    now = iter([0.0, 3.0])
    monkeypatch.setattr(estimate.time, "perf_counter", lambda: next(now))
    lines: list[str] = []
    clock = EpochClock("train-mixer", 1, 1, "cpu", say=lines.append)
    clock.batch_done()
    assert lines == ["train-mixer: about 3 s per epoch of 1 batches, 3 s for the epoch left on cpu (timed over the "
                     "first batch)"]  # fmt: skip


def _cost_and_epochs(out: str, command: str) -> tuple[list[str], list[str]]:
    lines = out.splitlines()
    return [s for s in lines if s.startswith(f"{command}: about ")], [s for s in lines if s.startswith("epoch ")]


def test_train_says_what_it_will_cost_before_the_first_epoch_ends_even_without_bars(tmp_path, capsys):
    argv = ["train", *SMALL, "--sigma", "0.25", "--batch-size", "64", "--val-images", "20", "--checkpoint-dir",
            str(tmp_path), "--no-progress"]  # fmt: skip
    assert main([*argv, "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    cost, epochs = _cost_and_epochs(out, "train")
    assert len(cost) == 1 and "per epoch of 23 batches" in cost[0] and "for the 3 epochs left on cpu" in cost[0]
    assert out.index(cost[0]) < out.index(epochs[0]) and len(epochs) == 3
    assert main([*argv, "--epochs", "4"]) == 0
    cost, epochs = _cost_and_epochs(capsys.readouterr().out, "train")
    assert "for the epoch left" in cost[0] and len(epochs) == 1  # resumed: only the epoch left is counted


def test_train_denoiser_says_what_it_will_cost(tmp_path, capsys):
    argv = ["train-denoiser", "--data", "digits", "--sigma", "0.25", "--depth", "3", "--width", "4", "--epochs",
            "2", "--batch-size", "128", "--val-images", "20", "--checkpoint-dir", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    cost, epochs = _cost_and_epochs(capsys.readouterr().out, "train-denoiser")
    assert len(cost) == 1 and "per epoch of 12 batches" in cost[0] and "for the 2 epochs left" in cost[0]
    assert len(epochs) == 2


def test_train_mixer_says_what_it_will_cost_and_prints_its_epochs_without_bars(tmp_path, capsys):
    pytest.importorskip("torchattacks")
    torch.manual_seed(0)
    torch.save(SmallCNN().state_dict(), tmp_path / "base.pt")
    base = ["--model", "rs_plugins.nets:SmallCNN", "--checkpoint", str(tmp_path / "base.pt")]
    argv = ["train-mixer", *base, *base, "--mixer-option", "width=4", "--data", "digits", "--limit", "40",
            "--batch-size", "20", "--epochs", "2", "--norm", "L2", "--eps", "0.5", "--targets", "1", "--extra-clean",
            "0", "--attack-steps", "1", "--checkpoint-dir", str(tmp_path / "mixer"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    cost, epochs = _cost_and_epochs(capsys.readouterr().out, "train-mixer")
    assert len(cost) == 1 and "per epoch of 2 batches" in cost[0] and "for the 2 epochs left" in cost[0]
    assert len(epochs) == 2  # one line per epoch, as train and train-denoiser print with --no-progress


# -- what a run says about the files it was given ------------------------------------------------------------------


def test_a_training_checkpoint_as_checkpoint_says_which_epoch_it_holds(tmp_path, capsys):
    argv = ["train", *SMALL, "--sigma", "0.25", "--batch-size", "256", "--val-images", "0", "--checkpoint-dir",
            str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    assert main([*argv, "--epochs", "2"]) == 0
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    state["config"]["epochs"] = 5  # as an interrupted run of 5 epochs leaves it after its second
    torch.save(state, tmp_path / "run" / "unfinished.pt")
    certify = ["certify", *SMALL, "--sigma", "0.25", "--n0", "10", "--n", "20", "--limit", "1", "--no-progress"]
    for name, said in (("unfinished.pt", "after epoch 2 of 5: its run is unfinished (interrupted, or still running)"),
                       ("checkpoint.pt", "after epoch 2, its run's last (the same weights as the model.pt beside it)")):
        out = str(tmp_path / f"{name}.tsv")
        with pytest.warns(UserWarning) as caught:
            assert main([*certify, "--checkpoint", str(tmp_path / "run" / name), "--out", out]) == 0
        expected = f"--checkpoint {tmp_path / 'run' / name} is a training checkpoint; it holds the weights {said}"
        assert [str(w.message) for w in caught if "training checkpoint" in str(w.message)] == [expected]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the final model.pt: no warning at all
        final = str(tmp_path / "run" / "model.pt")
        assert main([*certify, "--checkpoint", final, "--out", str(tmp_path / "m.tsv")]) == 0
    # Run as a user runs it, the warning is one line of its own, not Python's file:line: UserWarning pair.
    command = [sys.executable, "-m", "rs_plugins", *certify, "--checkpoint", str(tmp_path / "run" / "unfinished.pt"),
               "--out", str(tmp_path / "u2.tsv")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = f"rs-plugins: warning: --checkpoint {tmp_path / 'run' / 'unfinished.pt'} is a training checkpoint; "
    assert expected in done.stderr and "UserWarning" not in done.stderr
    capsys.readouterr()


def test_warnings_of_rs_plugins_show_as_one_line_others_as_python_shows_them():
    import rs_plugins.cli as cli

    inside = str(Path(cli.__file__).parents[1] / "builtin" / "denoisers" / "__init__.py")
    assert cli.one_line_warning("trained for sigma 0.5", UserWarning, inside, 18) == \
        "rs-plugins: warning: trained for sigma 0.5\n"  # fmt: skip
    outside = cli.one_line_warning("deprecated", FutureWarning, "/elsewhere/torch/x.py", 7, "call()")
    assert outside == warnings.formatwarning("deprecated", FutureWarning, "/elsewhere/torch/x.py", 7, "call()")


def test_a_denoiser_trained_for_another_sigma_is_a_warning_and_a_report_note(tmp_path, capsys):
    train = ["train-denoiser", "--data", "digits", "--sigma", "0.5", "--depth", "3", "--width", "4", "--epochs", "1",
             "--batch-size", "256", "--val-images", "0", "--checkpoint-dir", str(tmp_path / "dn"), "--no-progress"]
    assert main(train) == 0
    torch.manual_seed(0)
    torch.save(SmallCNN(width=4).state_dict(), tmp_path / "clf.pt")
    out = tmp_path / "d.tsv"
    with pytest.warns(UserWarning, match="was trained for sigma 0.5; --sigma is 0.25"):
        assert main(["certify", *SMALL, "--checkpoint", str(tmp_path / "clf.pt"), "--denoiser",
                     f"dncnn:{tmp_path / 'dn'}", "--sigma", "0.25", "--n0", "10", "--n", "20", "--limit", "1", "--out",
                     str(out), "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "note: gaussian σ=0.25 + dncnn: its denoiser dncnn:" in (shown := capsys.readouterr().out)
    assert "was trained for σ = 0.5, the run smoothed with σ = 0.25" in shown
