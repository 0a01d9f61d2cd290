"""Standard training: cross-entropy on the clean images, no noise (the plain, non-robust classifier).

Two smoothing techniques start from such a classifier: Adaptive Smoothing mixes an accurate non-robust base with a
robust one (Bai et al., SIMODS 2024), and denoised smoothing puts a denoiser in front of a classifier that was
never trained under noise (Salman et al., NeurIPS 2020). ``rs-plugins train --loss standard`` needs no ``--sigma``;
given one, it only sets the noise of the held-out ``noisy_acc`` column.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

import rs_plugins
from rs_plugins.types import LossOutput, LossSpec, NoiseSampler

REFERENCE = "standard empirical-risk training (cross-entropy on clean inputs)"


class StandardLoss:
    """Cross-entropy of the model on the clean batch; the noise the runner passes is not used."""

    uses_noise = False  # the training runner needs no --sigma for this loss

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, noise: NoiseSampler | None, *, progress: float
    ) -> LossOutput:
        loss = F.cross_entropy(model(x), y)
        return LossOutput(loss, {"xent": loss.detach()})


@rs_plugins.hookimpl
def rs_training_losses():
    yield LossSpec("standard", StandardLoss, "cross-entropy on clean inputs, no noise (--sigma not needed)", REFERENCE)
