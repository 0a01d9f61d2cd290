"""Held-out accuracy after each epoch: clean_acc and noisy_acc in the log, on the console, through resume."""

from __future__ import annotations

import csv

import pytest
import torch
from torch.utils.data import Subset

from rs_plugins.builtin.gaussian import GaussianAugmentation, GaussianNoise
from rs_plugins.cli import main
from rs_plugins.nets import SmallCNN
from rs_plugins.sources.data import load_digits
from rs_plugins.train.config import TrainConfig
from rs_plugins.train.held_out import held_out_accuracy, hold_out, spread_indices
from rs_plugins.train.loop import LOG, train

SMALL_MODEL = ["--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 8}']


@pytest.fixture(scope="module")
def digits():
    return Subset(load_digits("train"), range(256)), load_digits("test")


def _train(directory, data, val, *, epochs, sigma=0.25, val_images=100):
    torch.manual_seed(0)
    model = SmallCNN(width=8)
    config = TrainConfig(epochs=epochs, batch_size=32, lr=0.1, lr_step=2)
    log = train(model, data, GaussianAugmentation(), GaussianNoise(sigma), config=config, checkpoint_dir=directory,
                progress=False, val_data=val, val_images=val_images)  # fmt: skip
    return model, log


def _read(directory):
    with open(directory / LOG, newline="") as f:
        return list(csv.DictReader(f))


def test_the_log_holds_the_held_out_accuracy_of_each_epoch(tmp_path, digits):
    train_set, test_set = digits
    model, log = _train(tmp_path, train_set, test_set, epochs=2)
    rows = _read(tmp_path)
    assert [set(r) >= {"clean_acc", "noisy_acc"} for r in rows] == [True, True]
    # The last epoch's clean accuracy is the final model's on the 100 spread test images, counted here directly.
    indices = spread_indices(len(test_set), 100)
    x = torch.stack([test_set[i][0] for i in indices])
    y = torch.tensor([int(test_set[i][1]) for i in indices])
    with torch.no_grad():
        expected = (model.eval()(x).argmax(1) == y).float().mean().item()
    assert float(rows[-1]["clean_acc"]) == pytest.approx(expected)
    assert log[-1]["clean_acc"] == pytest.approx(expected)
    assert 0 <= log[-1]["noisy_acc"] <= 1


def test_noisy_accuracy_is_under_the_noise_and_seeded(digits):
    _, test_set = digits
    torch.manual_seed(0)
    model, cpu = SmallCNN(width=8), torch.device("cpu")
    quiet = held_out_accuracy(model, test_set, GaussianNoise(1e-7), list(range(60)), batch_size=16, device=cpu, seed=0)
    assert quiet["clean"] == quiet["noisy"] and quiet["images"] == 60  # noise far below a pixel step changes nothing
    loud = [held_out_accuracy(model, test_set, GaussianNoise(50.0), list(range(60)), batch_size=16, device=cpu,
                              seed=seed)["noisy"] for seed in (0, 0, 1)]  # fmt: skip
    assert loud[0] == loud[1]  # the noise comes from the given seed, not from the global RNG
    state = torch.get_rng_state()
    held_out_accuracy(model, test_set, GaussianNoise(0.5), [0, 1], batch_size=16, device=cpu, seed=0)
    assert torch.equal(state, torch.get_rng_state())  # training's random stream is untouched


def test_resumed_training_logs_the_same_accuracies(tmp_path, digits):
    train_set, test_set = digits
    _, straight = _train(tmp_path / "straight", train_set, test_set, epochs=2)
    _train(tmp_path / "resumed", train_set, test_set, epochs=1)
    _, resumed = _train(tmp_path / "resumed", train_set, test_set, epochs=2)
    drop = lambda log: [{k: v for k, v in e.items() if k != "seconds"} for e in log]  # noqa: E731
    assert drop(resumed) == drop(straight)


def test_hold_out_is_a_seeded_partition():
    data = list(range(100))
    train_set, val = hold_out(data, 0.2, seed=3)
    assert len(val) == 20 and len(train_set) == 80
    assert sorted([*train_set, *val]) == data
    assert list(hold_out(data, 0.2, seed=3)[1]) == list(val)
    assert list(hold_out(data, 0.2, seed=4)[1]) != list(val)
    with pytest.raises(ValueError, match=r"--val-split .* in \(0, 1\); got 1.5"):
        hold_out(data, 1.5, seed=0)


def test_train_command_prints_and_logs_accuracy_without_progress_bars(tmp_path, capsys):
    argv = ["train", *SMALL_MODEL, "--data", "digits", "--sigma", "0.25", "--epochs", "2", "--batch-size", "128",
            "--no-progress", "--val-images", "50", "--checkpoint-dir", str(tmp_path / "a")]  # fmt: skip
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and all("clean_acc" in line and "noisy_acc" in line for line in lines)
    assert {"clean_acc", "noisy_acc"} <= set(_read(tmp_path / "a")[0])


def test_train_command_val_split_and_none(tmp_path, capsys):
    base = ["train", *SMALL_MODEL, "--data", "digits", "--sigma", "0.25", "--epochs", "1", "--batch-size", "128",
            "--no-progress"]  # fmt: skip
    assert main([*base, "--val-split", "0.1", "--checkpoint-dir", str(tmp_path / "split")]) == 0
    assert "clean_acc" in _read(tmp_path / "split")[0]
    assert main([*base, "--val-images", "0", "--checkpoint-dir", str(tmp_path / "none")]) == 0
    assert "clean_acc" not in _read(tmp_path / "none")[0]
    assert main([*base, "--val-split", "0.1", "--val-data", "digits", "--checkpoint-dir", str(tmp_path / "x")]) == 2
    assert "give --val-split or --val-data, not both" in capsys.readouterr().err


class _BatchAccuracyLoss(GaussianAugmentation):
    """Gaussian augmentation that also reports a part named ``clean_acc``, as SmoothMix's loss does."""

    def __call__(self, model, x, y, noise, **kwargs):
        out = super().__call__(model, x, y, noise, **kwargs)
        return type(out)(out.loss, out.parts | {"clean_acc": torch.tensor(-1.0)})


def test_a_loss_part_named_clean_acc_keeps_its_own_column(tmp_path, digits):
    """Issue 21: SmoothMix's batch clean_acc used to replace the held-out clean_acc in train_log.csv."""
    train_set, test_set = digits
    config = TrainConfig(epochs=1, batch_size=64, lr=0.1, lr_step=2)
    train(SmallCNN(width=4), train_set, _BatchAccuracyLoss(), GaussianNoise(0.25), config=config,
          checkpoint_dir=tmp_path, progress=False, val_data=test_set, val_images=50)  # fmt: skip
    (row,) = _read(tmp_path)
    assert float(row["loss_clean_acc"]) == -1.0 and 0 <= float(row["clean_acc"]) <= 1
    assert float(row["loss_xent"]) > 0 and "xent" not in row
