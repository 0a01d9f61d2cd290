"""Built-in denoisers for denoised smoothing (``--denoiser NAME[:PATH]``)."""

from __future__ import annotations

import rs_plugins
from rs_plugins.types import DenoiserSpec

CARLINI = "Carlini et al., ICLR 2023, arXiv:2206.10550"
SALMAN = "Salman et al., NeurIPS 2020, arXiv:2003.01908"


def _diffusion(sigma: float, path: str, classifier_size: int | None = None):
    from .diffusion import DiffusionDenoiser  # diffusers is imported only when the denoiser is built

    return DiffusionDenoiser(sigma=sigma, path=path, classifier_size=classifier_size)


def _dncnn(sigma: float, path: str | None = None):
    from .dncnn import build

    return build(sigma, path)


@rs_plugins.hookimpl
def rs_denoisers():
    yield DenoiserSpec(
        "diffusion",
        _diffusion,
        summary="one-shot DDPM denoising (diffusers UNet2DModel + DDPMScheduler folder)",
        reference=CARLINI,
        requires=("diffusers",),
        extra="diffusion",
    )
    yield DenoiserSpec(
        "dncnn",
        _dncnn,
        summary="Salman et al.'s DnCNN trained by rs-plugins train-denoiser (mse, stability or classification)",
        reference=SALMAN,
    )
