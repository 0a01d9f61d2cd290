"""SmoothAdv: adversarial training of the smoothed classifier, after Salman et al. (2019).

Reference: H. Salman, G. Yang, J. Li, P. Zhang, H. Zhang, I. Razenshteyn, S. Bubeck. "Provably Robust Deep
Learning via Adversarially Trained Smoothed Classifiers", NeurIPS 2019, arXiv:1906.04584.

The attack maximises -log((1/m) sum_i F(x' + d_i)_y) over ||x' - x||_2 <= eps with the m draws d_i fixed
(SmoothAdv-PGD; each step clips x' to [0, 1] and then scales x' - x back into the ball, the reference code's
order, see ``rs_plugins.train.smoothed_pgd.smoothed_pgd``), and the loss is (1/m) sum_i CE(f(x' + d_i), y) with the
same draws. eps grows linearly over the first ``warmup`` epochs: eps_t = min(eps, (t + 1) eps / warmup).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

import rs_plugins
from rs_plugins.train.losses import (
    EpochAware,
    check_bool,
    check_float,
    check_int,
    draw_deltas,
    noisy_logits,
    warmup_factor,
)
from rs_plugins.train.smoothed_pgd import import_torchattacks, smoothadv_input
from rs_plugins.types import LossOutput, LossSpec, NoiseSampler

SALMAN = "Salman et al., NeurIPS 2019, arXiv:1906.04584"


class SmoothAdvLoss(EpochAware):
    """Cross-entropy on the m noisy copies of the SmoothAdv-PGD adversary.

    Args:
        m: noise draws per image (the CIFAR-10 tables use 4 at sigma 0.25, 8 at 0.5, 2 at 1.0).
        epsilon: l2 radius of the attack in [0, 1] pixel units (the repos' ``--epsilon 256`` is 1.0).
        steps: PGD steps T; the step size is 2 * epsilon / T.
        warmup: epochs W over which epsilon grows linearly to its value (0: no warm-up).
        split_batch: split each loader batch into m chunks with one optimiser step each, the convention of
            the reference code, so every forward pass sees as many images as the loader batch.
    """

    def __init__(self, m: int = 4, epsilon: float = 1.0, steps: int = 10, warmup: int = 10, split_batch: bool = True):
        self.m = check_int("m", m, 1)
        self.epsilon = check_float("epsilon", epsilon)
        self.steps = check_int("steps", steps, 1)
        self.warmup = check_int("warmup", warmup, 0)
        self.chunks = self.m if check_bool("split_batch", split_batch) else 1
        import_torchattacks("smoothadv")

    def current_epsilon(self) -> float:
        """The warmed-up radius for the current epoch."""
        return self.epsilon * warmup_factor(self.epoch, self.warmup)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, noise: NoiseSampler, *, progress: float) -> LossOutput:
        deltas = draw_deltas(noise, x, self.m)
        epsilon = self.current_epsilon()
        adv, shift = smoothadv_input(model, x, y, deltas, epsilon=epsilon, steps=self.steps, extra="smoothadv")
        logits = noisy_logits(model, adv, deltas)
        loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(self.m))
        return LossOutput(loss, {"xent": loss.detach(), "adv_l2": shift})


@rs_plugins.hookimpl
def rs_training_losses():
    yield LossSpec(
        "smoothadv",
        SmoothAdvLoss,
        "SmoothAdv: cross-entropy on PGD adversaries of the smoothed soft classifier",
        SALMAN,
        requires=("torchattacks",),
        extra="smoothadv",
    )
