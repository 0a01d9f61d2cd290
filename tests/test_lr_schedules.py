"""Learning-rate schedules: the ``step-epoch`` recipes against the rates the authors' runs logged.

The authors' scripts (alinlab/smoothing-catrs ``code/train_*.py``, microsoft/denoised-smoothing
``code/train_denoiser.py``) call ``scheduler.step(epoch)`` after epoch ``epoch`` (0-based) of a ``StepLR``; with an
explicit epoch PyTorch (1.4 and later) sets the next epoch's rate to the closed form ``lr * gamma ** (epoch //
step)``, so every decay lands one epoch later. Their CAT-RS logs record ``scheduler.get_lr()[0]`` before that call,
and ``get_lr()`` outside ``step()`` is the chained formula: in the rows right after a decay (51 and 101 with step
50) it shows ``gamma`` times the rate the epoch ran at. Both facts are checked here: their loop, run on PyTorch's
own ``StepLR``, writes their logs' column; our rate per epoch is the rate their optimiser held.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings

import pytest
import torch
from torch.utils.data import Subset

from rs_plugins import Host
from rs_plugins.nets import SmallCNN
from rs_plugins.sources.data import load_digits
from rs_plugins.train.config import RECIPES, TrainConfig
from rs_plugins.train.denoiser import DenoiserTrainConfig
from rs_plugins.train.loop import train
from rs_plugins.train.schedules import build_scheduler, lr_factor

CATRS_COMMIT = "d4bc576e7d373d158f087ba5744af8bb48466bb7"  # alinlab/smoothing-catrs, the files below
CIFAR_LR = ((0, 50, "0.1"), (51, 51, "0.001"), (52, 100, "0.01"), (101, 101, "0.0001"), (102, 149, "0.001"))
MNIST_150_LR = ((0, 50, "0.01"), (51, 51, "0.0001"), (52, 100, "0.001"), (101, 101, "1e-05"), (102, 149, "0.0001"))
MNIST_90_LR = ((0, 30, "0.01"), (31, 31, "0.0001"), (32, 60, "0.001"), (61, 61, "1e-05"), (62, 89, "0.0001"))
# The `lr` column of the authors' released training logs (rows: 0-based epochs), run-length encoded as
# (first row, last row, value as printed with "{:.3}"), and the schedule that should reproduce each run.
LOGS = {
    "data/cifar10/noise_0.25/cat-rs/log.txt": (dict(RECIPES["catrs-cifar10"]), CIFAR_LR),
    "data/cifar10/noise_0.5/cat-rs/log.txt": (dict(RECIPES["catrs-cifar10"]), CIFAR_LR),
    "data/cifar10/noise_1.0/cat-rs/log.txt": (dict(RECIPES["catrs-cifar10"]), CIFAR_LR),
    "data/cifar100/noise_0.25/cohen/log.txt": (dict(RECIPES["catrs-cifar10"]), CIFAR_LR),
    "data/cifar100/noise_0.5/smoothmix/log.txt": (dict(RECIPES["catrs-cifar10"]), CIFAR_LR),
    "data/mnist/noise_0.5/log.txt": (
        RECIPES["mnist"] | dict(epochs=150, lr_step=50, lr_schedule="step-epoch"),
        MNIST_150_LR,
    ),
    "data/fmnist/noise_0.25/cohen/log.txt": (RECIPES["mnist"] | dict(lr_schedule="step-epoch"), MNIST_90_LR),
}
STEP_EPOCH = "epoch" in inspect.signature(torch.optim.lr_scheduler.StepLR.step).parameters


def loop_rates(config) -> list[float]:
    """The rate each epoch runs at (train_log.csv's ``lr``), stepping the scheduler as the trainers do."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = build_scheduler(
        optimizer, step=config.lr_step, gamma=config.lr_gamma, milestones=getattr(config, "lr_milestones", ()),
        schedule=config.lr_schedule, drop_once=getattr(config, "lr_drop_once", None),
    )  # fmt: skip
    rates = []
    for _ in range(config.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def authors_loop(lr, step, gamma, epochs, *, drop=None, optimizer="sgd", log_after_step=False):
    """Their scripts' scheduler calls on PyTorch's StepLR: (rate each epoch ran at, value each epoch's log row shows).

    ``train_catrs.py`` and the harness log ``scheduler.get_lr()[0]`` and then call ``scheduler.step(epoch)``,
    with ``--lr_drop`` multiplying the rate before epoch ``drop``; ``train_denoiser.py`` logs ``args.lr``, the
    previous epoch's ``get_lr()[0]`` read after its ``step(epoch)``.
    """
    params = [torch.zeros(1, requires_grad=True)]
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=gamma)
    used, logged, shown = [], [], lr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # step(epoch) and get_lr() are deprecated, and say so
        for epoch in range(epochs):
            if epoch == drop:
                for group in opt.param_groups:
                    group["lr"] = group["lr"] * gamma
            used.append(opt.param_groups[0]["lr"])
            opt.step()
            logged.append(shown if log_after_step else scheduler.get_lr()[0])
            scheduler.step(epoch)
            shown = scheduler.get_lr()[0]
    return used, logged


def expand(runs) -> list[str]:
    rows = [value for first, last, value in runs for _ in range(first, last + 1)]
    assert [first for first, _, _ in runs] == [0] + [last + 1 for _, last, _ in runs[:-1]]  # no row left out
    return rows


@pytest.mark.parametrize("path", list(LOGS))
def test_step_epoch_recipes_run_at_the_rates_of_the_authors_logs(path):
    """Every row shows our rate, except the rows right after a decay, which show gamma times it (get_lr())."""
    settings, runs = LOGS[path]
    config = TrainConfig(**settings)
    logged, ours = expand(runs), loop_rates(config)
    assert len(ours) == len(logged) == config.epochs
    after_decay = [i for i in range(1, config.epochs) if (i - 1) and (i - 1) % config.lr_step == 0]
    assert after_decay == [config.lr_step + 1, 2 * config.lr_step + 1]
    for i, value in enumerate(logged):
        shown = ours[i] * config.lr_gamma if i in after_decay else ours[i]
        assert f"{shown:.3}" == value, f"{path} row {i}: {ours[i]!r}"
    first_decayed = next(i for i, rate in enumerate(ours) if rate < config.lr)
    assert first_decayed == config.lr_step + 1  # the 0-based index: the 52nd epoch with step 50, not the 51st


@pytest.mark.skipif(not STEP_EPOCH, reason="this PyTorch no longer takes scheduler.step(epoch)")
@pytest.mark.parametrize("path", list(LOGS))
def test_the_authors_loop_on_pytorchs_steplr_writes_their_logs_and_runs_our_rates(path):
    settings, runs = LOGS[path]
    config = TrainConfig(**settings)
    used, logged = authors_loop(config.lr, config.lr_step, config.lr_gamma, config.epochs)
    assert [f"{value:.3}" for value in logged] == expand(runs)  # the explanation reproduces their column
    assert loop_rates(config) == used  # and our schedule is the rate their optimiser held, to the bit


@pytest.mark.skipif(not STEP_EPOCH, reason="this PyTorch no longer takes scheduler.step(epoch)")
def test_catrs_imagenet_recipe_lowers_one_epoch_as_their_lr_drop_did():
    """No ImageNet training log is released: the reference is train_catrs.py's loop with --lr_drop 85."""
    config = TrainConfig(**RECIPES["catrs-imagenet"])
    used, _ = authors_loop(0.1, 30, 0.1, 90, drop=85)
    assert loop_rates(config) == pytest.approx(used, rel=1e-12)
    expected = [0.1] * 31 + [0.01] * 30 + [0.001] * 24 + [0.0001] + [0.001] * 4  # 0-based 85 alone at 1e-4
    assert loop_rates(config) == pytest.approx(expected, rel=1e-12)
    plain = TrainConfig(**RECIPES["imagenet"], lr_milestones=(30, 60, 85))  # what catrs.md recommended before
    differ = [i for i, (a, b) in enumerate(zip(loop_rates(plain), expected)) if a != pytest.approx(b, rel=1e-12)]
    assert differ == [30, 60, 86, 87, 88, 89]


@pytest.mark.skipif(not STEP_EPOCH, reason="this PyTorch no longer takes scheduler.step(epoch)")
def test_denoiser_step_epoch_schedule_is_train_denoisers():
    """Adam at 1e-3, step 30 (their defaults); no denoiser log is released, so the reference is their loop."""
    config = DenoiserTrainConfig(lr_schedule="step-epoch")
    used, logged = authors_loop(config.lr, config.lr_step, config.lr_gamma, config.epochs, optimizer="adam",
                                log_after_step=True)  # fmt: skip
    assert loop_rates(config) == used
    assert used.index(pytest.approx(1e-4)) == 31 and used.index(pytest.approx(1e-5)) == 61
    assert [f"{v:.3}" for v in logged[30:33]] == ["0.001", "1e-05", "0.0001"]  # their log.txt would show this


def test_standard_schedule_is_unchanged_and_step_epoch_is_it_one_epoch_later():
    for settings in (RECIPES["cifar10"], RECIPES["macer"], dict(epochs=12, lr_step=3)):
        standard = loop_rates(TrainConfig(**settings))
        late = loop_rates(TrainConfig(**settings, lr_schedule="step-epoch"))
        assert late == pytest.approx(standard[:1] + standard[:-1], rel=1e-12)
    rates = loop_rates(TrainConfig(epochs=9, lr=1.0, lr_step=3, lr_gamma=0.5))
    assert rates == [1.0] * 3 + [0.5] * 3 + [0.25] * 3  # StepLR stepped once after each epoch


def test_lr_factor_and_schedule_settings_are_checked():
    assert lr_factor(5, step=2, gamma=0.1, schedule="step-epoch") == pytest.approx(0.01)  # (5 - 1) // 2 decays
    assert lr_factor(4, step=2, gamma=0.5, milestones=(3, 4), schedule="step-epoch", drop_once=4) == 0.25
    with pytest.raises(ValueError, match="^--lr-schedule must be one of standard, step-epoch; got 'late'$"):
        TrainConfig(lr_schedule="late")
    with pytest.raises(ValueError, match="^--lr-schedule must be one of standard, step-epoch; got 'late'$"):
        DenoiserTrainConfig(lr_schedule="late")
    with pytest.raises(ValueError, match=r"^lr_drop_once must be an integer >= 0; got -1$"):
        TrainConfig(lr_drop_once=-1)


def test_train_log_and_resume_follow_the_step_epoch_schedule(tmp_path):
    """The runner's train_log.csv shows loop_rates, and a run resumed mid-way keeps the schedule (LambdaLR state)."""
    config = TrainConfig(epochs=6, batch_size=16, lr=0.1, lr_step=2, lr_schedule="step-epoch", lr_drop_once=3)
    data, host = Subset(load_digits("train"), range(16)), Host()

    def run(directory, epochs):
        torch.manual_seed(0)
        model = SmallCNN(width=2)
        cut = dataclasses.replace(config, epochs=epochs)
        log = train(model, data, host.loss("gaussian"), host.noise("gaussian", sigma=0.25), config=cut,
                    checkpoint_dir=directory, progress=False, val_images=0)  # fmt: skip
        return model, log

    whole, log = run(tmp_path / "whole", 6)
    assert [row["lr"] for row in log] == loop_rates(config)
    assert [row["lr"] for row in log] == pytest.approx([0.1, 0.1, 0.1, 0.001, 0.01, 0.001])
    run(tmp_path / "cut", 4)
    resumed, log = run(tmp_path / "cut", 6)
    assert [row["lr"] for row in log] == loop_rates(config)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_a_checkpoint_from_before_the_schedule_settings_resumes_at_their_defaults(tmp_path):
    """A checkpoint.pt without lr_schedule / lr_drop_once resumes with them at their defaults, and only so."""
    data, host = Subset(load_digits("train"), range(16)), Host()

    def run(epochs, **settings):
        torch.manual_seed(0)
        config = TrainConfig(epochs=epochs, batch_size=16, lr_step=1, **settings)
        return train(SmallCNN(width=2), data, host.loss("gaussian"), host.noise("gaussian", sigma=0.25),
                     config=config, checkpoint_dir=tmp_path, progress=False, val_images=0)  # fmt: skip

    run(1)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key in ("lr_schedule", "lr_drop_once"):
        del state["config"][key]  # as written before these settings existed
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"other settings \(lr_schedule: 'standard' -> 'step-epoch'\)"):
        run(2, lr_schedule="step-epoch")
    assert [row["epoch"] for row in run(2)] == [1, 2]
