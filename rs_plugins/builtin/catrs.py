"""CAT-RS: confidence-aware training of smoothed classifiers, after Jeong, Kim & Shin (2023).

Reference: J. Jeong, S. Kim, J. Shin. "Confidence-aware Training of Smoothed Classifiers for Certified Robustness",
AAAI 2023, arXiv:2212.09000. Where the paper and the authors' code (alinlab/smoothing-catrs) differ, this follows
the code: the high-confidence target is the fixed p_b of a Gaussian-trained model (``rs-plugins predict-confidence``).

Per chunk, with M draws d_i and p_b(x) the pre-computed smoothed prediction:
1. z_i = f(x + d_i) (train mode); p = (1/M) sum_i 1[argmax z_i = y], or p = p_b(x)_y with ``confidence_mask``.
2. K ~ Binomial(M, p), clamped to K >= 1.
3. L_low = (sum of the K smallest CE(z_i, y)) / M.
4. d'_i: T normalised-gradient steps of size 2 eps / T on sum_i KL(p_b || softmax(f(x + d'_i))) (eval mode),
   each followed by the projection ||d' - d|| <= eps (torch.renorm) and the re-standardisation
   d' <- mean(d) + (d' - mean(d')) * rms(d) / rms(d'), per image and draw (the code scales by the RMS, not the
   standard deviation: the mean comes back exactly, the RMS up to the mean's tiny share for Gaussian draws).
5. L_high = max_i KL(p_b || softmax(f(x + d'_i))), counted only where K = M.
6. L = mean(L_low + lbd * L_high * 1[K = M]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Binomial

import rs_plugins
from rs_plugins.train.losses import EpochAware, check_bool, check_float, check_int, draw_deltas, noisy_logits
from rs_plugins.train.smoothed_pgd import attack_mode
from rs_plugins.types import LossOutput, LossSpec, NoiseSampler

JEONG_KIM_SHIN = "Jeong, Kim & Shin, AAAI 2023, arXiv:2212.09000"
LBD_BY_SIGMA = {0.25: 0.5, 0.5: 1.0, 1.0: 2.0}  # CIFAR-10, the authors' EXPERIMENTS.MD


def budget(p: Tensor, m: int) -> Tensor:
    """Sample-wise budget K ~ Binomial(m, p) clamped to >= 1, as int64 (drawn from torch's global RNG)."""
    return Binomial(m, p).sample().long().clamp(min=1)


def low_confidence_loss(ce: Tensor, k: Tensor) -> Tensor:
    """(sum of the k smallest of each row of ``ce``) / m: ce (B, m), k (B,) -> (B,)."""
    m = ce.shape[1]
    kept = torch.arange(m, device=ce.device) < k.unsqueeze(1)
    return (ce.sort(dim=1).values * kept).sum(1) / m


def kl_to(p_b: Tensor, logits: Tensor) -> Tensor:
    """KL(p_b || softmax(logits)) per draw and image: p_b (B, K), logits (m, B, K) -> (m, B); 0 log 0 = 0."""
    return (torch.xlogy(p_b, p_b) - p_b * F.log_softmax(logits, dim=-1)).sum(-1)


def restandardise(delta: Tensor, reference: Tensor) -> Tensor:
    """mean(r) + (d - mean(d)) * rms(r) / rms(d) per sample: ``reference``'s mean, and about its RMS."""

    def stats(t: Tensor) -> tuple[Tensor, Tensor]:
        flat = t.flatten(1)
        shape = (-1, *([1] * (t.dim() - 1)))
        return flat.mean(1).view(shape), flat.pow(2).mean(1).sqrt().view(shape)

    mu, rms = stats(delta)
    mu0, rms0 = stats(reference)
    return mu0 + (delta - mu) / rms * rms0


def noise_adversary(model: nn.Module, x: Tensor, p_b: Tensor, deltas: Tensor, epsilon: float, steps: int) -> Tensor:
    """Step 4: the draws (m, B, C, H, W) moved towards a larger KL to p_b, in eval mode with parameters frozen."""
    start = deltas.detach().flatten(0, 1)
    current = start
    with attack_mode(model):
        for _ in range(steps):
            current = current.detach().requires_grad_()
            logits = noisy_logits(model, x, current.view_as(deltas))
            loss = kl_to(p_b, logits).mean(0).sum()
            (grad,) = torch.autograd.grad(loss, [current])
            grad = grad / (grad.flatten(1).norm(dim=1) + 1e-8).view(-1, *([1] * (grad.dim() - 1)))
            moved = current + (2 * epsilon / steps) * grad
            current = restandardise(start + (moved - start).renorm(2, 0, epsilon), start)
    return current.detach().view_as(deltas)


class CatrsLoss(EpochAware):
    """Low-confidence cross-entropy on the K easiest draws, plus a worst-case KL to p_b where all M are accepted.

    Args:
        confidence: the p_b file written by ``rs-plugins predict-confidence`` on the training data (required).
        m: noise draws per image, M (CIFAR-10 4, ImageNet 2).
        epsilon: l2 radius of the noise-space adversary in [0, 1] units (the code's --epsilon 256 / 256 = 1.0).
        steps: T, adversary steps (CIFAR-10 4, ImageNet 1).
        lbd: weight of L_high; default by sigma as on CIFAR-10: 0.5, 1.0, 2.0 at 0.25, 0.5, 1.0 (ImageNet: 2).
        confidence_mask: take the budget's p from p_b(x)_y instead of the draws' accuracy (ImageNet).
        double_epsilon_at: from this epoch on epsilon is doubled (the code's --warmup; ImageNet 80; none).
        split_batch: M chunks per loader batch, one optimiser step each, as in the reference code.
    """

    def __init__(
        self,
        confidence: str | None = None,
        m: int = 4,
        epsilon: float = 1.0,
        steps: int = 4,
        lbd: float | None = None,
        confidence_mask: bool = False,
        double_epsilon_at: int | None = None,
        split_batch: bool = True,
    ):
        if not isinstance(confidence, str) or not confidence:
            raise ValueError("confidence must be the p_b file of `rs-plugins predict-confidence`; got none")
        self.confidence = confidence
        self.m = check_int("m", m, 1)
        self.epsilon = check_float("epsilon", epsilon)
        self.steps = check_int("steps", steps, 1)
        self.lbd = None if lbd is None else check_float("lbd", lbd)
        self.confidence_mask = check_bool("confidence_mask", confidence_mask)
        if double_epsilon_at is not None:
            double_epsilon_at = check_int("double_epsilon_at", double_epsilon_at, 0)
        self.double_epsilon_at = double_epsilon_at
        self.chunks = self.m if check_bool("split_batch", split_batch) else 1

    def example_targets(self, dataset, num_classes: int) -> dict[str, Tensor]:
        """p_b per training index, from ``confidence``; refused if made on other data or for other classes."""
        from rs_plugins.certify.confidence import read_confidence_targets

        return {"p_b": read_confidence_targets(self.confidence, dataset, num_classes, "--loss-option confidence")}

    def weight(self, sigma: float) -> float:
        """lambda: the option, else the CIFAR-10 value for this sigma."""
        if self.lbd is not None:
            return self.lbd
        if sigma not in LBD_BY_SIGMA:
            msg = f"lbd has a default only at sigma 0.25, 0.5, 1.0 (0.5, 1.0, 2.0); give it for sigma {sigma}"
            raise ValueError(msg)
        return LBD_BY_SIGMA[sigma]

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, noise: NoiseSampler, *, progress: float, targets=None
    ) -> LossOutput:
        if not targets or "p_b" not in targets:
            raise ValueError("catrs needs p_b with each batch: train it through rs_plugins.train.loop.train")
        p_b = targets["p_b"].to(x.dtype)
        lbd = self.weight(float(noise.sigma))
        doubled = self.double_epsilon_at is not None and self.epoch is not None and self.epoch >= self.double_epsilon_at
        epsilon = self.epsilon * (2.0 if doubled else 1.0)
        deltas = draw_deltas(noise, x, self.m)
        logits = noisy_logits(model, x, deltas)  # (M, B, K)
        rows = torch.arange(len(y), device=y.device)
        accuracy = (logits.argmax(-1) == y).to(x.dtype).mean(0)
        k = budget(p_b[rows, y] if self.confidence_mask else accuracy, self.m)
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(self.m), reduction="none").view(self.m, -1).t()
        low = low_confidence_loss(ce, k)

        adversarial = noise_adversary(model, x, p_b, deltas, epsilon, self.steps)
        high = kl_to(p_b, noisy_logits(model, x, adversarial)).max(0).values
        full = (k == self.m).to(x.dtype)
        loss = (low + lbd * high * full).mean()
        parts = {"low": low.mean().detach(), "high": high.mean().detach(), "accepted": full.mean().detach()}
        return LossOutput(loss, parts | {"noisy_acc": accuracy.mean().detach()})


@rs_plugins.hookimpl
def rs_training_losses():
    yield LossSpec(
        "catrs",
        CatrsLoss,
        "CAT-RS: cross-entropy on a sampled budget of easy draws + worst-case KL to a Gaussian model's p_b",
        JEONG_KIM_SHIN,
    )
