"""CAT-RS (Jeong, Kim & Shin, AAAI 2023) against a transcription of the authors' code, and its p_b file.

``authors_attack`` and ``authors_step`` below transcribe ``KL_PGD.attack`` and the inner loop of ``train`` in
alinlab/smoothing-catrs ``code/train_catrs.py`` (one chunk of M noises), run in float64 on the same draws and the
same RNG state (the budget is the only random draw of either), so a wrong sort, mask, step, projection,
re-standardisation or KL shows up as a mismatch beyond 1e-9.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.distributions.binomial import Binomial
from torch.utils.data import TensorDataset

from rs_plugins.builtin.catrs import CatrsLoss, budget, low_confidence_loss, noise_adversary, restandardise
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.confidence import read_confidence_targets
from rs_plugins.certify.distributed import World, shard
from rs_plugins.certify.runner import confidence_dataset
from rs_plugins.certify.sharding import partial_path
from rs_plugins.cli import main
from rs_plugins.errors import PluginBuildError, ResultsFileError
from rs_plugins.host import Host
from rs_plugins.nets import SmallCNN
from rs_plugins.results.files import CONFIDENCE_COLUMNS, RECORD_KEYS, ResultsFile, read_confidence
from rs_plugins.train.config import TrainConfig
from rs_plugins.train.held_out import hold_out
from rs_plugins.train.loop import train
from rs_plugins.types import DataRequest, LossOutput

M, B, K = 4, 12, 3


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


class StubNoise:
    """Always the same draws: sample(z) = z + draws (m, B, ...) laid out copy-major."""

    norm = "l2"

    def __init__(self, deltas, sigma=0.25):
        self.deltas, self.sigma = deltas, sigma

    def sample(self, x, *, generator=None):
        return x + self.deltas.flatten(0, 1)


def net(seed=0):
    """A small CNN without BatchNorm or dropout, so its mode changes nothing."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, K))


def inputs(model, seed=1):
    """(x in [0, 1], labels right for half the images, p_b, draws (M, B, 1, 8, 8))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 1, 8, 8, generator=g)
    with torch.no_grad():
        clean = model(x).argmax(1)
    y = torch.where(torch.arange(B) < B // 2, clean, (clean + 1) % K)
    p_b = torch.softmax(3 * torch.randn(B, K, generator=g), 1)
    p_b[0] = torch.tensor([1.0, 0.0, 0.0])  # a p_b with zeros, as vote counts give: 0 log 0 = 0
    return x, y, p_b, 0.1 * torch.randn(M, B, 1, 8, 8, generator=g)


def requires_grad_(model, flag):
    for p in model.parameters():
        p.requires_grad_(flag)


def authors_attack(model, inputs, labels, noises, max_norm, steps):
    """KL_PGD.attack of train_catrs.py (random_start unused there), transcribed."""
    m = len(noises)
    inputs_r = inputs.repeat(m, 1, 1, 1)
    noise0 = torch.cat(noises, dim=0)
    noise = noise0.detach()
    batch_size = inputs_r.size(0)
    mu0 = noise0.view(batch_size, -1).mean(1).view(-1, 1, 1, 1)
    sigma0 = (noise0**2).view(batch_size, -1).mean(1).sqrt().view(-1, 1, 1, 1)
    alpha = max_norm / steps * 2
    for _ in range(steps):
        noise.requires_grad_()
        logits_r = model(inputs_r + noise)
        logits_chunk = torch.chunk(logits_r, m, dim=0)
        loss_kls = [F.kl_div(F.log_softmax(lg, dim=1), labels, reduction="none").sum(1) for lg in logits_chunk]
        loss = (sum(loss_kls) / m).sum()
        grad = torch.autograd.grad(loss, [noise])[0]
        grad_norm = torch.norm(grad.reshape(grad.size(0), -1), dim=1).view(-1, 1, 1, 1)
        grad = grad / (grad_norm + 1e-8)
        noise = noise + alpha * grad
        eta = noise - noise0
        eta = eta.renorm(p=2, dim=0, maxnorm=max_norm)
        noise = noise0 + eta
        mu = noise.view(batch_size, -1).mean(1).view(-1, 1, 1, 1)
        sigma = (noise**2).view(inputs_r.size(0), -1).mean(1).sqrt().view(-1, 1, 1, 1)
        noise = (noise - mu) / sigma
        noise = mu0 + noise * sigma0
        noise = noise.detach()
    return torch.chunk(noise, m, dim=0)


def authors_step(model, inputs, targets, pb, noises, *, lbd, max_norm, steps, confidence_mask):
    """One chunk of train() in train_catrs.py, up to the loss, transcribed."""
    m = len(noises)
    _tril = torch.ones(m + 1, m).tril(-1)
    logits0_c = model(torch.cat([inputs + noise0 for noise0 in noises], dim=0))
    logits0_chunk = torch.chunk(logits0_c, m, dim=0)
    n_classes = logits0_c.size(1)
    t_sm = sum(F.one_hot(torch.argmax(logit, dim=1), n_classes) for logit in logits0_chunk) / m
    requires_grad_(model, False)
    model.eval()
    noises = authors_attack(model, inputs, pb, list(noises), max_norm, steps)
    model.train()
    requires_grad_(model, True)
    logits_c = model(torch.cat([inputs + noise for noise in noises], dim=0))
    loss_xent = [F.cross_entropy(logit, targets, reduction="none").view(-1, 1) for logit in logits0_chunk]
    loss_xent, _ = torch.cat(loss_xent, dim=1).sort()
    w = -F.nll_loss(pb if confidence_mask else t_sm, targets, reduction="none")
    accept = Binomial(m, w).sample().long().clamp(min=1)
    mask_fa = accept == m
    loss_xent = (loss_xent * _tril[accept]).mean(1)
    logits_chunk = torch.chunk(logits_c, m, dim=0)
    loss_kl = [
        F.kl_div(F.log_softmax(logit, dim=1), pb, reduction="none").sum(1, keepdim=True) for logit in logits_chunk
    ]
    loss_klw, _ = torch.cat(loss_kl, dim=1).max(1)
    return (loss_xent + lbd * loss_klw * mask_fa).mean()


@pytest.mark.parametrize("steps, epsilon", [(1, 1.0), (4, 1.0), (4, 0.05)])
def test_noise_adversary_matches_the_authors_kl_pgd(float64, steps, epsilon):
    """The same moved draws as KL_PGD.attack, including the projection and the re-standardisation."""
    model = net()
    x, _, p_b, deltas = inputs(model)
    ours = noise_adversary(model, x, p_b, deltas, epsilon, steps)
    requires_grad_(model, False)
    theirs = torch.stack(authors_attack(model.eval(), x, p_b, list(deltas), epsilon, steps))
    assert not torch.equal(ours, deltas)
    torch.testing.assert_close(ours, theirs, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("confidence_mask", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_and_gradient_match_the_authors_training_step(float64, confidence_mask, seed):
    """Loss and parameter gradients equal the transcription's on the same draws and budget draw."""
    model = net(seed)
    x, y, p_b, deltas = inputs(model, seed + 1)
    loss = CatrsLoss("p_b.tsv", m=M, epsilon=1.0, steps=2, lbd=0.5, confidence_mask=confidence_mask)
    torch.manual_seed(seed)
    out = loss(model, x, y, StubNoise(deltas), progress=0.0, targets={"p_b": p_b})
    ours = torch.autograd.grad(out.loss, list(model.parameters()))
    torch.manual_seed(seed)
    reference = authors_step(model, x, y, p_b, deltas, lbd=0.5, max_norm=1.0, steps=2, confidence_mask=confidence_mask)
    theirs = torch.autograd.grad(reference, list(model.parameters()))
    assert 0 < float(out.parts["accepted"]) < 1  # both branches of 1[K = M] are exercised
    torch.testing.assert_close(out.loss, reference, atol=1e-9, rtol=1e-9)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_low_confidence_loss_is_the_sum_of_the_k_smallest_over_m(float64):
    """Against the authors' lower-triangular mask, for every budget k = 1..M."""
    ce = torch.rand(5, M, generator=torch.Generator().manual_seed(0))
    tril = torch.ones(M + 1, M).tril(-1)
    for k in range(1, M + 1):
        ks = torch.full((5,), k)
        expected = (ce.sort(1).values * tril[ks]).mean(1)
        torch.testing.assert_close(low_confidence_loss(ce, ks), expected, atol=1e-12, rtol=0)
        torch.testing.assert_close(low_confidence_loss(ce, ks), ce.sort(1).values[:, :k].sum(1) / M)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.75, 1.0])
def test_budget_is_binomial_clamped_to_at_least_one(p):
    """K ~ Binomial(M, p) with the mass at 0 moved to 1: a chi-square test on 20 000 draws (level 1e-4)."""
    torch.manual_seed(0)
    draws = budget(torch.full((20_000,), p), M)
    pmf = stats.binom.pmf(range(M + 1), M, p)
    pmf[1] += pmf[0]
    observed = torch.bincount(draws, minlength=M + 1).numpy()
    assert observed[0] == 0 and draws.dtype == torch.int64
    support = pmf[1:] > 0
    if support.sum() == 1:  # p = 0 or 1: a point mass
        assert observed[1:][support][0] == len(draws)
        return
    result = stats.chisquare(observed[1:][support], 20_000 * pmf[1:][support])
    assert result.pvalue > 1e-4


def test_budget_chi_square_detects_an_unclamped_binomial():
    """The test above can fail: unclamped Binomial draws put mass at 0 that the clamped law has not."""
    torch.manual_seed(0)
    draws = Binomial(M, torch.full((20_000,), 0.3)).sample().long()
    assert torch.bincount(draws, minlength=M + 1)[0] > 0


def test_restandardise_restores_the_mean_and_scales_by_the_rms_ratio(float64):
    """The authors' re-standardisation: mean(ref) exactly, spread (d - mean d) scaled by rms(ref) / rms(d) (the
    RMS, not the standard deviation, so the RMS comes back exactly only for a zero-mean d)."""
    g = torch.Generator().manual_seed(0)
    reference = 0.25 * torch.randn(6, 1, 8, 8, generator=g)
    moved = reference + torch.randn(6, 1, 8, 8, generator=g) + 0.3
    out = restandardise(moved, reference)

    def rms(t):
        return t.flatten(1).pow(2).mean(1).sqrt()

    torch.testing.assert_close(out.flatten(1).mean(1), reference.flatten(1).mean(1))
    centred = moved - moved.flatten(1).mean(1).view(-1, 1, 1, 1)
    spread = out - reference.flatten(1).mean(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(spread, centred * (rms(reference) / rms(moved)).view(-1, 1, 1, 1))
    torch.testing.assert_close(rms(restandardise(centred, reference - reference.mean((1, 2, 3), keepdim=True))),
                               rms(reference - reference.mean((1, 2, 3), keepdim=True)))  # fmt: skip
    torch.testing.assert_close(restandardise(reference, reference), reference)


def test_lambda_by_sigma_and_the_doubled_epsilon(monkeypatch):
    """lbd defaults to 0.5 / 1.0 / 2.0 at sigma 0.25 / 0.5 / 1.0; double_epsilon_at doubles eps from that epoch."""
    loss = CatrsLoss("p.tsv")
    assert [loss.weight(s) for s in (0.25, 0.5, 1.0)] == [0.5, 1.0, 2.0]
    assert CatrsLoss("p.tsv", lbd=3.0).weight(0.25) == 3.0
    with pytest.raises(ValueError, match="lbd has a default only"):
        loss.weight(0.3)
    seen = []
    monkeypatch.setattr("rs_plugins.builtin.catrs.noise_adversary", lambda m, x, p, d, eps, t: seen.append(eps) or d)
    loss = CatrsLoss("p.tsv", m=2, epsilon=0.5, double_epsilon_at=3)
    model, x, y = net(), torch.rand(4, 1, 8, 8), torch.arange(4) % K
    p_b = torch.full((4, K), 1 / K)
    for epoch in (0, 2, 3, 9):
        loss.set_epoch(epoch)
        loss(model, x, y, GaussianNoise(0.25), progress=0.0, targets={"p_b": p_b})
    assert seen == [0.5, 0.5, 1.0, 1.0]


def test_options_and_defaults():
    """The README's CIFAR-10 defaults; bad options are named."""
    loss = Host().loss("catrs", confidence="p.tsv")
    assert (loss.m, loss.epsilon, loss.steps, loss.chunks, loss.confidence_mask) == (4, 1.0, 4, 4, False)
    assert "2212.09000" in Host().component("loss", "catrs").spec.reference
    for options, words in [({}, "confidence must be"), ({"m": 0}, "m must"), ({"steps": 0}, "steps must")]:
        with pytest.raises((ValueError, PluginBuildError), match=words):
            Host().loss("catrs", **({"confidence": "p.tsv"} | options if options else {}))
    with pytest.raises(ValueError, match="needs p_b"):
        loss(net(), torch.rand(4, 1, 8, 8), torch.arange(4) % K, GaussianNoise(0.25), progress=0.0)


# --- the runner's per-example targets ---------------------------------------------------------------------


class Recording:
    """A loss that asks for targets made from the index and records what each call gets."""

    chunks = 2

    def __init__(self):
        self.calls = []

    def example_targets(self, dataset, num_classes):
        n = len(dataset)
        return {"code": torch.arange(n) * 10.0, "row": torch.arange(n)[:, None].repeat(1, num_classes)}

    def __call__(self, model, x, y, noise, *, progress, targets):
        self.calls.append((torch.round(x[:, 0, 0, 0] * 100).long(), targets))
        return LossOutput(F.cross_entropy(model(x), y))


def indexed_data(n=40):
    """Image i is filled with i / 100, so a loss can tell which index it was given."""
    x = (torch.arange(n, dtype=torch.float32) / 100).view(n, 1, 1, 1).expand(n, 1, 8, 8).clone()
    return TensorDataset(x, torch.arange(n) % K)


@pytest.mark.parametrize("subset", [False, True])
def test_runner_delivers_each_images_targets_by_data_set_index(tmp_path, subset):
    """Every chunk's targets are the rows of its own images, also under a Subset (--val-split)."""
    data = indexed_data()
    train_data = hold_out(data, 0.25, 0)[0] if subset else data
    loss = Recording()
    config = TrainConfig(epochs=2, batch_size=8, lr=0.01)
    train(net(), train_data, loss, GaussianNoise(0.25), config=config, checkpoint_dir=tmp_path, progress=False)
    seen = torch.cat([index for index, _ in loss.calls])
    assert len(loss.calls) == 2 * 2 * math.ceil(len(train_data) / 8) and len(seen) == 2 * len(train_data)
    for index, targets in loss.calls:
        assert torch.equal(targets["code"], index * 10.0)
        assert torch.equal(targets["row"], index[:, None].repeat(1, K))


def test_a_loss_without_targets_gets_no_targets_keyword(tmp_path):
    """Losses that ask for nothing are called exactly as before (no ``targets`` keyword)."""
    calls = []

    def plain(model, x, y, noise, *, progress):
        calls.append(len(x))
        return LossOutput(F.cross_entropy(model(x), y))

    config = TrainConfig(epochs=1, batch_size=8)
    train(net(), indexed_data(), plain, GaussianNoise(0.25), config=config, checkpoint_dir=tmp_path, progress=False)
    assert sum(calls) == 40


def test_runner_refuses_targets_of_the_wrong_length(tmp_path):
    loss = Recording()
    loss.example_targets = lambda dataset, k: {"code": torch.zeros(len(dataset) - 1)}
    with pytest.raises(PluginBuildError, match="'code' has shape"):
        config = TrainConfig(epochs=1, batch_size=8)
        train(net(), indexed_data(), loss, GaussianNoise(0.25), config=config, checkpoint_dir=tmp_path, progress=False)


# --- predict-confidence and the p_b file ---------------------------------------------------------------------


def confidence_cli(tmp_path, data, out, *extra):
    args = ["predict-confidence", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"num_classes": 3}',
            "--factory-weights"]  # an untrained SmallCNN, seeded by the caller
    args += ["--data", str(data), "--sigma", "0.25", "--n", "40", "--batch-size", "80", "--out", str(out)]
    return main([*args, "--device", "cpu", "--no-progress", *extra])


@pytest.fixture
def votes(tmp_path):
    """A finished predict-confidence file on 30 images (crop-flip), and the data it was made on."""
    g = torch.Generator().manual_seed(0)
    data = tmp_path / "train.pt"
    torch.save({"x": torch.rand(30, 1, 8, 8, generator=g), "y": torch.arange(30) % 3}, data)
    out = tmp_path / "votes.tsv"
    torch.manual_seed(0)  # SmallCNN's initial weights
    assert confidence_cli(tmp_path, data, out, "--augment", "crop-flip") == 0
    return data, out


def test_predict_confidence_resumes_to_the_same_votes(tmp_path, votes):
    """A run cut after 7 images and rerun writes the rows an uninterrupted run wrote."""
    data, out = votes
    full = read_confidence(out)
    assert len(full) == 30 and all(sum(c for _, c in row.counts) == 40 for row in full)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:8]) + lines[8][:5])  # 7 rows and a half-written one
    torch.manual_seed(0)
    assert confidence_cli(tmp_path, data, out, "--augment", "crop-flip") == 0
    assert [(r.idx, r.label, r.counts) for r in read_confidence(out)] == [(r.idx, r.label, r.counts) for r in full]
    torch.manual_seed(0)
    assert confidence_cli(tmp_path, data, out) == 2  # other settings (no augmentation): refused, not mixed


def test_p_b_is_votes_over_n_and_refused_for_other_data(tmp_path, votes):
    data, out = votes
    dataset = Host().load_data(DataRequest(str(data), "train"))
    p_b = read_confidence_targets(out, dataset, 3, "confidence")
    rows = read_confidence(out)
    assert p_b.shape == (30, 3) and torch.allclose(p_b.sum(1), torch.ones(30))
    assert all(float(p_b[r.idx, c]) == count / 40 for r in rows for c, count in r.counts)
    shuffled = TensorDataset(dataset.tensors[0], dataset.tensors[1].roll(1))
    with pytest.raises(ValueError, match="made on other data"):
        read_confidence_targets(out, shuffled, 3, "confidence")
    with pytest.raises(ValueError, match="made on other data"):
        read_confidence_targets(out, TensorDataset(*(t[:29] for t in dataset.tensors)), 3, "confidence")
    with pytest.raises(ValueError, match="over 3 classes, but the model has 10"):
        read_confidence_targets(out, dataset, 10, "confidence")
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:11]))
    with pytest.raises(ValueError, match="covers 10 of 30 images"):
        read_confidence_targets(out, dataset, 3, "confidence")
    out.with_name(out.name + ".json").unlink()
    with pytest.raises(ResultsFileError, match="no settings file"):
        read_confidence_targets(out, dataset, 3, "confidence")
    with pytest.raises(FileNotFoundError, match="predict-confidence"):
        read_confidence_targets(tmp_path / "none.tsv", dataset, 3, "confidence")


def test_train_catrs_end_to_end_and_a_refused_file(tmp_path, votes):
    """`train --loss catrs` reads the file; on other data (--split is ignored, so another file) it stops first."""
    data, out = votes
    args = ["train", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"num_classes": 3}', "--sigma", "0.25"]
    args += ["--loss", "catrs", "--loss-option", f"confidence={out}", "--loss-option", "m=2"]
    args += ["--loss-option", "steps=1"]
    args += ["--epochs", "1", "--batch-size", "10", "--device", "cpu", "--no-progress", "--val-images", "0"]
    assert main([*args, "--data", str(data), "--checkpoint-dir", str(tmp_path / "ok")]) == 0
    other = tmp_path / "other.pt"
    torch.save({"x": torch.rand(30, 1, 8, 8), "y": (torch.arange(30) + 1) % 3}, other)
    assert main([*args, "--data", str(other), "--checkpoint-dir", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused" / "checkpoint.pt").exists()


def test_predict_confidence_finishes_and_merges_what_a_killed_sharded_run_left(tmp_path, votes):
    """Partial files of a 3-process run killed part-way (written with the reference's settings) are finished by a
    one-process rerun and merged into the same rows as the uninterrupted run's."""
    data, reference = votes
    out = tmp_path / "sharded.tsv"
    stored = json.loads(reference.with_name(reference.name + ".json").read_text())
    settings = {k: v for k, v in stored.items() if k not in RECORD_KEYS}
    dataset = Host().load_data(DataRequest(str(data), "train"))
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3)
    for rank, count in ((0, 3), (1, 5), (2, 0)):
        share = shard(list(range(30)), World(rank, 3))[:count]
        with ResultsFile(partial_path(out, World(rank, 3)), CONFIDENCE_COLUMNS, settings) as results:
            options = dict(indices=share, n=40, batch_size=80, augment="crop-flip", progress=False)
            confidence_dataset(model, dataset, GaussianNoise(0.25), results, **options)
    torch.manual_seed(0)
    assert confidence_cli(tmp_path, data, out, "--augment", "crop-flip") == 0
    assert [(r.idx, r.counts) for r in read_confidence(out)] == [(r.idx, r.counts) for r in read_confidence(reference)]
    assert not list(tmp_path.glob("sharded.tsv.part-*"))
