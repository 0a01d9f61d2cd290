"""Adaptive Smoothing: the mixed classifier of an accurate and a robust network, with a fixed or input-dependent α.

References: Y. Bai, B. G. Anderson, A. Kim, S. Sojoudi. "Improving the Accuracy-Robustness Trade-Off of Classifiers
via Adaptive Smoothing", SIMODS 2024, arXiv:2301.12554; Y. Bai, B. G. Anderson, S. Sojoudi. "Mixing Classifiers to
Alleviate the Accuracy-Robustness Trade-Off", L4DC 2024, arXiv:2311.15165.

Both mixers output m(x) = log((1 - α)·softmax(s_g·g(x)) + α·softmax(s_h·h(x))): a mixture in probability space,
logged so that cross-entropy and attacks apply. The first ``--model`` is g (accurate), the second h (robust); both
are frozen and stay in eval mode. ``mix`` fixes α; ``adaptive`` computes α(x) with the paper's mixing network from
intermediate features of both bases (``networks``). Its certificate (certifier ``mixed``) is in ``certificate``; the
mixing network is trained by ``rs-plugins train-mixer`` (``rs_plugins.train.mixer``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rs_plugins
from rs_plugins.file_checks import load_weights_only
from rs_plugins.types import CertifierSpec, MixerSpec
from rs_plugins.validation import check_number

from .certificate import MixedCertifier
from .networks import FeatureTap, mixing_network

ADAPTIVE = "Bai et al., SIMODS 2024, arXiv:2301.12554"
MIXING = "Bai et al., L4DC 2024, arXiv:2311.15165"


def _unit(option: str, value: object) -> float:
    """A number in [0, 1], or a ValueError naming the --mixer-option."""
    number = check_number(f"--mixer-option {option}", value, at_least=0)
    if number > 1:
        raise ValueError(f"--mixer-option {option} must be a number in [0, 1]; got {value!r}")
    return number


def _check_bases(base_classifiers: Sequence[nn.Module], mixer: str) -> tuple[nn.Module, nn.Module]:
    bases = list(base_classifiers)
    if len(bases) != 2 or not all(isinstance(m, nn.Module) for m in bases):
        msg = f"mixer {mixer!r} combines exactly two --model classifiers, the accurate one first and the robust one "
        raise ValueError(msg + f"second; got {len(bases)}")
    for model in bases:  # frozen: only the mixing network learns, and attacks differentiate through the bases
        model.eval()
        for parameter in model.parameters():  # not requires_grad_(): a TorchScript module has no such method
            parameter.requires_grad_(False)
    return bases[0], bases[1]


def mix_log_probs(
    std_logits: Tensor,
    rob_logits: Tensor,
    alpha: Tensor | float | None,
    std_scale: float,
    rob_scale: float,
    *,
    log_weights: tuple[Tensor, Tensor] | None = None,
):
    """log((1 - α)·softmax(s_g·g) + α·softmax(s_h·h)), computed in log space (exact at α = 0 and α = 1).

    ``log_weights`` = (log(1 - α), log α), when given, replaces ``alpha``: the adaptive mixer computes them from γ
    in log space (``AdaptiveMixer.log_weights``), so they and their gradients stay finite where α = sigmoid(γ)
    rounds to exactly 0 or 1. Always in float32 or wider: under bf16/fp16 autocast the logits are promoted, so α
    keeps its value (α = 0.84 in bf16 would be 0.83984, and the certificate assumes α_min exactly).

    Shape:
        std_logits, rob_logits: (B, K); alpha: a float or (B,); log_weights: two (B,). returns: (B, K).
    """
    dtype = torch.promote_types(std_logits.dtype, torch.float32)
    std_logits, rob_logits = std_logits.to(dtype), rob_logits.to(dtype)
    if log_weights is None:
        alpha = torch.as_tensor(alpha, device=std_logits.device).to(dtype)
        log_weights = (torch.log1p(-alpha), torch.log(alpha))
    log_1m, log_a = (w.to(dtype).reshape(-1, 1) if w.dim() else w.to(dtype) for w in log_weights)
    with torch.autocast(std_logits.device.type, enabled=False):
        log_g = F.log_softmax(std_scale * std_logits, dim=1) + log_1m
        log_h = F.log_softmax(rob_scale * rob_logits, dim=1) + log_a
        return torch.logaddexp(log_g, log_h)


def _log(value: float) -> float:
    """log(value), -inf at 0 (an α range endpoint of 0)."""
    return math.log(value) if value > 0 else -math.inf


def _log1m(value: float) -> float:
    """log(1 - value), -inf at 1 (an α range endpoint of 1)."""
    return math.log1p(-value) if value < 1 else -math.inf


class _Mixture(nn.Module):
    """What both mixers share: the two frozen bases (kept in eval mode) and the logit scales."""

    def __init__(self, base_classifiers, std_scale: float, rob_scale: float, name: str) -> None:
        super().__init__()
        self.standard, self.robust = _check_bases(base_classifiers, name)
        self.std_scale = check_number("--mixer-option std_scale", std_scale, above=0)
        self.rob_scale = check_number("--mixer-option rob_scale", rob_scale, above=0)

    def train(self, mode: bool = True) -> _Mixture:
        super().train(mode)
        self.standard.eval()  # the bases are frozen, BatchNorm statistics included
        self.robust.eval()
        return self


class MixedClassifier(_Mixture):
    """The fixed-α mixed classifier m_α (L4DC 2024): α = 0 is g alone, α = 1 is h alone (up to log-softmax).

    Args:
        base_classifiers: [g, h], the accurate and the robust network (in [0, 1] -> logits).
        alpha: weight of the robust network, in [0, 1]. 0.76 is the SIMODS RS experiment's highlighted value.
        std_scale, rob_scale: logit temperatures s_g, s_h. The authors trained at 1 / 1; their RobustBench
            CIFAR-10 entry uses 1.2 / 0.3 and the CIFAR-100 ones 2 / 1.

    Shape:
        x: (B, C, H, W) in [0, 1]; returns (B, K) log-probabilities.
    """

    def __init__(self, base_classifiers, alpha: float = 0.76, std_scale: float = 1.0, rob_scale: float = 1.0) -> None:
        super().__init__(base_classifiers, std_scale, rob_scale, "mix")
        self.alpha = _unit("alpha", alpha)

    @property
    def certified_alpha(self) -> float:
        """The α the mixed certificate may assume on the whole ball."""
        return self.alpha

    def forward(self, x: Tensor) -> Tensor:
        return mix_log_probs(self.standard(x), self.robust(x), self.alpha, self.std_scale, self.rob_scale)


# -- the mixing network ------------------------------------------------------------------------------------------


def _pair(value, option: str) -> tuple[float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise ValueError(f"--mixer-option {option} takes [scale, bias]; got {value!r}")
    return check_number(f"--mixer-option {option}[0]", value[0]), check_number(f"--mixer-option {option}[1]", value[1])


class AdaptiveMixer(_Mixture):
    """Adaptive smoothing: m(x) with α(x) from the mixing network over features of both bases (SIMODS 2024).

    γ is post-processed as in the authors' code: in training, clamped to the batch mean ± 0.6 std; then
    normalised by a BatchNorm1d (no affine, momentum 0.01) and mapped to γ·scale + bias (``train_gamma`` in
    training, ``eval_gamma`` in eval). α = sigmoid(γ) in training; in eval mode α = α_min + (α_max - α_min)·sigmoid(γ),
    so α(x) never leaves [α_min, α_max] and a certificate at α_min holds.

    Args:
        base_classifiers: [g, h]; both frozen.
        alpha_min, alpha_max: the eval-mode range of α (paper's CIFAR-10 EDM config: 0.84, 0.99).
        train_gamma, eval_gamma: (scale, bias) of the normalised γ (paper: (2, 0.4) and (2, 1.3)).
        std_scale, rob_scale: logit temperatures, as in ``mix``.
        std_layers, rob_layers: "stage1,stage2" module names to hook; default: a ``features(x)`` method or the
            first of ``DEFAULT_LAYERS`` the model has.
        net: the mixing network: ``v3`` / ``v4`` (the paper's ``MixingNetV3/V4``; default: V3 when the stage-2
            features fit it, else V4) or ``small`` (two stages of ``width``, 2·``width``: for tiny bases).
        width: channels of the small network's first stage (default 64; giving it alone selects ``net=small``).
        checkpoint: the mixing network's state dict, e.g. ``mixing.pt`` from ``rs-plugins train-mixer``.
        probe_size: side of the blank image used once to read the feature channels.

    Shape:
        x: (B, C, H, W) in [0, 1]; returns (B, K) log-probabilities. ``last_gamma`` holds the last γ (B,).
    """

    def __init__(
        self,
        base_classifiers,
        alpha_min: float = 0.84,
        alpha_max: float = 0.99,
        train_gamma: Sequence[float] = (2.0, 0.4),
        eval_gamma: Sequence[float] = (2.0, 1.3),
        std_scale: float = 1.0,
        rob_scale: float = 1.0,
        std_layers: str | Sequence[str] | None = None,
        rob_layers: str | Sequence[str] | None = None,
        net: str | None = None,
        width: int | None = None,
        checkpoint: str | None = None,
        probe_size: int = 32,
    ) -> None:
        super().__init__(base_classifiers, std_scale, rob_scale, "adaptive")
        self.alpha_min = _unit("alpha_min", alpha_min)
        self.alpha_max = _unit("alpha_max", alpha_max)
        if alpha_min > alpha_max:
            raise ValueError(f"--mixer-option alpha_min ({alpha_min}) must not exceed alpha_max ({alpha_max})")
        self.train_gamma = _pair(train_gamma, "train_gamma")
        self.eval_gamma = _pair(eval_gamma, "eval_gamma")
        self.taps = (FeatureTap(self.standard, std_layers, "std"), FeatureTap(self.robust, rob_layers, "rob"))
        channels = self._channels(int(probe_size))
        self.mixing = mixing_network(channels, net, width)
        self.attack_view = False  # eval mode with the training constants and α unsquashed: see authors_view()
        self.gamma_norm = nn.BatchNorm1d(1, affine=False, momentum=0.01)
        self.last_gamma: Tensor | None = None
        if checkpoint is not None:
            state = load_weights_only(checkpoint, "--mixer-option checkpoint", "a mixing-network state dict")
            try:
                self.trainable().load_state_dict(state)
            except (RuntimeError, TypeError, AttributeError) as err:
                msg = f"--mixer-option checkpoint={checkpoint} does not fit this mixing network ({err}); "
                raise ValueError(msg + "use the net, width and layers it was trained with") from None

    @property
    def certified_alpha(self) -> float:
        """The α the mixed certificate may assume on the whole ball: the eval-mode clamp's lower end."""
        return self.alpha_min

    def trainable(self) -> nn.Module:
        """The mixing network and its γ normalisation: what ``train-mixer`` trains and saves."""
        return nn.ModuleDict({"mixing": self.mixing, "gamma_norm": self.gamma_norm})

    @torch.no_grad()
    def _channels(self, size: int) -> list[int]:
        conv = next((m for m in self.standard.modules() if isinstance(m, nn.Conv2d)), None)
        in_channels = conv.in_channels if conv is not None else 3
        x = torch.full((1, in_channels, size, size), 0.5)
        device = next(self.standard.parameters(), torch.empty(0)).device
        channels = []
        for tap in self.taps:
            _, f1, f2 = tap(x.to(device))
            channels += [f1.shape[1], f2.shape[1]]
        return [channels[0], channels[1], channels[2], channels[3]]

    @contextmanager
    def authors_view(self):
        """Eval mode as the authors attack it in training (``comp_model.eval(scale_alpha=False)``): BatchNorm of γ
        on its running statistics, no batch clamp, but the training constants ``train_gamma`` and α = sigmoid(γ)."""
        was_training = self.training
        self.eval()
        self.attack_view = True
        try:
            yield self
        finally:
            self.attack_view = False
            self.train(was_training)

    def gamma(self, features: Sequence[Tensor]) -> Tensor:
        """γ after the paper's post-processing (batch clamp in training, BatchNorm, scale and bias). Shape: (B,)."""
        gamma = self.mixing(*features)
        if self.training and len(gamma) > 1:
            mean, std = gamma.mean().detach(), gamma.std().detach()
            gamma = torch.minimum(torch.maximum(gamma, mean - 0.6 * std), mean + 0.6 * std)
        gamma = self.gamma_norm(gamma.float().unsqueeze(1)).squeeze(1)
        scale, bias = self.train_gamma if self.training or self.attack_view else self.eval_gamma
        return gamma * scale + bias

    def alpha(self, gamma: Tensor) -> Tensor:
        """α from γ: sigmoid in training; squashed into [α_min, α_max] in eval mode. Shape: (B,) -> (B,)."""
        if self.training or self.attack_view:
            return torch.sigmoid(gamma)
        return self.alpha_min + (self.alpha_max - self.alpha_min) * torch.sigmoid(gamma)

    def log_weights(self, gamma: Tensor) -> tuple[Tensor, Tensor]:
        """(log(1 - α), log α) of ``alpha(gamma)``, computed from γ in log space: log σ(γ) and log σ(-γ) by
        ``logsigmoid``, and in eval mode α = α_min·σ(-γ) + α_max·σ(γ) (1 - α alike) by ``logaddexp``. Equal to the
        logs of ``alpha`` where it is not saturated, and finite, with finite gradients, for every finite γ: a
        sigmoid that rounds to exactly 0 or 1 in float32 would give log 0 and an infinite gradient. Shape: (B,)."""
        up, down = F.logsigmoid(gamma), F.logsigmoid(-gamma)  # log σ(γ), log(1 - σ(γ))
        if self.training or self.attack_view:
            return down, up
        low, high = self.alpha_min, self.alpha_max
        if low == high:  # a constant α: no gradient through γ (and none of -inf - -inf)
            return torch.full_like(gamma, _log1m(low)), torch.full_like(gamma, _log(low))
        log_a = torch.logaddexp(_log(low) + down, _log(high) + up)
        log_1m = torch.logaddexp(_log1m(low) + down, _log1m(high) + up)
        return log_1m, log_a

    def forward(self, x: Tensor) -> Tensor:
        std_logits, f1g, f2g = self.taps[0](x)
        rob_logits, f1h, f2h = self.taps[1](x)
        self.last_gamma = self.gamma((f1g, f2g, f1h, f2h))
        weights = self.log_weights(self.last_gamma)
        return mix_log_probs(std_logits, rob_logits, None, self.std_scale, self.rob_scale, log_weights=weights)


@rs_plugins.hookimpl
def rs_mixers():
    yield MixerSpec(
        "mix", MixedClassifier, "log((1-a) softmax(s_g g) + a softmax(s_h h)): accurate g, robust h, fixed a", MIXING
    )
    yield MixerSpec(
        "adaptive", AdaptiveMixer, "mix with a(x) from a mixing network over features of both bases", ADAPTIVE
    )


@rs_plugins.hookimpl
def rs_certifiers():
    yield CertifierSpec(
        "mixed",
        MixedCertifier,
        "mixture of any g with a Gaussian-smoothed robust h: p1 lower / p2 upper bounds, radius at the mixer's alpha",
        ADAPTIVE,
        noises=("gaussian",),
    )
