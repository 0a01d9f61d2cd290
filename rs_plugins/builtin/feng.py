"""ADRE: regularized training of the smoothed classifier, after Feng et al. (2020).

Reference: H. Feng, C. Wu, G. Chen, W. Zhang, Y. Ning. "Regularized Training and Tight Certification for
Randomized Smoothed Classifier with Provable Robustness", AAAI 2020, arXiv:2002.07246.

No code from the authors is public and the paper's exact risk could not be checked here. This follows the
reading of a third-party re-implementation (ratedali/benchmark-ctrs) marked unverified in our spec: with
G = (1/k) sum_j softmax(f(x + d_j)) and c* the most likely wrong class of G,

    L = (1/k) sum_j CE(f(x + d_j), y) + lbd * log(G_c* + 1e-10)

Lowering the runner-up probability enlarges sigma/2 (Phi^-1(p_A) - Phi^-1(p_B)), the radius the paper's tight
certification uses. ``scheme="adversarial"`` (ADRE_ADV) takes the same loss at the SmoothAdv-PGD adversary.
The 1e-10 keeps the term finite once G_c* underflows; it is our choice, as MACER makes the same one.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

import rs_plugins
from rs_plugins.attacks import import_torchattacks, smoothadv_input
from rs_plugins.losses import (
    EpochAware,
    check_choice,
    check_float,
    check_int,
    draw_deltas,
    noisy_logits,
    soft_smoothed,
    warmup_factor,
)
from rs_plugins.types import LossOutput, LossSpec, NoiseSampler

FENG = "Feng et al., AAAI 2020, arXiv:2002.07246"
SCHEMES = ("standard", "adversarial")


def runner_up_log_prob(smoothed: Tensor, y: Tensor) -> Tensor:
    """log(G_c* + 1e-10) per image, c* the most likely class other than y."""
    wrong = smoothed.scatter(1, y.unsqueeze(1), -1.0)  # rule out the true class
    return (wrong.max(dim=1).values + 1e-10).log()


class AdreLoss(EpochAware):
    """Noisy cross-entropy plus lbd times the log-probability of the most likely wrong class.

    Args:
        k: noisy copies per image (8).
        lbd: weight of the regulariser (0.1).
        scheme: standard | adversarial (ADRE_ADV: the loss at the SmoothAdv-PGD adversary).
        epsilon, steps, warmup: the adversary's l2 radius in [0, 1] units, PGD steps and warm-up epochs;
            SmoothAdv's CIFAR-10 values, as the paper's own could not be checked.
    """

    chunks = 1  # all k copies in one batch, one step per batch

    def __init__(
        self,
        k: int = 8,
        lbd: float = 0.1,
        scheme: str = "standard",
        epsilon: float = 1.0,
        steps: int = 10,
        warmup: int = 10,
    ):
        self.k = check_int("k", k, 1)
        self.lbd = check_float("lbd", lbd)
        self.scheme = check_choice("scheme", scheme, SCHEMES)
        self.epsilon = check_float("epsilon", epsilon)
        self.steps = check_int("steps", steps, 1)
        self.warmup = check_int("warmup", warmup, 0)
        if self.scheme == "adversarial":
            import_torchattacks("adre")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, noise: NoiseSampler, *, progress: float) -> LossOutput:
        deltas = draw_deltas(noise, x, self.k)
        parts: dict[str, Tensor] = {}
        if self.scheme == "adversarial":
            epsilon = self.epsilon * warmup_factor(self.epoch, self.warmup)
            x, parts["adv_l2"] = smoothadv_input(model, x, y, deltas, epsilon=epsilon, steps=self.steps, extra="adre")
        logits = noisy_logits(model, x, deltas)
        xent = F.cross_entropy(logits.flatten(0, 1), y.repeat(self.k))
        regulariser = runner_up_log_prob(soft_smoothed(logits.float()), y).mean()
        parts = {"xent": xent.detach(), "log_runner_up": regulariser.detach()} | parts
        return LossOutput(xent + self.lbd * regulariser, parts)


@rs_plugins.hookimpl
def rs_training_losses():
    yield LossSpec(
        "adre",
        AdreLoss,
        "ADRE: noisy cross-entropy + lbd * log-probability of the runner-up class (standard or adversarial)",
        FENG,
    )
