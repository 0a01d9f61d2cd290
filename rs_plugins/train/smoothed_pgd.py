"""Attacks on the smoothed classifier during training, driven through torchattacks.

The inner maximisation of SmoothAdv (Salman et al. 2019) and SmoothMix (Jeong et al. 2021) is l2 PGD on the
*soft* smoothed classifier with the noise draws held fixed. ``SmoothedSoftClassifier`` is that classifier as
an ``nn.Module`` returning log(mean_i softmax f(x + d_i)), so torchattacks' cross-entropy on its output is
exactly the papers' objective -log((1/m) sum_i F(x + d_i)_y).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingDependencyError
from .losses import noisy_logits, soft_smoothed

if TYPE_CHECKING:
    from collections.abc import Iterator

    from torch import Tensor


class SmoothedSoftClassifier(nn.Module):
    """log((1/m) sum_i softmax(f(x + d_i))) for fixed draws ``deltas`` of shape (m, B, C, H, W).

    The log is clamped at 1e-20 as in the papers' code, so a class the model rules out stays finite.
    """

    def __init__(self, model: nn.Module, deltas: Tensor) -> None:
        super().__init__()
        self.model = model
        self.deltas = deltas

    def forward(self, x: Tensor) -> Tensor:
        return soft_smoothed(noisy_logits(self.model, x, self.deltas)).clamp(min=1e-20).log()


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the attack, as in the papers; every module's mode and every
    parameter's requires_grad flag are restored afterwards exactly as they were."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    model.eval()
    for param, _ in flags:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, flag in flags:
            param.requires_grad_(flag)


class EOTSoftClassifier(SmoothedSoftClassifier):
    """``SmoothedSoftClassifier`` for attacks that may query part of the batch.

    On the batch the draws ``deltas`` (m, B, C, H, W) were made for, they are used as they are: fixed draws, as in
    SmoothAdv-PGD. An attack that queries another number of images (APGD restarting on the points it has not yet
    broken) gets m fresh draws of ``noise`` per image and call instead, from the global RNG: the expectation over
    transformation that APGD's ``eot_iter`` assumes.
    """

    def __init__(self, model: nn.Module, deltas: Tensor, noise) -> None:
        super().__init__(model, deltas)
        self.noise = noise

    def forward(self, x: Tensor) -> Tensor:
        if x.shape == self.deltas.shape[1:]:
            return super().forward(x)
        zeros = torch.zeros((len(self.deltas) * len(x), *x.shape[1:]), device=x.device, dtype=x.dtype)
        fresh = self.noise.sample(zeros).view(len(self.deltas), *x.shape)
        return soft_smoothed(noisy_logits(self.model, x, fresh)).clamp(min=1e-20).log()


def import_torchattacks(extra: str, who: str = "this loss attacks the smoothed classifier"):
    """torchattacks, or a MissingDependencyError with the pip command that installs it."""
    try:
        import torchattacks
    except ImportError:
        msg = f"{who} with torchattacks, which is not installed: "
        msg += f"pip install 'rs-plugins[{extra}]'"
        raise MissingDependencyError(msg) from None
    return torchattacks


def smoothed_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    deltas: Tensor,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    extra: str,
    clip_first: bool = False,
) -> Tensor:
    """``steps`` of normalised-gradient l2 PGD on the soft smoothed classifier from a zero start.

    Each step moves ``step_size`` along the per-image normalised gradient and then keeps the point inside the
    l2 ball of radius ``epsilon`` around ``x`` (``math.inf``: no ball) and inside [0, 1], in one of two orders:

    - ``clip_first=False``: project onto the ball, then clip: torchattacks' PGDL2 with ``random_start=False``,
      the order of SmoothAdv + Consistency (``train_consistency.py``) and of SmoothMix.
    - ``clip_first=True``: clip x + delta to [0, 1], then scale delta down to length <= epsilon, the order of
      SmoothAdv's ``PGD_L2`` in Salman et al.'s ``attacks.py`` and in the Jeong et al. repos' SmoothAdv baseline.
      torchattacks has no such option, so this order is a short loop of its own (``_clip_then_project``).

    Both orders end inside the ball and inside [0, 1]; they give different points only where clipping is active.
    Runs in eval mode without parameter gradients; returns a detached tensor like ``x``.
    """
    if steps == 0 or epsilon == 0:
        return x.detach().clone()
    torchattacks = import_torchattacks(extra)
    with attack_mode(model):
        target = SmoothedSoftClassifier(model, deltas.detach()).eval()  # eval: torchattacks then restores nothing
        with torch.enable_grad():
            # torchattacks reshapes with .view, which a channels_last batch does not allow
            x = x.detach().contiguous()
            if clip_first:
                adv = _clip_then_project(target, x, y, epsilon=epsilon, step_size=step_size, steps=steps)
            else:
                attack = torchattacks.PGDL2(target, eps=epsilon, alpha=step_size, steps=steps, random_start=False)
                attack.set_device(x.device)
                adv = attack(x, y)
    return adv.detach()


def _clip_then_project(
    target: nn.Module, x: Tensor, y: Tensor, *, epsilon: float, step_size: float, steps: int
) -> Tensor:
    """PGDL2 steps that clip to [0, 1] before the projection; ``target`` returns log-probabilities.

    The gradient norm is guarded with 1e-10 as in torchattacks, and the projection is ``torch.renorm``, the
    reference's own call.
    """
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.nll_loss(target(adv), y), adv)
        norms = grad.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
        adv = (adv.detach() + step_size * grad / (norms + 1e-10)).clamp(0, 1)
        if epsilon != math.inf:
            adv = x + (adv - x).renorm(p=2, dim=0, maxnorm=epsilon)
    return adv


NO_BALL = math.inf
"""``epsilon`` for an unconstrained search (SmoothMix's default ``maxnorm=None``)."""


def smoothadv_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    deltas: Tensor,
    *,
    epsilon: float,
    steps: int,
    extra: str,
    clip_first: bool = True,
) -> Tensor:
    """SmoothAdv-PGD (Salman et al. 2019): ``steps`` steps of size 2*epsilon/steps inside the epsilon ball.

    ``clip_first=True`` (default) is the reference code's order (clip, then project); SmoothAdv + Consistency
    passes False, the order of ``train_consistency.py``. See ``smoothed_pgd``.
    """
    step_size = 2 * epsilon / steps
    return smoothed_pgd(
        model, x, y, deltas, epsilon=epsilon, step_size=step_size, steps=steps, extra=extra, clip_first=clip_first
    )


def smoothadv_input(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    deltas: Tensor,
    *,
    epsilon: float,
    steps: int,
    extra: str,
    clip_first: bool = True,
) -> tuple[Tensor, Tensor]:
    """The SmoothAdv-PGD adversary and its mean l2 distance from ``x`` (detached, logged as ``adv_l2``)."""
    adv = smoothadv_attack(model, x, y, deltas, epsilon=epsilon, steps=steps, extra=extra, clip_first=clip_first)
    return adv, (adv - x).flatten(1).norm(dim=1).mean().detach()
