"""SmoothAdv, SmoothMix and adversarial Consistency against plain reimplementations written here.

The attacks go through torchattacks' PGDL2; the references below are a hand-written loop of normalised-gradient
l2 PGD on -log(mean_i softmax(f(x + d_i))_y) with the draws d_i fixed, so a wrong step, ball, start, mode or
objective in the library shows up as a mismatch. A stub noise sampler returns precomputed draws, so the plugin
and the reference see the same d_i without sharing any code.
"""

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rs_plugins.builtin.consistency import ConsistencyLoss
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.builtin.smoothadv import SmoothAdvLoss
from rs_plugins.builtin.smoothmix import SmoothMixLoss
from rs_plugins.errors import MissingDependencyError
from rs_plugins.testing import check_loss, tiny_classifier
from rs_plugins.train.smoothed_pgd import (
    NO_BALL,
    SmoothedSoftClassifier,
    attack_mode,
    import_torchattacks,
    smoothadv_attack,
    smoothed_pgd,
)

TOL = dict(atol=1e-5, rtol=1e-5)


class StubNoise:
    """Always the same draws: sample(z) = z + draws, draws laid out copy-major (row i*B + b is copy i of b)."""

    norm = "l2"

    def __init__(self, deltas: torch.Tensor, sigma: float = 0.25) -> None:
        self.deltas = deltas  # (m, B, C, H, W)
        self.sigma = sigma

    def sample(self, x, *, generator=None):
        return x + self.deltas.flatten(0, 1)

    def radius(self, p_lower):
        p = torch.as_tensor(p_lower, dtype=torch.float64)
        return torch.where(p > 0.5, self.sigma * torch.special.ndtri(p), torch.zeros_like(p))


def net(seed: int = 0) -> nn.Module:
    """A small CNN without BatchNorm, so per-copy passes equal one concatenated pass in either mode."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def batch(m: int = 2, size: int = 4, seed: int = 1):
    """(x in [0, 1], labels, draws of shape (m, B, 1, 8, 8))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(size, 1, 8, 8, generator=g)
    deltas = 0.25 * torch.randn(m, size, 1, 8, 8, generator=g)
    return x, torch.arange(size) % 3, deltas


def smoothed_probs(model, x, deltas):
    """mean_i softmax(f(x + d_i)), one forward pass per draw."""
    return sum(F.softmax(model(x + d), dim=1) for d in deltas) / len(deltas)


def smoothed_nll(model, x, y, deltas):
    """Per image -log(mean_i softmax(f(x + d_i))_y)."""
    return -smoothed_probs(model, x, deltas)[torch.arange(len(y)), y].log()


def noisy_ce(model, x, y, deltas):
    """(1/m) sum_i CE(f(x + d_i), y), averaged over the batch."""
    return sum(F.cross_entropy(model(x + d), y) for d in deltas) / len(deltas)


def reference_pgd(model, x, y, deltas, *, eps, step_size, steps, clip_first=False):
    """Zero start; normalised-gradient steps on the summed smoothed NLL; then either project onto the eps ball
    and clip to [0, 1] (Consistency, SmoothMix), or clip and then project (``clip_first``: SmoothAdv's reference)."""
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(smoothed_nll(model, adv, y, deltas).sum(), adv)
        adv = adv.detach() + step_size * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        if clip_first:
            adv = adv.clamp(0, 1)
        shift = adv - x
        if eps != math.inf:
            shift = shift * (eps / shift.flatten(1).norm(dim=1)).clamp(max=1).view(-1, 1, 1, 1)
        adv = (x + shift).clamp(0, 1) if not clip_first else x + shift
    return adv.detach()


def l2(a, b):
    return (a - b).flatten(1).norm(dim=1)


def test_smoothed_soft_classifier_is_log_of_the_mean_softmax():
    """The attacked module must be log(mean_i softmax f(x + d_i)): a probability vector per row in log space."""
    model = net().eval()
    x, _, deltas = batch(m=3)
    out = SmoothedSoftClassifier(model, deltas)(x)
    torch.testing.assert_close(out, smoothed_probs(model, x, deltas).log())
    torch.testing.assert_close(out.exp().sum(1), torch.ones(len(x)))


def test_smoothadv_attack_matches_a_plain_pgd_loop_in_eval_mode():
    """SmoothAdv-PGD (step 2 eps / T, eps ball, zero start) equals the reference loop run in eval mode. The model
    has BatchNorm and is in train mode, so an attack that forgot eval mode would use batch statistics."""
    model = tiny_classifier().train()
    x, y, deltas = batch(m=2)
    eps, steps = 0.5, 3
    adv = smoothadv_attack(model, x, y, deltas, epsilon=eps, steps=steps, extra="smoothadv")
    assert model.training
    model.eval()
    expected = reference_pgd(model, x, y, deltas, eps=eps, step_size=2 * eps / steps, steps=steps, clip_first=True)
    torch.testing.assert_close(adv, expected, **TOL)
    assert not adv.requires_grad
    assert torch.all(l2(adv, x) <= eps + 1e-6) and adv.min() >= 0 and adv.max() <= 1
    assert torch.all(smoothed_nll(model, adv, y, deltas) > smoothed_nll(model, x, y, deltas))


def test_smoothadv_clips_before_projecting_and_consistency_projects_first():
    """The two orders differ where clipping is active (images near 0 and 1, as digits are). SmoothAdv takes the
    reference order (clip, then scale back into the ball), SmoothAdv + Consistency the other one, and each matches
    its own reference, not the other's. Clip-then-project ends on the ball's edge, where project-then-clip stops
    short: the deviation found when comparing with the authors' code."""
    model = net()
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()  # every pixel at 0 or 1: clipping always matters
    y, deltas = torch.arange(4) % 3, 0.25 * torch.randn(2, 4, 1, 8, 8, generator=g)
    eps, steps = 1.0, 4
    common = dict(eps=eps, step_size=2 * eps / steps, steps=steps)
    clip_first = reference_pgd(model, x, y, deltas, clip_first=True, **common)
    project_first = reference_pgd(model, x, y, deltas, clip_first=False, **common)
    assert (clip_first - project_first).abs().max() > 1e-2
    adv = smoothadv_attack(model, x, y, deltas, epsilon=eps, steps=steps, extra="smoothadv")
    torch.testing.assert_close(adv, clip_first, **TOL)
    torch.testing.assert_close(l2(adv, x), torch.full((4,), eps), **TOL)
    assert torch.all(l2(project_first, x) < eps - 1e-2)
    out = ConsistencyLoss(m=2, adversarial=True, epsilon=eps, steps=steps)(model, x, y, StubNoise(deltas), progress=0)
    torch.testing.assert_close(out.parts["adv_l2"], l2(project_first, x).mean(), **TOL)


def test_smoothed_pgd_without_a_ball_matches_the_unprojected_loop():
    """epsilon=NO_BALL is SmoothMix's unconstrained search: the same loop with no projection, only clipping."""
    model = net()
    x, y, deltas = batch(m=2)
    adv = smoothed_pgd(model, x, y, deltas, epsilon=NO_BALL, step_size=0.4, steps=3, extra="smoothmix")
    expected = reference_pgd(model, x, y, deltas, eps=math.inf, step_size=0.4, steps=3)
    torch.testing.assert_close(adv, expected, **TOL)
    # Three steps of 0.4 go further than any one step: the search really is unconstrained.
    assert torch.all(l2(adv, x) > 0.4 + 1e-3)


def flags(model):
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def mixed_state_model():
    """Parent in train mode with one submodule in eval, and one parameter frozen beforehand."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 2)))
    model.train()
    model[1].eval()
    model[0].bias.requires_grad_(False)
    return model


@pytest.mark.parametrize("parent_training", [True, False])
def test_attack_mode_freezes_and_restores_every_flag(parent_training):
    """Inside attack_mode everything is in eval mode without parameter gradients; afterwards every module's mode
    and every parameter's flag are back exactly, mixed states included, also when the body raises."""
    model = mixed_state_model()
    if not parent_training:
        model.training = False
        model[2][0].train()  # a submodule in train mode under a parent in eval mode
    before = flags(model)
    with attack_mode(model):
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
    assert flags(model) == before
    with pytest.raises(RuntimeError, match="boom"), attack_mode(model):
        raise RuntimeError("boom")
    assert flags(model) == before


def test_smoothadv_loss_is_cross_entropy_at_the_reference_adversary():
    """Without set_epoch the full epsilon is used; the loss is the mean CE over the m copies of the adversary."""
    model = net()
    x, y, deltas = batch(m=2)
    loss = SmoothAdvLoss(m=2, epsilon=0.5, steps=3, warmup=4)
    assert loss.current_epsilon() == 0.5
    out = loss(model, x, y, StubNoise(deltas), progress=0.5)
    adv = reference_pgd(model, x, y, deltas, eps=0.5, step_size=1 / 3, steps=3, clip_first=True)
    torch.testing.assert_close(out.loss, noisy_ce(model, adv, y, deltas), **TOL)
    torch.testing.assert_close(out.parts["adv_l2"], l2(adv, x).mean(), **TOL)


@pytest.mark.parametrize("epoch", [0, 1, 3, 7])
def test_smoothadv_epsilon_warms_up_linearly(epoch):
    """After set_epoch(t) the attack radius is min(eps, (t + 1) eps / W) and the adversary stays inside it."""
    eps, warmup = 0.8, 4
    expected_eps = min(eps, (epoch + 1) * eps / warmup)
    model = net()
    x, y, deltas = batch(m=2)
    loss = SmoothAdvLoss(m=2, epsilon=eps, steps=2, warmup=warmup)
    loss.set_epoch(epoch)
    assert loss.current_epsilon() == pytest.approx(expected_eps)
    out = loss(model, x, y, StubNoise(deltas), progress=0.0)
    assert out.parts["adv_l2"] <= expected_eps + 1e-6
    adv = reference_pgd(model, x, y, deltas, eps=expected_eps, step_size=expected_eps, steps=2, clip_first=True)
    torch.testing.assert_close(out.loss, noisy_ce(model, adv, y, deltas), **TOL)


def test_smoothadv_with_zero_epsilon_is_gaussian_augmentation_on_the_same_draws():
    """epsilon=0 runs no attack: the loss is the mean CE on x + d_i."""
    model = net()
    x, y, deltas = batch(m=3)
    out = SmoothAdvLoss(m=3, epsilon=0.0)(model, x, y, StubNoise(deltas), progress=0.5)
    torch.testing.assert_close(out.loss, noisy_ce(model, x, y, deltas), **TOL)
    assert out.parts["adv_l2"] == 0


def reference_smoothmix(model, x, y, deltas, *, step_size, steps, eta, mix_step, weight):
    """Spec section 5, written out: (loss, L_CE, L_mix, clean-side correctness). Draws lam from the global RNG."""
    adv = reference_pgd(model, x, y, deltas, eps=math.inf, step_size=step_size, steps=steps)
    first = reference_pgd(model, x, y, deltas, eps=math.inf, step_size=step_size, steps=mix_step)
    radius = weight * step_size * mix_step
    shift = first - x
    norms = shift.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    clean = x if mix_step == 0 else (x + shift * (radius / norms).clamp(max=1)).clamp(0, 1)

    lam = torch.rand(len(x)) / 2
    xent = noisy_ce(model, clean, y, deltas)
    p_clean = smoothed_probs(model, clean, deltas)
    lam4 = lam.view(-1, 1, 1, 1)
    mixed = (1 - lam4) * clean + lam4 * adv
    target = (1 - lam[:, None]) * p_clean + lam[:, None] / p_clean.shape[1]
    correct = (p_clean.argmax(1) == y).float()
    kls = [(target * (target.log() - F.log_softmax(model(mixed + d), dim=1))).sum(1) for d in deltas]
    mixup = sum((kl * correct).mean() for kl in kls) / len(deltas)
    return xent + eta * weight * mixup, xent, mixup, correct


def half_right_labels(model, x, deltas):
    """Labels the smoothed model gets right on the first half of the batch and wrong on the second."""
    pred = smoothed_probs(model, x, deltas).argmax(1)
    half = torch.arange(len(x)) < len(x) // 2
    return torch.where(half, pred, (pred + 1) % 3)


@pytest.mark.parametrize("mix_step, epoch", [(0, None), (0, 1), (1, None), (1, 1)])
def test_smoothmix_matches_a_reimplementation_of_the_paper(mix_step, epoch):
    """Loss, its parts and its parameter gradients equal the spec's step, for the clean input and the one-step
    adversary, with eta and the one-step radius scaled by w(t) = min(1, (t + 1) / warmup) after set_epoch(t)."""
    model = net()
    x, _, deltas = batch(m=2, size=6)
    y = half_right_labels(model, x, deltas)
    warmup = 4
    weight = 1.0 if epoch is None else min(1.0, (epoch + 1) / warmup)
    loss = SmoothMixLoss(m=2, step_size=0.25, steps=3, eta=2.0, mix_step=mix_step, warmup=warmup)
    if epoch is not None:
        loss.set_epoch(epoch)
    torch.manual_seed(5)
    out = loss(model, x, y, StubNoise(deltas), progress=0.5)
    torch.manual_seed(5)
    total, xent, mixup, correct = reference_smoothmix(
        model, x, y, deltas, step_size=0.25, steps=3, eta=2.0, mix_step=mix_step, weight=weight
    )
    assert 0 < correct.sum() < len(x)  # the indicator keeps some images and drops others
    assert mixup > 0
    torch.testing.assert_close(out.parts["xent"], xent, **TOL)
    torch.testing.assert_close(out.parts["mixup"], mixup, **TOL)
    torch.testing.assert_close(out.loss, total, **TOL)
    torch.testing.assert_close(out.parts["clean_acc"], correct.mean())
    # The mixup target p0 is not detached, so the gradients agree only if both keep it in the graph.
    params = list(model.parameters())
    for got, expected in zip(torch.autograd.grad(out.loss, params), torch.autograd.grad(total, params)):
        torch.testing.assert_close(got, expected, **TOL)


def test_smoothmix_mixup_counts_only_correct_clean_predictions():
    """A model wrong on every image contributes no mixup term: the loss is its clean-side cross-entropy."""
    model = net()
    x, _, deltas = batch(m=2)
    y = (smoothed_probs(model, x, deltas).argmax(1) + 1) % 3
    out = SmoothMixLoss(m=2, step_size=0.5, steps=2, eta=5.0)(model, x, y, StubNoise(deltas), progress=0.5)
    assert out.parts["mixup"] == 0 and out.parts["clean_acc"] == 0
    torch.testing.assert_close(out.loss, noisy_ce(model, x, y, deltas), **TOL)


def test_smoothmix_with_zero_eta_is_the_clean_side_cross_entropy():
    """eta=0 switches the mixup term off even where it is non-zero."""
    model = net()
    x, _, deltas = batch(m=2)
    y = half_right_labels(model, x, deltas)
    out = SmoothMixLoss(m=2, step_size=0.5, steps=2, eta=0.0)(model, x, y, StubNoise(deltas), progress=0.5)
    assert out.parts["mixup"] > 0
    torch.testing.assert_close(out.loss, noisy_ce(model, x, y, deltas), **TOL)


def test_adversarial_consistency_takes_the_loss_at_the_smoothadv_adversary():
    """SmoothAdv + Consistency: the cross-entropy part is measured at the SmoothAdv-PGD adversary of the draws."""
    model = net()
    x, y, deltas = batch(m=2)
    loss = ConsistencyLoss(m=2, adversarial=True, epsilon=0.5, steps=3)
    out = loss(model, x, y, StubNoise(deltas), progress=0.5)
    adv = reference_pgd(model, x, y, deltas, eps=0.5, step_size=1 / 3, steps=3)
    torch.testing.assert_close(out.parts["xent"], noisy_ce(model, adv, y, deltas), **TOL)
    torch.testing.assert_close(out.parts["adv_l2"], l2(adv, x).mean(), **TOL)
    assert out.parts["xent"] > noisy_ce(model, x, y, deltas)  # not the loss at the clean input


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: SmoothMixLoss(mix_step=4, steps=4), "mix_step"),
        (lambda: SmoothMixLoss(max_norm=1.0, mix_step=1), "max_norm"),
        (lambda: SmoothAdvLoss(steps=0), "steps"),
        (lambda: SmoothAdvLoss(epsilon=-0.5), "epsilon"),
        (lambda: ConsistencyLoss(adversarial=True, epsilon=-0.5), "epsilon"),
    ],
)
def test_bad_options_are_rejected_by_name(build, match):
    """Settings the losses cannot honour fail at construction, naming the option."""
    with pytest.raises(ValueError, match=match):
        build()


def test_missing_torchattacks_names_the_pip_extra(monkeypatch):
    """Without torchattacks each adversarial loss says which extra installs it; plain Consistency needs nothing."""
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # makes `import torchattacks` fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'rs-plugins\[smoothmix\]'"):
        import_torchattacks("smoothmix")
    with pytest.raises(MissingDependencyError, match=r"pip install 'rs-plugins\[smoothmix\]'"):
        SmoothMixLoss()
    with pytest.raises(MissingDependencyError, match=r"pip install 'rs-plugins\[smoothadv\]'"):
        ConsistencyLoss(adversarial=True)
    ConsistencyLoss()
    x, y, deltas = batch(m=2)
    with pytest.raises(MissingDependencyError, match=r"pip install 'rs-plugins\[smoothadv\]'"):
        SmoothAdvLoss(m=2, steps=2)(net(), x, y, StubNoise(deltas), progress=0.5)


ADVERSARIAL_LOSSES = {
    "smoothadv": lambda: SmoothAdvLoss(m=2, epsilon=0.5, steps=2),
    "smoothmix_0": lambda: SmoothMixLoss(m=2, step_size=0.5, steps=2, mix_step=0),
    "smoothmix_1": lambda: SmoothMixLoss(m=2, step_size=0.5, steps=2, mix_step=1),
    "consistency_adv": lambda: ConsistencyLoss(m=2, adversarial=True, epsilon=0.5, steps=2),
}


@pytest.mark.parametrize("name", ADVERSARIAL_LOSSES)
def test_losses_pass_the_contract_check_and_keep_mixed_flags(name):
    """check_loss: finite scalar, gradients reach every parameter, train/eval mode and flags survive. Then a model
    in a mixed state (a submodule in eval, a frozen parameter) must come back in exactly that state."""
    loss = ADVERSARIAL_LOSSES[name]()
    check_loss(loss, GaussianNoise(0.25))
    model = tiny_classifier()
    model.train()
    model[1].eval()
    model[0].bias.requires_grad_(False)
    before = flags(model)
    loss(model, torch.rand(4, 1, 8, 8), torch.arange(4) % 3, GaussianNoise(0.25), progress=0.5)
    assert flags(model) == before


def test_chunks_follow_m_unless_the_batch_is_not_split():
    """The runner takes m optimiser steps per loader batch (the reference code's convention) unless told not to."""
    assert SmoothAdvLoss(m=4).chunks == 4
    assert SmoothMixLoss(m=2).chunks == 2
    assert ConsistencyLoss(m=3, adversarial=True).chunks == 3
    assert SmoothAdvLoss(m=4, split_batch=False).chunks == 1
    assert SmoothMixLoss(m=2, split_batch=False).chunks == 1
