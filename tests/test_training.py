"""The shared training loop: exact resume, checkpoint files, settings checks, learning signal, LR schedule."""

from __future__ import annotations

import csv
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset, TensorDataset

from rs_plugins import Host
from rs_plugins.builtin.gaussian import GaussianAugmentation, GaussianNoise
from rs_plugins.errors import PluginBuildError, TrainingDivergedError
from rs_plugins.nets import SmallCNN
from rs_plugins.sources.data import load_digits
from rs_plugins.train.config import FINAL_MODEL, TrainConfig, crop_flip
from rs_plugins.train.loop import CHECKPOINT, LOG, train
from rs_plugins.types import LossOutput

# The rate halves after epoch 2: a resume after epoch 1 ends with the wrong rate unless the scheduler state is restored.
SCHEDULE = dict(batch_size=32, lr=0.1, lr_step=2, lr_gamma=0.5)


@pytest.fixture(scope="module")
def digits():
    """256 training digits: enough for a learning signal, small enough for a fraction of a second per epoch."""
    return Subset(load_digits("train"), range(256))


def run(directory, data, *, init_seed=0, progress=False, loss=None, **config):
    """Train a fresh SmallCNN(width=8), initialised from ``init_seed``, into ``directory``."""
    torch.manual_seed(init_seed)
    model = SmallCNN(width=8)
    log = train(
        model,
        data,
        loss or GaussianAugmentation(),
        GaussianNoise(0.25),
        config=TrainConfig(**config),
        checkpoint_dir=directory,
        progress=progress,
    )
    return model, log


def read_log(directory) -> list[dict[str, str]]:
    with open(directory / LOG, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, digits):
    """Three epochs in one go: (checkpoint directory, trained model, returned log)."""
    directory = tmp_path_factory.mktemp("straight")
    model, log = run(directory, digits, epochs=3, **SCHEDULE)
    return directory, model, log


def test_resumed_training_ends_with_the_same_weights(tmp_path, digits, straight):
    directory, model, log = straight
    _, partial = run(tmp_path, digits, epochs=1, **SCHEDULE)
    assert len(partial) == 1 and len(read_log(tmp_path)) == 1
    # Another initialisation: the resumed run must take its weights from the checkpoint, not from the seed.
    resumed_model, resumed = run(tmp_path, digits, init_seed=1, epochs=3, **SCHEDULE)

    expected, got = model.state_dict(), resumed_model.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert len(read_log(directory)) == len(read_log(tmp_path)) == 3
    timeless = [[{k: v for k, v in entry.items() if k != "seconds"} for entry in x] for x in (log, resumed)]
    assert timeless[0] == timeless[1]
    assert resumed[0] == pytest.approx(partial[0])  # the first epoch comes back from the log, not re-run
    assert [entry["lr"] for entry in resumed] == pytest.approx([0.1, 0.1, 0.05])


def test_checkpoint_files_load_with_weights_only(straight):
    directory, model, _ = straight
    state = torch.load(directory / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 3
    assert state["config"]["lr"] == SCHEDULE["lr"]
    assert {"model", "optimizer", "scheduler"} <= state.keys()

    weights = torch.load(directory / FINAL_MODEL, weights_only=True)
    fresh = SmallCNN(width=8)
    fresh.load_state_dict(weights)  # strict: every key present, nothing extra
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


@pytest.mark.parametrize(("setting", "value"), [("lr", 0.05), ("seed", 1), ("batch_size", 16)])
def test_resume_with_other_settings_is_refused(tmp_path, digits, straight, setting, value):
    directory = tmp_path / "checkpoints"
    shutil.copytree(straight[0], directory)
    before = (directory / CHECKPOINT).read_bytes()
    old = (SCHEDULE | {"seed": 0})[setting]
    with pytest.raises(ValueError, match=rf"{setting}: {old!r} -> {value!r}") as exc:
        run(directory, digits, epochs=4, **(SCHEDULE | {setting: value}))
    assert "--checkpoint-dir" in str(exc.value)
    assert (directory / CHECKPOINT).read_bytes() == before


def test_the_loss_decreases(tmp_path, digits):
    _, log = run(tmp_path, digits, epochs=5, batch_size=8, lr=0.05)
    assert [entry["epoch"] for entry in log] == [1, 2, 3, 4, 5]
    first, last = log[0]["loss"], log[-1]["loss"]
    assert first == pytest.approx(log[0]["loss_xent"])  # Gaussian augmentation's loss is its cross-entropy
    assert last < 0.9 * first, [entry["loss"] for entry in log]


def test_learning_rate_schedule(tmp_path, digits):
    directory = tmp_path
    _, log = run(directory, digits, epochs=3, batch_size=64, lr=0.1, lr_step=1, lr_gamma=0.5)
    assert [entry["lr"] for entry in log] == pytest.approx([0.1, 0.05, 0.025])
    assert [float(row["lr"]) for row in read_log(directory)] == pytest.approx([0.1, 0.05, 0.025])


class EvalModeLoss:
    """A buggy loss plugin: it switches the model to eval mode (e.g. to draw clean predictions) and leaves it so."""

    def __call__(self, model, x, y, noise, *, progress):
        model.eval()
        loss = F.cross_entropy(model(noise.sample(x)), y)
        return LossOutput(loss, {})


def test_a_loss_that_leaves_eval_mode_is_reported(tmp_path, digits):
    with pytest.raises(PluginBuildError, match="EvalModeLoss left the model in eval mode"):
        run(tmp_path, digits, epochs=1, loss=EvalModeLoss())
    assert not (tmp_path / CHECKPOINT).exists()


def test_images_outside_the_unit_range_are_refused(tmp_path):
    x = torch.arange(64 * 64, dtype=torch.float32).view(64, 1, 8, 8) % 17  # 0..16, digits before scaling
    data = TensorDataset(x, torch.arange(64) % 10)
    with pytest.raises(ValueError, match=r"--data.*\[0, 1\]"):
        run(tmp_path, data, epochs=1, batch_size=16)
    assert not (tmp_path / CHECKPOINT).exists()


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [("epochs", 0, "--epochs"), ("lr", 0.0, "--lr"), ("batch_size", 0, "--batch-size"), ("lr_step", 0, "--lr-step")],
)
def test_config_errors_name_the_cli_flag(field, value, flag):
    with pytest.raises(ValueError, match=rf"^{flag} must be") as exc:
        TrainConfig(**{field: value})
    assert repr(value) in str(exc.value)


class RecordingLoss:
    """Gaussian augmentation that records what the runner hands it: chunk sizes and the epochs it was told."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.sizes: list[int] = []
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __call__(self, model, x, y, noise, *, progress):
        self.sizes.append(len(x))
        return GaussianAugmentation()(model, x, y, noise, progress=progress)


def test_each_batch_is_split_into_the_losses_chunks_with_one_step_each(tmp_path, digits):
    """256 images, batch 100, chunks 3: batches of 100, 100, 56 give chunks 34+33+33, 34+33+33, 19+19+18."""
    loss = RecordingLoss(chunks=3)
    torch.manual_seed(0)
    model = SmallCNN(width=8)
    steps = []
    model.register_forward_pre_hook(lambda module, args: steps.append(len(args[0])))
    train(
        model, digits, loss, GaussianNoise(0.25), config=TrainConfig(epochs=2, batch_size=100), checkpoint_dir=tmp_path
    )
    assert loss.sizes == [34, 33, 33, 34, 33, 33, 19, 19, 18] * 2
    assert loss.epochs == [0, 1]
    assert steps[0] == 1  # the one-image check that --data fits the model, in eval mode without gradients
    assert len(steps[1:]) == len(loss.sizes)  # one forward pass (and optimiser step) per chunk


def test_a_tail_batch_smaller_than_the_chunks_is_skipped(tmp_path, digits):
    loss = RecordingLoss(chunks=4)
    train(
        SmallCNN(width=8),
        Subset(digits, range(66)),
        loss,
        GaussianNoise(0.25),
        config=TrainConfig(epochs=1, batch_size=32),
        checkpoint_dir=tmp_path,
    )
    assert loss.sizes == [8] * 8  # batches of 32, 32 and a tail of 2 < 4 chunks


class FreezingLoss:
    """A buggy loss plugin: it freezes the first layer (e.g. for an attack) and forgets to unfreeze it."""

    def __call__(self, model, x, y, noise, *, progress):
        next(model.parameters()).requires_grad_(False)
        return LossOutput(F.cross_entropy(model(noise.sample(x)), y), {})


def test_a_loss_that_changes_requires_grad_is_reported(tmp_path, digits):
    with pytest.raises(PluginBuildError, match="FreezingLoss changed requires_grad"):
        run(tmp_path, digits, epochs=1, loss=FreezingLoss())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes(tmp_path, digits, precision):
    """Autocast on the CPU: weights stay float32, the loss falls, and a resumed run ends where a straight one does
    (for fp16 that needs the gradient scaler's state from the checkpoint)."""
    straight, log = run(tmp_path / "straight", digits, epochs=3, precision=precision, **SCHEDULE)
    assert all(p.dtype == torch.float32 for p in straight.parameters())
    assert log[-1]["loss"] < log[0]["loss"]
    run(tmp_path / "resumed", digits, epochs=1, precision=precision, **SCHEDULE)
    resumed, _ = run(tmp_path / "resumed", digits, init_seed=1, epochs=3, precision=precision, **SCHEDULE)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    state = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    assert bool(state["scaler"]) == (precision == "fp16")  # a disabled scaler has no state


def test_channels_last_gives_the_same_training(tmp_path, digits, straight):
    """NHWC storage changes the memory layout, not the arithmetic: weights agree with the NCHW run."""
    model, _ = run(tmp_path, digits, epochs=3, channels_last=True, **SCHEDULE)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for (name, a), b in zip(straight[1].state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4, msg=name)


def test_deterministic_mode_is_switched_off_again(tmp_path, digits):
    assert not torch.are_deterministic_algorithms_enabled()
    run(tmp_path, digits, epochs=1, deterministic=True, **SCHEDULE)
    assert not torch.are_deterministic_algorithms_enabled()


def test_milestones_replace_the_step_schedule(tmp_path, digits):
    _, log = run(tmp_path, digits, epochs=4, batch_size=64, lr=0.1, lr_milestones=(1, 3), lr_gamma=0.5)
    assert [entry["lr"] for entry in log] == pytest.approx([0.1, 0.05, 0.05, 0.025])


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [("precision", "fp8", "--precision"), ("lr_milestones", (3, 2), "--lr-milestones")],
)
def test_execution_settings_are_checked(field, value, flag):
    with pytest.raises(ValueError, match=rf"^{flag} must") as exc:
        TrainConfig(**{field: value})
    assert repr(value) in str(exc.value)


def test_crop_flip_is_a_padded_crop_and_maybe_a_flip_of_each_image():
    """Every output image is one of the 81 crops of its zero-padded input, flipped or not, and the draws vary."""
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = crop_flip(x, padding=4)
    assert out.shape == x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    seen = set()
    for i in range(len(x)):
        matches = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if torch.equal(
                out[i],
                padded[i, :, top : top + 8, left : left + 8].flip(-1)
                if flip
                else padded[i, :, top : top + 8, left : left + 8],
            )
        ]
        assert matches, f"image {i} is not a crop of its padded input"
        seen.add(matches[0])
    assert len({flip for *_, flip in seen}) == 2 and len({top for top, *_ in seen}) > 4


@pytest.mark.parametrize("name", ["consistency", "smoothmix", "macer", "adre"])
def test_technique_losses_train_under_bf16_autocast(tmp_path, digits, name):
    """The techniques' soft targets, attacks and Phi^-1 run under autocast and give a finite, falling loss."""
    options = {"smoothmix": {"m": 2, "steps": 2}, "macer": {"k": 4}, "adre": {"k": 4}}.get(name, {})
    loss = Host().loss(name, **options)
    _, log = run(tmp_path, Subset(digits, range(128)), epochs=3, loss=loss, precision="bf16", batch_size=32, lr=0.1)
    assert all(math.isfinite(entry["loss"]) for entry in log)
    assert log[-1]["loss"] < log[0]["loss"], [entry["loss"] for entry in log]


class ExplodingLoss:
    """A loss that turns NaN in the second epoch, as a diverging run does."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, model, x, y, noise, *, progress):
        loss = F.cross_entropy(model(noise.sample(x)), y)
        return LossOutput(loss * float("nan") if self.epoch == 1 else loss, {})


def test_a_diverging_loss_stops_training_and_keeps_the_last_finite_checkpoint(tmp_path, digits):
    with pytest.raises(TrainingDivergedError, match=r"ExplodingLoss became nan in epoch 2.*holds epoch 1"):
        run(tmp_path, digits, epochs=3, loss=ExplodingLoss(), **SCHEDULE)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 1
    assert len(read_log(tmp_path)) == 1


def test_resume_says_what_it_resumed_and_refuses_fewer_epochs_than_trained(tmp_path, digits, capsys):
    """Issue 21: a rerun was silent, and a smaller --epochs returned the later epoch's weights."""
    run(tmp_path, digits, epochs=1, **SCHEDULE)
    capsys.readouterr()
    run(tmp_path, digits, epochs=2, **SCHEDULE)
    assert "resuming after epoch 1 of 2" in capsys.readouterr().out
    run(tmp_path, digits, epochs=2, **SCHEDULE)
    assert "finished, all 2 epochs trained; nothing to do" in capsys.readouterr().out
    before = (tmp_path / CHECKPOINT).read_bytes()
    with pytest.raises(ValueError, match=r"--epochs 1: .* already holds 2 epochs.*give --epochs 2 or more"):
        run(tmp_path, digits, epochs=1, **SCHEDULE)
    assert (tmp_path / CHECKPOINT).read_bytes() == before
