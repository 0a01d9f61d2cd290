"""Built-in denoisers for denoised smoothing (``--denoiser NAME[:PATH]``)."""

from __future__ import annotations

import rs_plugins
from rs_plugins.sources import zoo
from rs_plugins.types import DenoiserSpec

CARLINI = "Carlini et al., ICLR 2023, arXiv:2206.10550"
SALMAN = "Salman et al., NeurIPS 2020, arXiv:2003.01908"


def _diffusion(sigma: float, path: str, classifier_size: int | None = None, noise: str = "exact",
               schedule: str | None = None, steps: int | None = None, rescale_timesteps: bool | None = None,
               heads: int | None = None, head_channels: int | None = None):  # fmt: skip
    from .diffusion import DiffusionDenoiser  # diffusers is imported only when a diffusers folder is loaded

    if path is not None and path.startswith(zoo.PREFIX):  # the authors' checkpoint, downloaded once (rs-plugins zoo)
        path = str(zoo.denoiser_file(path.removeprefix(zoo.PREFIX), "diffusion"))
    return DiffusionDenoiser(sigma, path, classifier_size, noise, schedule, steps, rescale_timesteps, heads,
                             head_channels)  # fmt: skip


def _dncnn(sigma: float, path: str | None = None):
    from .dncnn import build

    return build(sigma, path)


@rs_plugins.hookimpl
def rs_denoisers():
    yield DenoiserSpec(
        "diffusion",
        _diffusion,
        summary="one-shot DDPM denoising (improved-/guided-diffusion .pt, or a diffusers UNet2DModel folder)",
        reference=CARLINI,
    )
    yield DenoiserSpec(
        "dncnn",
        _dncnn,
        summary="Salman et al.'s DnCNN trained by rs-plugins train-denoiser (mse, stability or classification)",
        reference=SALMAN,
    )
