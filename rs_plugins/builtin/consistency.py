"""Consistency regularization, after Jeong & Shin (2020).

Reference: J. Jeong, J. Shin. "Consistency Regularization for Certified Robustness of Smoothed Classifiers",
NeurIPS 2020, arXiv:2006.04062.

With p_i = softmax(f(x + d_i)) for m draws and p = (1/m) sum_i p_i (not detached):

    L = (1/m) sum_i CE(f(x + d_i), y) + lbd * (1/m) sum_i KL(p || p_i) + eta * H(p)

``variant`` selects the reference code's other forms: ``xent`` uses lbd * (KL + H) (eta = lbd), ``kl`` drops
the entropy, ``mse`` is lbd * ||p_2 - p_1||^2. ``adversarial=True`` is "SmoothAdv + Consistency": the loss is
taken at the SmoothAdv-PGD adversary x' built with the same draws (Salman et al. 2019).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

import rs_plugins
from rs_plugins.train.losses import (
    EpochAware,
    check_bool,
    check_choice,
    check_float,
    check_int,
    draw_deltas,
    noisy_logits,
    warmup_factor,
)
from rs_plugins.train.smoothed_pgd import import_torchattacks, smoothadv_input
from rs_plugins.types import LossOutput, LossSpec, NoiseSampler

JEONG_SHIN = "Jeong & Shin, NeurIPS 2020, arXiv:2006.04062"
VARIANTS = ("default", "xent", "kl", "mse")


def consistency_term(logits: Tensor, lbd: float, eta: float, variant: str = "default") -> tuple[Tensor, Tensor]:
    """(regulariser, KL part) for logits of shape (m, B, K), averaged over the batch."""
    log_p = F.log_softmax(logits, dim=-1)
    p_bar = log_p.exp().mean(0)
    kl = (p_bar * (p_bar.clamp(min=1e-20).log() - log_p)).sum(-1).mean(0)  # (1/m) sum_i KL(p || p_i), per image
    entropy = -(p_bar * p_bar.clamp(min=1e-20).log()).sum(-1)
    if variant == "default":
        term = lbd * kl + eta * entropy
    elif variant == "xent":
        term = lbd * (kl + entropy)
    elif variant == "kl":
        term = lbd * kl
    else:  # mse
        probs = log_p.exp()
        term = lbd * ((probs[1] - probs[0]) ** 2).sum(-1)
    return term.mean(), kl.mean()


class ConsistencyLoss(EpochAware):
    """Cross-entropy on m noisy copies plus a consistency penalty between their predictions.

    Args:
        m: noise draws per image (the paper uses 2).
        lbd: weight lambda of the consistency term (CIFAR-10: 20 at sigma 0.25, 10 at 0.5 and 1.0).
        eta: weight of the entropy term (0.5; ImageNet sigma 1.0 uses 0.1).
        variant: default | xent | kl | mse, the forms of the reference code.
        adversarial: take the loss at the SmoothAdv-PGD adversary ("SmoothAdv + Consistency").
        epsilon, steps, warmup: the adversary's l2 radius in [0, 1] units, PGD steps, and warm-up epochs.
        split_batch: m chunks per loader batch, one optimiser step each, as in the reference code.
    """

    def __init__(
        self,
        m: int = 2,
        lbd: float = 10.0,
        eta: float = 0.5,
        variant: str = "default",
        adversarial: bool = False,
        epsilon: float = 2.0,
        steps: int = 4,
        warmup: int = 10,
        split_batch: bool = True,
    ):
        self.m = check_int("m", m, 1)
        self.lbd = check_float("lbd", lbd)
        self.eta = check_float("eta", eta)
        self.variant = check_choice("variant", variant, VARIANTS)
        if variant == "mse" and m < 2:
            raise ValueError(f"variant 'mse' compares two noisy copies and needs m >= 2; got m={m}")
        self.adversarial = check_bool("adversarial", adversarial)
        self.epsilon = check_float("epsilon", epsilon)
        self.steps = check_int("steps", steps, 1)
        self.warmup = check_int("warmup", warmup, 0)
        self.chunks = self.m if check_bool("split_batch", split_batch) else 1
        if self.adversarial:
            import_torchattacks("smoothadv")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, noise: NoiseSampler, *, progress: float) -> LossOutput:
        deltas = draw_deltas(noise, x, self.m)
        parts: dict[str, Tensor] = {}
        if self.adversarial:
            epsilon = self.epsilon * warmup_factor(self.epoch, self.warmup)
            # project-then-clip, the order of train_consistency.py (SmoothAdv alone clips first)
            attack = dict(epsilon=epsilon, steps=self.steps, extra="smoothadv", clip_first=False)
            x, parts["adv_l2"] = smoothadv_input(model, x, y, deltas, **attack)
        logits = noisy_logits(model, x, deltas)
        xent = F.cross_entropy(logits.flatten(0, 1), y.repeat(self.m))
        consistency, kl = consistency_term(logits, self.lbd, self.eta, self.variant)
        parts = {"xent": xent.detach(), "consistency": consistency.detach(), "kl": kl.detach()} | parts
        return LossOutput(xent + consistency, parts)


@rs_plugins.hookimpl
def rs_training_losses():
    yield LossSpec(
        "consistency",
        ConsistencyLoss,
        "cross-entropy + lbd * KL to the averaged prediction + eta * its entropy, over m noisy copies",
        JEONG_SHIN,
    )
