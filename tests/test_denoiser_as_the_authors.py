"""train-denoiser and the denoisers against the authors' code on identical inputs (issue 30).

- one training step of each objective (``mse``, ``stability``, ``classification``) against the step of
  microsoft/denoised-smoothing ``code/train_denoiser.py``, transcribed below, on the same batch, noise and weights;
- ``--augment crop-flip`` against torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` (their
  ``code/datasets.py`` CIFAR-10 training split), and the draws train-denoiser makes with it;
- the scope of "the same DnCNN": the network's outputs equal the authors', the certified denoiser clips them;
- the noise the authors' diffusion certification adds (``q_sample`` at t*) against sigma, on their schedules.
"""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rs_plugins import Host, cli
from rs_plugins.builtin.denoisers.diffusion import timestep_for
from rs_plugins.builtin.denoisers.dncnn import DnCNNDenoiser
from rs_plugins.nets import SmallCNN
from rs_plugins.train.checkpoints import derived_seed
from rs_plugins.train.config import crop_flip
from rs_plugins.train.denoiser import DenoiserTrainConfig, DnCNN, classification_loss, train_denoiser

FAST = ["--device", "cpu", "--no-progress"]


def images(n: int = 12, size: int = 8, seed: int = 0) -> TensorDataset:
    """Images in [0.3, 0.7] (so that x + delta at sigma 0.02 stays inside [0, 1]) with labels 0..2."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(0.3 + 0.4 * torch.rand(n, 1, size, size, generator=g), torch.arange(n) % 3)


class Recording:
    """Gaussian noise that keeps the batches it is given: the images a trainer fed, in its order."""

    def __init__(self, sigma: float) -> None:
        self.inner, self.seen = Host().noise("gaussian", sigma=sigma), []

    def sample(self, x, generator=None):
        self.seen.append(x.clone())
        return self.inner.sample(x, generator=generator)


def authors_step(denoiser, classifier, objective, inputs, noise, targets, optimizer) -> None:
    """The body of the training loop of train_denoiser.py (objective ``denoising`` is our ``mse``), transcribed."""
    outputs = denoiser(inputs + noise)
    if objective != "mse":
        outputs = classifier(outputs)
    if objective == "mse":
        loss = nn.MSELoss(reduction="mean")(outputs, inputs)
    else:
        if objective == "stability":
            with torch.no_grad():
                targets = classifier(inputs).argmax(1).detach().clone()
        loss = nn.CrossEntropyLoss(reduction="mean")(outputs, targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("objective", ["mse", "stability", "classification"])
def test_one_step_of_each_objective_equals_the_authors_step(objective, tmp_path):
    """Where D(x + delta) stays in [0, 1] (our losses take it clipped), the weights after one Adam step agree."""
    data, noise = images(), Recording(0.02)
    torch.manual_seed(0)
    denoiser = DnCNN(channels=1, depth=4, width=8)
    nn.init.normal_(denoiser.layers[-1].weight, std=1e-3)  # not the identity: every layer gets a gradient
    classifier = SmallCNN(in_channels=1, num_classes=3, width=4).eval().requires_grad_(False)
    theirs, initial = copy.deepcopy(denoiser), copy.deepcopy(denoiser.state_dict())
    config = DenoiserTrainConfig(objective=objective, epochs=1, batch_size=len(data), lr=0.01)
    train_denoiser(denoiser, data, noise, config=config, checkpoint_dir=tmp_path, classifier=classifier,
                   progress=False)  # fmt: skip

    # the same batch (as the trainer ordered it, with its labels) and noise (from the generator seeded for epoch 0)
    (x,) = noise.seen
    y = data.tensors[1][[int((data.tensors[0] == image).flatten(1).all(1).nonzero()) for image in x]]
    delta = torch.randn(x.shape, generator=torch.Generator().manual_seed(derived_seed(0, 0, 1))) * 0.02  # theirs
    assert torch.equal(x + delta, noise.inner.sample(x, generator=torch.Generator().manual_seed(derived_seed(0, 0, 1))))
    with torch.no_grad():
        out = copy.deepcopy(theirs).train()(x + delta)  # a copy: this pass moves the batch-norm statistics
        assert 0 < out.min() and out.max() < 1  # so clipping does nothing in this step
    optimizer = torch.optim.Adam(theirs.parameters(), lr=0.01, weight_decay=1e-4)
    theirs.train()
    authors_step(theirs, classifier, objective, x, delta, y, optimizer)
    for (name, ours), theirs_ in zip(denoiser.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(ours, theirs_, msg=lambda m, name=name: f"{name}: {m}")
    assert not torch.equal(denoiser.layers[0].weight, initial["layers.0.weight"])  # the step did move it


def test_classification_loss_is_cross_entropy_against_the_labels_not_the_prediction():
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    denoised, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 2, 1, 0])
    logits = classifier(denoised).double()
    by_hand = (logits.logsumexp(1) - logits[torch.arange(6), y]).mean()
    assert classification_loss(classifier, denoised, y).item() == pytest.approx(by_hand.item(), rel=1e-6)
    predicted = classifier(denoised).argmax(1)
    assert not torch.equal(predicted, y)  # so that the labels, not the prediction, decide the value
    assert classification_loss(classifier, denoised, predicted).item() != pytest.approx(by_hand.item(), rel=1e-3)


def test_crop_flip_draws_as_torchvisions_random_crop_and_flip():
    """Every output is one of the 9 x 9 x 2 outputs of the authors' transforms, drawn as often (chi-square)."""
    tv = pytest.importorskip("torchvision.transforms")
    functional = pytest.importorskip("torchvision.transforms.functional")
    scipy_stats = pytest.importorskip("scipy.stats")
    torch.manual_seed(0)
    image = torch.rand(1, 32, 32)
    padded = functional.pad(image, [4])
    cells = {}
    for top in range(9):
        for left in range(9):
            crop = functional.crop(padded, top, left, 32, 32)
            cells[crop.numpy().tobytes()] = len(cells)
            cells[functional.hflip(crop).numpy().tobytes()] = len(cells)
    assert len(cells) == 162
    n = 8100
    ours = crop_flip(image.expand(n, -1, -1, -1), generator=torch.Generator().manual_seed(1))
    authors = tv.Compose([tv.RandomCrop(32, padding=4), tv.RandomHorizontalFlip()])
    torch.manual_seed(2)
    counts = torch.zeros(2, 162)
    for row, outputs in enumerate((ours, (authors(image) for _ in range(n)))):
        for out in outputs:
            counts[row, cells[out.numpy().tobytes()]] += 1  # a KeyError: not one of the authors' outputs
    assert (counts[0] > 0).all()
    assert scipy_stats.chi2_contingency(counts.numpy()).pvalue > 1e-3


def test_train_denoiser_crop_flips_each_batch_with_seeded_draws_and_resumes_exactly(tmp_path):
    """What the noise sees is crop_flip of the loader's batch with the generator seeded from (seed, epoch, 2)."""
    data, noise = images(n=8), Recording(0.1)
    config = DenoiserTrainConfig(epochs=2, batch_size=8, augment="crop-flip")
    torch.manual_seed(0)
    whole = DnCNN(channels=1, depth=3, width=4)
    start = copy.deepcopy(whole)
    train_denoiser(whole, data, noise, config=config, checkpoint_dir=tmp_path / "whole", progress=False)
    originals = data.tensors[0]
    padded = torch.nn.functional.pad(originals, (4, 4, 4, 4))
    crops = torch.stack([padded[..., t : t + 8, s : s + 8] for t in range(9) for s in range(9)], 1)
    variants = torch.cat([crops, crops.flip(-1)], 1)  # (8 images, 162 crops and flips, 1, 8, 8)
    for epoch, seen in enumerate(noise.seen):
        source = [int((variants == image).flatten(2).all(2).any(1).nonzero()) for image in seen]  # one each
        assert sorted(source) == list(range(8))  # every image once per epoch, each a crop (or flip) of itself
        expected = crop_flip(originals[source], generator=torch.Generator().manual_seed(derived_seed(0, epoch, 2)))
        assert torch.equal(seen, expected) and not torch.equal(seen, originals[source])

    resumed = copy.deepcopy(start)
    cut = DenoiserTrainConfig(epochs=1, batch_size=8, augment="crop-flip")
    train_denoiser(resumed, data, noise.inner, config=cut, checkpoint_dir=tmp_path / "cut", progress=False)
    train_denoiser(resumed, data, noise.inner, config=config, checkpoint_dir=tmp_path / "cut", progress=False)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_classification_objective_trains_from_the_cli_and_is_recorded(capsys, tmp_path):
    torch.manual_seed(0)
    torch.save(SmallCNN(width=4).state_dict(), tmp_path / "clf.pt")
    argv = ["train-denoiser", "--data", "digits", "--sigma", "0.25", "--depth", "3", "--width", "4", "--epochs", "2",
            "--batch-size", "128", "--objective", "classification", "--augment", "crop-flip", "--lr-schedule",
            "step-epoch", "--lr-step", "1", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 4}',
            "--checkpoint", tmp_path / "clf.pt", "--val-images", "20", "--checkpoint-dir", tmp_path / "c",
            *FAST]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    capsys.readouterr()
    with open(tmp_path / "c" / "train_log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    assert [float(row["lr"]) for row in log] == [1e-3, 1e-3]  # step-epoch: the first decay waits one more epoch
    assert all(float(row["loss_classification"]) > 0 for row in log) and "denoised_acc" in log[0]
    saved = torch.load(tmp_path / "c" / "denoiser.pt", weights_only=True)
    assert saved["objective"] == "classification"
    checkpoint = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    assert (checkpoint["config"]["augment"], checkpoint["config"]["lr_schedule"]) == ("crop-flip", "step-epoch")
    no_model = ["train-denoiser", "--data", "digits", "--sigma", "0.25", "--objective", "classification",
                "--checkpoint-dir", str(tmp_path / "n"), *FAST]  # fmt: skip
    assert cli.main(no_model) == 2
    assert "--objective classification needs --model: the frozen classifier" in capsys.readouterr().err


def test_the_certified_dncnn_is_the_authors_network_clipped_to_the_unit_interval(tmp_path):
    """Their checkpoint gives the network's outputs exactly; `--denoiser dncnn:` certifies them clipped to [0, 1]."""
    torch.manual_seed(1)
    net = DnCNN(channels=3, depth=5, width=8)
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    theirs = {k.replace("layers.", "module.dncnn."): v for k, v in net.state_dict().items()}
    torch.save({"epoch": 90, "arch": "cifar_dncnn", "state_dict": theirs, "optimizer": {}}, tmp_path / "c.pth.tar")
    x = torch.rand(4, 3, 8, 8) + 0.25 * torch.randn(4, 3, 8, 8)
    denoiser = DnCNNDenoiser(0.25, str(tmp_path / "c.pth.tar"))
    with torch.no_grad():
        unclipped = net.eval()(x)
        assert torch.equal(denoiser.net(x), unclipped)  # the network: identical outputs
        assert torch.equal(denoiser(x), unclipped.clamp(0, 1))  # what certify runs
    assert ((unclipped < 0) | (unclipped > 1)).any()  # so the two functions differ here


def cosine_alphas_cumprod(steps: int) -> torch.Tensor:
    """improved-diffusion's "cosine" schedule (the authors' CIFAR-10 model), in float64 as their numpy code."""

    def f(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)]
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), 0)


def linear_alphas_cumprod(steps: int) -> torch.Tensor:
    """guided-diffusion's "linear" schedule (the authors' ImageNet model): beta from 1e-4 to 0.02 at 1000 steps."""
    scale = 1000 / steps
    return torch.cumprod(1 - torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64), 0)


@pytest.mark.parametrize(
    "schedule, sigmas, low, high",
    [
        (cosine_alphas_cumprod(4000), (0.12, 0.25, 0.5, 1.0), 1e-5, 1e-3),
        (linear_alphas_cumprod(1000), (0.25, 0.5, 1.0), 2e-4, 6.4e-3),
    ],
    ids=["cifar10-cosine-4000", "imagenet-linear-1000"],
)
def test_the_authors_q_sample_noise_is_a_little_above_sigma(schedule, sigmas, low, high):
    """Their certify.py adds no noise of its own: q_sample at t* adds sigma_t* = sqrt((1 - abar)/abar)/2 in pixel
    units, 0.001-0.1 % (CIFAR-10) and 0.02-0.63 % (ImageNet) above the sigma they certify with (the docs' figures)."""
    excess = []
    for sigma in sigmas:
        t = timestep_for(schedule, sigma)
        level = float(((1 - schedule[t]) / schedule[t]).sqrt()) / 2  # q_sample's noise on x in [0, 1]
        previous = float(((1 - schedule[t - 1]) / schedule[t - 1]).sqrt()) / 2
        assert previous < sigma <= level  # t* is the first step at or above sigma, as their loop finds it
        excess.append(level / sigma - 1)
    assert low <= min(excess) and max(excess) <= high, excess
