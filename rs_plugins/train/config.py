"""What a training run is asked to do: ``TrainConfig`` (the papers' harness as defaults), the named recipes, the
precisions and augmentations the loop knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..certify.execution import PRECISIONS  # the trainers and their CLI import it from here too
from ..validation import MAX_SEED, check_integer, check_number
from .schedules import check_schedule

FINAL_MODEL = "model.pt"  # the trained model's state dict alone, for --checkpoint
AUGMENTATIONS = ("none", "crop-flip")


def crop_flip(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """The papers' CIFAR-10 augmentation on a batch: a random crop of the zero-padded image and a random
    horizontal flip, per image (RandomCrop(32, padding=4) + RandomHorizontalFlip), drawn from torch's RNG
    (or from ``generator``, on ``x``'s device)."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    flip = torch.rand(b, device=x.device, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the defaults are the CIFAR-10 schedule of the papers' shared harness.

    ``lr_milestones`` (epochs) replaces the every-``lr_step`` decay when given, e.g. MACER's (200, 400).
    ``lr_schedule="step-epoch"`` decays one epoch later, as the Jeong et al. scripts' ``scheduler.step(epoch)``
    did, and ``lr_drop_once`` lowers the rate of one epoch only (CAT-RS's ImageNet run); see ``train.schedules``.
    ``augment="crop-flip"`` applies the papers' CIFAR-10 augmentation to every batch (see ``crop_flip``).
    ``precision`` bf16/fp16 runs the loss under autocast (fp16 with a gradient scaler); ``channels_last``
    stores the model and inputs in NHWC; ``deterministic`` makes torch refuse non-deterministic kernels.
    """

    epochs: int = 150
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 50
    lr_gamma: float = 0.1
    seed: int = 0
    lr_milestones: tuple[int, ...] = ()
    lr_schedule: str = "standard"
    lr_drop_once: int | None = None
    augment: str = "none"
    precision: str = "fp32"
    channels_last: bool = False
    deterministic: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lr_step"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; got {value!r}")
        for name in ("lr", "lr_gamma"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), above=0)
        for name in ("momentum", "weight_decay"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), at_least=0)
        check_integer("--seed", self.seed, minimum=0, maximum=MAX_SEED)
        milestones = tuple(self.lr_milestones)
        if any(not isinstance(e, int) or e < 1 for e in milestones) or list(milestones) != sorted(set(milestones)):
            raise ValueError(f"--lr-milestones must be increasing positive epochs; got {self.lr_milestones!r}")
        object.__setattr__(self, "lr_milestones", milestones)
        check_schedule(self.lr_schedule, self.lr_drop_once)
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"--augment must be one of {', '.join(AUGMENTATIONS)}; got {self.augment!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")


RECIPES: dict[str, dict] = {
    "cifar10": {},  # the TrainConfig defaults
    "mnist": dict(epochs=90, lr=0.01, lr_step=30),
    "imagenet": dict(epochs=90, lr_step=30),
    "macer": dict(epochs=440, batch_size=64, lr=0.01, weight_decay=5e-4, lr_milestones=(200, 400)),
    "catrs-cifar10": dict(lr_schedule="step-epoch"),
    "catrs-imagenet": dict(epochs=90, lr_step=30, lr_schedule="step-epoch", lr_drop_once=85),
}
"""The papers' schedules by name: the shared harness for CIFAR-10, MNIST and ImageNet (Jeong & Shin 2020 and
the repos that reuse it), MACER's own CIFAR-10 recipe (Zhai et al. 2020), and the CAT-RS runs' rates exactly as
their scripts ran them (``step-epoch``: each decay one epoch later; ImageNet's ``--lr_drop 85`` for one epoch).
Explicit settings override them."""
