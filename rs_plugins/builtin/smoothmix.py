"""SmoothMix: training confidence-calibrated smoothed classifiers, after Jeong et al. (2021).

Reference: J. Jeong, S. Park, M. Kim, H.-C. Lee, D. Kim, J. Shin. "SmoothMix: Training Confidence-calibrated
Smoothed Classifiers for Certified Robustness", NeurIPS 2021, arXiv:2111.09277.

Per batch, with m draws d_i fixed for the whole step:
1. T normalised-gradient l2 steps of size ``step_size`` on -log((1/m) sum_i F(x_adv + d_i)_y), in eval mode,
   clipped to [0, 1], unconstrained unless ``max_norm`` is set. The clean side x0 is the iterate after
   ``mix_step`` steps projected onto the ball of radius w(t) * step_size * mix_step around x (mix_step = 1 is
   the "one-step adversary"). The search is torchattacks' PGDL2 from a zero start, run in two segments so that
   x0 is available; the papers' code does the same steps (its summed loss and 1e-8 guard change neither
   the normalised direction nor, beyond 1e-8, its length).
2. L_CE = (1/m) sum_i CE(f(x0 + d_i), y); p0 = (1/m) sum_i softmax(f(x0 + d_i)), not detached.
3. Per image lam ~ U[0, 1/2]; x_mix = (1 - lam) x0 + lam x_adv; y_mix = (1 - lam) p0 + lam / K.
4. L_mix = (1/m) sum_i KL(y_mix || softmax(f(x_mix + d_i))), kept only where argmax p0 = y.
5. L = L_CE + eta * w(t) * L_mix, with the warm-up w(t) = min(1, (t + 1) / warmup).
"""

from __future__ import annotations

import torch
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
    soft_smoothed,
    warmup_factor,
)
from rs_plugins.train.smoothed_pgd import NO_BALL, import_torchattacks, smoothed_pgd
from rs_plugins.types import LossOutput, LossSpec, NoiseSampler

JEONG_2021 = "Jeong et al., NeurIPS 2021, arXiv:2111.09277"


def project(x: Tensor, center: Tensor, radius: float) -> Tensor:
    """Project each image of ``x`` onto the l2 ball of ``radius`` around ``center``, then clip to [0, 1]."""
    delta = x - center
    norms = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (x.dim() - 1)))
    delta = delta * torch.clamp(radius / norms, max=1.0)
    return (center + delta).clamp(0, 1)


class SmoothMixLoss(EpochAware):
    """Cross-entropy at the clean side plus a mixup loss towards the adversary with a softened target.

    Args:
        m: noise draws per image (CIFAR-10 uses 2, MNIST 4).
        step_size: alpha, the l2 length of each attack step (CIFAR-10: 0.5, 1.0, 2.0 at sigma 0.25, 0.5, 1.0).
        steps: T, attack steps (CIFAR-10: 4; the code default is 8).
        eta: weight of the mixup loss (CIFAR-10: 5; the code default is 1).
        mix_step: which iterate is the clean side: 0 is x itself, 1 the one-step adversary.
        warmup: epochs over which eta and the one-step radius grow linearly (10).
        max_norm: l2 ball for the adversary (the code's --maxnorm; default none). Only with mix_step 0,
            where one uninterrupted PGD run gives the same iterates.
        max_norm_s: radius of the one-step clean side before warm-up (default step_size * mix_step).
        split_batch: m chunks per loader batch, one optimiser step each, as in the reference code.
    """

    def __init__(
        self,
        m: int = 2,
        step_size: float = 1.0,
        steps: int = 4,
        eta: float = 5.0,
        mix_step: int = 0,
        warmup: int = 10,
        max_norm: float | None = None,
        max_norm_s: float | None = None,
        split_batch: bool = True,
    ):
        self.m = check_int("m", m, 1)
        self.step_size = check_float("step_size", step_size, strict=True)
        self.steps = check_int("steps", steps, 1)
        self.eta = check_float("eta", eta)
        self.mix_step = check_int("mix_step", mix_step, 0)
        if mix_step >= steps:
            raise ValueError(f"mix_step must be less than steps ({steps}); got {mix_step}")
        self.warmup = check_int("warmup", warmup, 0)
        self.max_norm = NO_BALL if max_norm is None else check_float("max_norm", max_norm, strict=True)
        if max_norm is not None and mix_step != 0:
            raise ValueError(f"max_norm can only be combined with mix_step 0; got mix_step={mix_step}")
        default_s = self.step_size * self.mix_step
        self.max_norm_s = default_s if max_norm_s is None else check_float("max_norm_s", max_norm_s)
        self.chunks = self.m if check_bool("split_batch", split_batch) else 1
        import_torchattacks("smoothmix")

    def search(self, model: nn.Module, x: Tensor, y: Tensor, deltas: Tensor, weight: float) -> tuple[Tensor, Tensor]:
        """(clean side x0, adversary x_adv) of step 1."""
        common = dict(step_size=self.step_size, extra="smoothmix")
        first = smoothed_pgd(model, x, y, deltas, epsilon=self.max_norm, steps=self.mix_step, **common)
        adv = smoothed_pgd(model, first, y, deltas, epsilon=self.max_norm, steps=self.steps - self.mix_step, **common)
        return project(first, x, weight * self.max_norm_s), adv

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, noise: NoiseSampler, *, progress: float) -> LossOutput:
        weight = warmup_factor(self.epoch, self.warmup)
        deltas = draw_deltas(noise, x, self.m)
        clean, adv = self.search(model, x, y, deltas, weight)

        logits = noisy_logits(model, clean, deltas)
        xent = F.cross_entropy(logits.flatten(0, 1), y.repeat(self.m))
        p_clean = soft_smoothed(logits)

        lam = torch.rand(len(x), device=x.device, dtype=x.dtype) / 2
        lam_x = lam.view(-1, *([1] * (x.dim() - 1)))
        mixed = (1 - lam_x) * clean + lam_x * adv
        num_classes = logits.shape[-1]
        target = (1 - lam.unsqueeze(1)) * p_clean + lam.unsqueeze(1) / num_classes

        log_q = F.log_softmax(noisy_logits(model, mixed, deltas), dim=-1)  # (m, B, K)
        kl = (target * (target.clamp(min=1e-20).log() - log_q)).sum(-1)  # (m, B)
        correct = (p_clean.argmax(1) == y).to(kl.dtype)
        mixup = (kl * correct).mean()
        loss = xent + self.eta * weight * mixup
        parts = {"xent": xent.detach(), "mixup": mixup.detach(), "clean_acc": correct.mean().detach()}
        return LossOutput(loss, parts)


@rs_plugins.hookimpl
def rs_training_losses():
    yield LossSpec(
        "smoothmix",
        SmoothMixLoss,
        "SmoothMix: mixup between clean and smoothed-adversarial points with confidence-lowering soft labels",
        JEONG_2021,
        requires=("torchattacks",),
        extra="smoothmix",
    )
