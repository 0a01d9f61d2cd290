"""MACER: attack-free certified training by maximising the certified radius, after Zhai et al. (2020).

Reference: R. Zhai, C. Dan, D. He, H. Zhang, B. Gong, P. Ravikumar, C.-J. Hsieh, L. Wang. "MACER: Attack-free
and Scalable Robust Training via Maximizing Certified Radius", ICLR 2020, arXiv:2001.02378.

Each image is replicated k times with noise (one forward pass, one optimiser step per batch). With
z_j = f(x + d_j):
- L_cls = -log((1/k) sum_j softmax(z_j)_y + 1e-10);
- p_beta = (1/k) sum_j softmax(beta z_j) with top-2 values t1 >= t2; over the images whose argmax of
  p_beta is y and whose xi = Phi^-1(t1) - Phi^-1(t2) is finite and at most gamma,
  L_rob = sum (sigma / 2) (gamma - xi);
- L = (sum L_cls + lbd * L_rob) / B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rs_plugins
from rs_plugins.train.losses import EpochAware, check_float, check_int, draw_deltas, noisy_logits, soft_smoothed
from rs_plugins.types import LossOutput, LossSpec, NoiseSampler

ZHAI = "Zhai et al., ICLR 2020, arXiv:2001.02378"


def macer_terms(logits: Tensor, y: Tensor, sigma: float, beta: float, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """(sum of L_cls, L_rob, number of images in L_rob) for logits of shape (k, B, K)."""
    p = soft_smoothed(logits.float())
    classification = F.nll_loss((p + 1e-10).log(), y, reduction="sum")
    p_beta = soft_smoothed(beta * logits.float())
    top, top_class = p_beta.topk(2, dim=1)
    with torch.no_grad():
        xi = torch.special.ndtri(top[:, 0]) - torch.special.ndtri(top[:, 1])
        keep = (top_class[:, 0] == y) & torch.isfinite(xi) & (xi <= gamma)
    # Phi^-1 again on the kept images only: its derivative is infinite at 0 and 1, and a zero gradient times an
    # infinite derivative on a dropped image would be NaN (the reference code filters before Phi^-1 too).
    kept = top[keep]
    xi_kept = torch.special.ndtri(kept[:, 0]) - torch.special.ndtri(kept[:, 1])
    robustness = (sigma / 2) * (gamma - xi_kept).sum()
    return classification, robustness, keep.sum()


class MacerLoss(EpochAware):
    """Soft-smoothed cross-entropy plus a hinge that enlarges the soft certified radius.

    Args:
        k: noisy copies per image (16).
        beta: inverse temperature of the soft counts (16).
        gamma: hinge on xi, the radius in units of sigma / 2 (8).
        lbd: weight of the robustness term (12; the Jeong et al. re-runs use 12 / 6 / 12 at sigma
            0.25 / 0.5 / 1.0, deferred at 1.0).
        deferred_epochs: lbd is 0 for the first this many epochs ("deferred" MACER sets it to the first
            learning-rate drop, e.g. 50).
    """

    chunks = 1  # MACER replicates within the batch and takes one step per batch

    def __init__(
        self, k: int = 16, beta: float = 16.0, gamma: float = 8.0, lbd: float = 12.0, deferred_epochs: int = 0
    ):
        self.k = check_int("k", k, 1)
        self.beta = check_float("beta", beta, strict=True)
        self.gamma = check_float("gamma", gamma, strict=True)
        self.lbd = check_float("lbd", lbd)
        self.deferred_epochs = check_int("deferred_epochs", deferred_epochs, 0)

    def current_lbd(self) -> float:
        """lbd, or 0 while the robustness term is deferred."""
        deferred = self.epoch is not None and self.epoch < self.deferred_epochs
        return 0.0 if deferred else self.lbd

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, noise: NoiseSampler, *, progress: float) -> LossOutput:
        logits = noisy_logits(model, x, draw_deltas(noise, x, self.k))
        classification, robustness, kept = macer_terms(logits, y, noise.sigma, self.beta, self.gamma)
        loss = (classification + self.current_lbd() * robustness) / len(x)
        parts = {
            "cls": classification.detach() / len(x),
            "rob": robustness.detach() / len(x),
            "rob_share": kept.detach().float() / len(x),
        }
        return LossOutput(loss, parts)


@rs_plugins.hookimpl
def rs_training_losses():
    yield LossSpec("macer", MacerLoss, "MACER: soft-smoothed cross-entropy + hinge on the soft certified radius", ZHAI)
