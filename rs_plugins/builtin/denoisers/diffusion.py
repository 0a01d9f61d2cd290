"""One-shot diffusion denoising (Carlini et al., "(Certified!!) Adversarial Robustness for Free!", ICLR 2023).

The diffusion model works on 2x - 1, where the smoothing noise has standard deviation 2 sigma. The timestep t* is
the first t with sqrt((1 - abar_t) / abar_t) >= 2 sigma (the authors' ``certify.py``); then
x_t = sqrt(abar_t*) (2 (x + delta) - 1) has the noise level the model was trained for at t*, one forward pass
predicts epsilon, and x0 = (x_t - sqrt(1 - abar_t*) eps) / sqrt(abar_t*), clipped to [-1, 1], maps back to [0, 1].
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rs_plugins.schemas import DiffusersSchedulerConfig, DiffusersUNetConfig, check_record
from rs_plugins.validation import check_number

OPTION = "--denoiser diffusion:DIR"
LOADS = (
    "a diffusers save_pretrained folder: config.json + scheduler_config.json (e.g. google/ddpm-cifar10-32), "
    "or unet/ + scheduler/"
)


def _folders(path: str) -> tuple[Path, Path]:
    """The UNet and scheduler folders of a diffusers checkpoint, or a one-line refusal."""
    root = Path(path)
    if root.is_file() and root.suffix in (".pt", ".pth", ".ckpt"):
        msg = (f"{OPTION}: {path!r} is a .pt file (e.g. improved-/guided-diffusion), which diffusers cannot "
               f"convert; give {LOADS}")  # fmt: skip
        raise ValueError(msg)
    if not root.is_dir():
        raise ValueError(f"{OPTION}: no directory {path!r}; give {LOADS}")
    for unet, scheduler in ((root, root), (root / "unet", root / "scheduler")):
        if (unet / "config.json").is_file() and (scheduler / "scheduler_config.json").is_file():
            _check_config(unet / "config.json", DiffusersUNetConfig)
            _check_config(scheduler / "scheduler_config.json", DiffusersSchedulerConfig)
            return unet, scheduler
    raise ValueError(
        f"{OPTION}: {path!r} is not a diffusers folder (no config.json + scheduler_config.json); give {LOADS}"
    )


def _check_config(path: Path, schema: type) -> None:
    """The fields of a diffusers config the denoiser relies on, with one line naming the file and the field."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{OPTION}: cannot read {path} as JSON ({err}); give {LOADS}") from None
    check_record(record, schema, f"{OPTION}: {path}", ValueError)


def timestep_for(alphas_cumprod: Tensor, sigma: float) -> int:
    """The first t whose noise level sqrt((1 - abar_t) / abar_t) in [-1, 1] units reaches 2 sigma, else -1."""
    abar = alphas_cumprod.double()
    reached = torch.nonzero(((1 - abar) / abar).sqrt() >= 2 * sigma)
    return int(reached[0]) if len(reached) else -1


class DiffusionDenoiser(nn.Module):
    """Denoises x + delta with one forward pass of a DDPM epsilon-prediction UNet at the timestep matching sigma.

    Args:
        sigma: the smoothing noise level in [0, 1] pixel units.
        path: a diffusers ``save_pretrained`` folder with a ``UNet2DModel`` and a ``DDPMScheduler``.
        classifier_size: resize the denoised images to this square size (bicubic, antialiased) before the
            classifier, as the authors do for a 224 x 224 ViT; None keeps the size.
    """

    def __init__(self, sigma: float, path: str, classifier_size: int | None = None) -> None:
        super().__init__()
        from diffusers import DDPMScheduler, UNet2DModel

        self.sigma = check_number("sigma", sigma, above=0)
        if classifier_size is not None and not (isinstance(classifier_size, int) and classifier_size > 0):
            msg = f"--denoiser-option classifier_size must be a positive integer (pixels); got {classifier_size!r}"
            raise ValueError(msg)
        self.classifier_size = classifier_size
        unet_dir, scheduler_dir = _folders(path)
        try:
            self.unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False).eval()  # no accelerate
            scheduler = DDPMScheduler.from_pretrained(scheduler_dir)
        except (OSError, ValueError, TypeError, KeyError) as err:
            msg = f"{OPTION}: {path!r} does not hold a UNet2DModel + DDPMScheduler ({type(err).__name__}: {err})"
            raise ValueError(msg.splitlines()[0]) from None
        if scheduler.config.prediction_type != "epsilon":
            msg = f"{OPTION}: the scheduler predicts {scheduler.config.prediction_type!r}; only 'epsilon' is supported"
            raise ValueError(msg)
        self.channels = int(self.unet.config.in_channels)
        if self.unet.config.out_channels not in (self.channels, 2 * self.channels):
            msg = (f"{OPTION}: the UNet maps {self.channels} to {self.unet.config.out_channels} channels; expected "
                   f"{self.channels} (epsilon) or {2 * self.channels} (epsilon and a learned variance)")  # fmt: skip
            raise ValueError(msg)
        abar = scheduler.alphas_cumprod
        self.t = timestep_for(abar, self.sigma)
        if self.t < 0:
            largest = math.sqrt((1 - float(abar[-1])) / float(abar[-1])) / 2
            msg = (
                f"--sigma {self.sigma:g}: 2 sigma = {2 * self.sigma:g} exceeds the largest noise level of the "
                f"diffusion schedule ({2 * largest:.4g} at t = {len(abar) - 1}); use sigma <= {largest:.4g}"
            )
            raise ValueError(msg)
        self.alpha_bar = float(abar[self.t])  # float32 in the scheduler, as DDPMScheduler.step uses it

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.channels:
            msg = f"{OPTION}: the UNet takes {self.channels}-channel images; the data has {x.shape[1]} channels"
            raise ValueError(msg)
        scale, rest = math.sqrt(self.alpha_bar), math.sqrt(1 - self.alpha_bar)
        x_t = (2 * x - 1) * scale
        eps = self.unet(x_t, self.t).sample[:, : self.channels]  # a learned-variance UNet: epsilon comes first
        x0 = (x_t - rest * eps) / scale
        return x0.clamp(-1, 1).add(1).div(2)

    def settings(self) -> dict[str, Any]:
        """The timestep and its abar for the results' sidecar."""
        level = math.sqrt((1 - self.alpha_bar) / self.alpha_bar)
        return {"t": self.t, "alpha_bar": self.alpha_bar, "noise_level": level, "classifier_size": self.classifier_size}
