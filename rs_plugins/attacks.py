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
from torch import nn

from .errors import MissingDependencyError
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


def import_torchattacks(extra: str):
    """torchattacks, or a MissingDependencyError with the pip command that installs it."""
    try:
        import torchattacks
    except ImportError:
        msg = "this loss attacks the smoothed classifier with torchattacks, which is not installed: "
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
) -> Tensor:
    """``steps`` of normalised-gradient l2 PGD on the soft smoothed classifier from a zero start.

    Each step moves ``step_size`` along the per-image normalised gradient, projects onto the l2 ball of
    radius ``epsilon`` around ``x`` (``math.inf``: no ball) and clips to [0, 1]: torchattacks' PGDL2 with
    ``random_start=False``, which is the SmoothAdv-PGD of Salman et al. (2019) as the Jeong et al. code runs it.
    Runs in eval mode without parameter gradients; returns a detached tensor like ``x``.
    """
    if steps == 0 or epsilon == 0:
        return x.detach().clone()
    torchattacks = import_torchattacks(extra)
    with attack_mode(model):
        attack = torchattacks.PGDL2(
            SmoothedSoftClassifier(model, deltas.detach()).eval(),  # eval: torchattacks then restores nothing
            eps=epsilon,
            alpha=step_size,
            steps=steps,
            random_start=False,
        )
        attack.set_device(x.device)
        with torch.enable_grad():
            # torchattacks reshapes with .view, which a channels_last batch does not allow
            adv = attack(x.detach().contiguous(), y)
    return adv.detach()


NO_BALL = math.inf
"""``epsilon`` for an unconstrained search (SmoothMix's default ``maxnorm=None``)."""


def smoothadv_attack(
    model: nn.Module, x: Tensor, y: Tensor, deltas: Tensor, *, epsilon: float, steps: int, extra: str
) -> Tensor:
    """SmoothAdv-PGD (Salman et al. 2019): ``steps`` steps of size 2*epsilon/steps inside the epsilon ball."""
    return smoothed_pgd(model, x, y, deltas, epsilon=epsilon, step_size=2 * epsilon / steps, steps=steps, extra=extra)


def smoothadv_input(
    model: nn.Module, x: Tensor, y: Tensor, deltas: Tensor, *, epsilon: float, steps: int, extra: str
) -> tuple[Tensor, Tensor]:
    """The SmoothAdv-PGD adversary and its mean l2 distance from ``x`` (detached, logged as ``adv_l2``)."""
    adv = smoothadv_attack(model, x, y, deltas, epsilon=epsilon, steps=steps, extra=extra)
    return adv, (adv - x).flatten(1).norm(dim=1).mean().detach()
