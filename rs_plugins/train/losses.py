"""Building blocks the training losses share: noise draws, noisy forward passes, warm-up, option checks.

Public so that a third-party loss can follow the same conventions as the built-ins: the m noisy copies of
a batch go through the model in one forward pass, copy-major ([x + d_1; ...; x + d_m]), so BatchNorm sees
all of them together, as in the reference code of Jeong & Shin (2020) and Jeong et al. (2021).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..types import NoiseSampler


def draw_deltas(noise: NoiseSampler, x: Tensor, m: int) -> Tensor:
    """m noise draws per image of ``x``: (m, B, C, H, W), each the displacement the sampler would add."""
    zeros = torch.zeros((m * len(x), *x.shape[1:]), device=x.device, dtype=x.dtype)
    return noise.sample(zeros).view(m, *x.shape)


def noisy_logits(model: nn.Module, x: Tensor, deltas: Tensor) -> Tensor:
    """Logits of every noisy copy ``x + deltas[i]`` from one forward pass: (m, B, K)."""
    m = len(deltas)
    logits = model((x.unsqueeze(0) + deltas).flatten(0, 1))
    return logits.view(m, len(x), -1)


def soft_smoothed(logits: Tensor) -> Tensor:
    """The Monte-Carlo smoothed soft prediction mean_i softmax(logits_i): (m, B, K) -> (B, K)."""
    return F.softmax(logits, dim=-1).mean(0)


def warmup_factor(epoch: int | None, warmup: int) -> float:
    """min(1, (epoch + 1) / warmup), the papers' linear warm-up; 1 when the epoch is unknown or warmup is 0."""
    if epoch is None or warmup == 0:
        return 1.0
    return min(1.0, (epoch + 1) / warmup)


class EpochAware:
    """Mixin for losses with an epoch-based schedule; the training runner calls ``set_epoch`` each epoch.

    Until ``set_epoch`` is called the schedule counts as finished (full strength), so a loss used in a
    hand-written loop behaves like the end of training unless that loop calls ``set_epoch`` too, exactly
    as a ``DistributedSampler`` needs ``set_epoch``.
    """

    epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= minimum, or a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def check_float(name: str, value: object, minimum: float = 0.0, *, strict: bool = False) -> float:
    """``value`` as a float >= minimum (> minimum when ``strict``), or a ValueError naming the option."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (value > minimum if strict else value >= minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool (JSON true/false on the command line), or a ValueError naming the option."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false; got {value!r}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, or a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value  # type: ignore[return-value]
