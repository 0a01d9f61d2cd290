"""One-shot diffusion denoising (Carlini et al., "(Certified!!) Adversarial Robustness for Free!", ICLR 2023).

The diffusion model works on 2x - 1, where the smoothing noise has standard deviation 2 sigma. The timestep t* is
the first t >= 1 with sqrt((1 - abar_t) / abar_t) >= 2 sigma (the authors' ``certify.py``); then
x_t = sqrt(abar_t*) (2 (x + delta) - 1) has the noise level the model was trained for at t*, one forward pass
predicts epsilon, and x0 = sqrt(1 / abar) x_t - sqrt(1 / abar - 1) eps (the authors' ``pred_xstart``), clipped to
[-1, 1], maps back to [0, 1]. Two kinds of checkpoint load: a diffusers folder (``UNet2DModel`` +
``DDPMScheduler``) and an openai improved-/guided-diffusion ``.pt`` file (the ADM UNet of ``adm.py``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.errors import MissingDependencyError
from rs_plugins.sources import fetch
from rs_plugins.validation import check_number

OPTION = "--denoiser diffusion:PATH"
LOADS = (
    "a diffusers save_pretrained folder: config.json + scheduler_config.json (e.g. google/ddpm-cifar10-32), "
    "or unet/ + scheduler/; or an improved-/guided-diffusion .pt file"
)
NOISE = ("exact", "authors")
ADM_OPTIONS = ("schedule", "steps", "rescale_timesteps", "heads", "head_channels")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["*.json", "*.safetensors", "*.bin"]  # the UNet and scheduler, not a repository's images or Flax weights


def from_hub(path: str) -> str:
    """A Hugging Face hub id (``OWNER/NAME`` that is no local path) as a local folder in the hub's cache, the one
    diffusers' ``from_pretrained`` uses: downloaded on first use, taken from the cache when offline (a hub id not
    in the cache then meets the message a missing folder gets); anything else is returned as given."""
    if Path(path).exists() or not HUB_ID.match(path):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return snapshot_download(path, allow_patterns=HUB_FILES, local_files_only=fetch.offline())
    except LocalEntryNotFoundError:
        if fetch.offline():
            return path
        raise ValueError(f"{OPTION}: cannot reach the Hugging Face hub for {path!r}; check the connection") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        msg = f"{OPTION}: cannot fetch {path!r} from the Hugging Face hub ({type(err).__name__}: {err})"
        raise ValueError(msg.splitlines()[0]) from None


def _folders(path: str) -> tuple[Path, Path]:
    """The UNet and scheduler folders of a diffusers checkpoint (a hub id fetched into the hub's cache first), or a
    one-line refusal."""
    root = Path(from_hub(path))
    if not root.is_dir():
        raise ValueError(f"{OPTION}: no file or directory {path!r}; give {LOADS}")
    for unet, scheduler in ((root, root), (root / "unet", root / "scheduler")):
        if (unet / "config.json").is_file() and (scheduler / "scheduler_config.json").is_file():
            return unet, scheduler
    raise ValueError(
        f"{OPTION}: {path!r} is not a diffusers folder (no config.json + scheduler_config.json); give {LOADS}"
    )


def load_diffusers(path: str) -> tuple[nn.Module, Tensor]:
    """A diffusers ``UNet2DModel`` (eval mode) and its ``DDPMScheduler``'s abar (float32, as diffusers keeps it)."""
    unet_dir, scheduler_dir = _folders(path)
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError as err:
        msg = f"{OPTION}: a diffusers folder needs diffusers: pip install 'rs-plugins[diffusion]' ({err})"
        raise MissingDependencyError(msg) from err
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False).eval()  # no accelerate
        scheduler = DDPMScheduler.from_pretrained(scheduler_dir)
    except (OSError, ValueError, TypeError, KeyError) as err:
        msg = f"{OPTION}: {path!r} does not hold a UNet2DModel + DDPMScheduler ({type(err).__name__}: {err})"
        raise ValueError(msg.splitlines()[0]) from None
    if scheduler.config.prediction_type != "epsilon":
        msg = f"{OPTION}: the scheduler predicts {scheduler.config.prediction_type!r}; only 'epsilon' is supported"
        raise ValueError(msg)
    return unet, scheduler.alphas_cumprod


def timestep_for(alphas_cumprod: Tensor, sigma: float) -> int:
    """The first t >= 1 whose noise level sqrt((1 - abar_t) / abar_t) in [-1, 1] units reaches 2 sigma, else -1.

    The authors' loop starts at t = 1 (t = 0 would be a step the model barely denoises); so does this one.
    """
    abar = alphas_cumprod.double()
    reached = torch.nonzero(((1 - abar[1:]) / abar[1:]).sqrt() >= 2 * sigma)
    return int(reached[0]) + 1 if len(reached) else -1


class DiffusionDenoiser(nn.Module):
    """Denoises x + delta with one forward pass of an epsilon-prediction UNet at the timestep matching sigma.

    Args:
        sigma: the smoothing noise level in [0, 1] pixel units.
        path: a diffusers ``save_pretrained`` folder, a Hugging Face hub id holding one (``google/ddpm-cifar10-32``,
            fetched into the hub's cache on first use), or an improved-/guided-diffusion ``.pt`` state dict.
        classifier_size: resize the denoised images to this square size (bicubic, antialiased) before the
            classifier, as the authors do for a 224 x 224 ViT; None keeps the size.
        noise: ``exact`` smooths with sigma (Algorithm 1 of the paper); ``authors`` with the model's own level at
            t*, sigma_t* = sqrt((1 - abar_t*) / abar_t*) / 2 >= sigma, as the authors' ``q_sample`` does (the
            certificate still uses sigma, which is sound because sigma_t* >= sigma).
        schedule, steps, rescale_timesteps, heads, head_channels: for a ``.pt`` file, the flags it was trained
            with; the released checkpoints' are known (``adm_files.PRESETS``).
    """

    def __init__(self, sigma: float, path: str, classifier_size: int | None = None, noise: str = "exact",
                 schedule: str | None = None, steps: int | None = None, rescale_timesteps: bool | None = None,
                 heads: int | None = None, head_channels: int | None = None) -> None:  # fmt: skip
        super().__init__()
        self.sigma = check_number("sigma", sigma, above=0)
        if classifier_size is not None and not (isinstance(classifier_size, int) and classifier_size > 0):
            msg = f"--denoiser-option classifier_size must be a positive integer (pixels); got {classifier_size!r}"
            raise ValueError(msg)
        if noise not in NOISE:
            raise ValueError(f"--denoiser-option noise must be one of {', '.join(NOISE)}; got {noise!r}")
        self.classifier_size, self.noise = classifier_size, noise
        adm = dict(schedule=schedule, steps=steps, rescale_timesteps=rescale_timesteps, heads=heads,
                   head_channels=head_channels)  # fmt: skip
        if Path(path).suffix in CHECKPOINT_SUFFIXES:
            from .adm_files import load_adm

            self.unet, abar, self.time_scale, self.source = load_adm(path, adm)
            self.channels = self.unet.config.in_channels
            out_channels = self.unet.config.out_channels
        else:
            given = [k for k, v in adm.items() if v is not None]
            if given:
                raise ValueError(f"--denoiser-option {', '.join(given)}: only for an improved-/guided-diffusion .pt")
            self.unet, abar = load_diffusers(path)
            self.time_scale, self.source = None, {"format": "diffusers"}
            self.channels, out_channels = int(self.unet.config.in_channels), self.unet.config.out_channels
        if out_channels not in (self.channels, 2 * self.channels):
            msg = (f"{OPTION}: the UNet maps {self.channels} to {out_channels} channels; expected "
                   f"{self.channels} (epsilon) or {2 * self.channels} (epsilon and a learned variance)")  # fmt: skip
            raise ValueError(msg)
        self.t = timestep_for(abar, self.sigma)
        if self.t < 0:
            largest = math.sqrt((1 - float(abar[-1])) / float(abar[-1])) / 2
            msg = (
                f"--sigma {self.sigma:g}: 2 sigma = {2 * self.sigma:g} exceeds the largest noise level of the "
                f"diffusion schedule ({2 * largest:.4g} at t = {len(abar) - 1}); use sigma <= {largest:.4g}"
            )
            raise ValueError(msg)
        self.alpha_bar = float(abar[self.t])  # float32 in a diffusers scheduler, float64 in the authors' code
        self.level = math.sqrt((1 - self.alpha_bar) / self.alpha_bar) / 2  # sigma_t*, in [0, 1] pixel units
        self.smoothing_sigma = self.level if noise == "authors" else self.sigma

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.channels:
            msg = f"{OPTION}: the UNet takes {self.channels}-channel images; the data has {x.shape[1]} channels"
            raise ValueError(msg)
        x_t = (2 * x - 1) * math.sqrt(self.alpha_bar)
        if self.time_scale is None:  # diffusers: the integer timestep
            out = self.unet(x_t, self.t).sample
        else:  # improved-diffusion's rescale_timesteps calls the UNet with t * 1000 / T
            out = self.unet(x_t, torch.full((len(x),), self.t * self.time_scale, device=x.device))
        eps = out[:, : self.channels]  # a learned-variance UNet: epsilon comes first
        x0 = math.sqrt(1 / self.alpha_bar) * x_t - math.sqrt(1 / self.alpha_bar - 1) * eps
        return x0.clamp(-1, 1).add(1).div(2)

    def smoothing_noise(self, noise: Any) -> Any:
        """The noise the run draws: ``noise`` itself, or under ``noise=authors`` Gaussian draws at sigma_t*."""
        if self.noise == "exact":
            return noise
        if not isinstance(noise, GaussianNoise):
            msg = f"--denoiser-option noise=authors draws the diffusion's own Gaussian noise; got --noise {noise!r}"
            raise ValueError(msg + ", use --noise gaussian")
        return AuthorsNoise(noise.sigma, self.level)

    def settings(self) -> dict[str, Any]:
        """The timestep, its abar and noise level, the noise the run smooths with and the checkpoint's settings."""
        level = 2 * self.level
        return {"t": self.t, "alpha_bar": self.alpha_bar, "noise_level": level, "classifier_size": self.classifier_size,
                "noise": self.noise, "smoothing_sigma": self.smoothing_sigma, **self.source}  # fmt: skip


class AuthorsNoise(GaussianNoise):
    """Gaussian draws at the diffusion's level sigma_t* (the authors' ``q_sample`` at t*) while the radii stay those
    of sigma <= sigma_t*: smoothing at sigma_t* certifies sigma_t* Phi^-1(p), so sigma Phi^-1(p) is sound."""

    def __init__(self, sigma: float, level: float) -> None:
        super().__init__(sigma)
        self.level = check_number("level", level, above=0)
        if level < sigma:
            msg = f"the diffusion's noise level {level:g} is below sigma {sigma:g}; the radii would be unsound"
            raise ValueError(msg)

    def sample(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return noise.mul_(self.level).add_(x)

    def __repr__(self) -> str:
        return f"AuthorsNoise(sigma={self.sigma}, drawn at {self.level})"
