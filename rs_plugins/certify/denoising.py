"""Denoised smoothing: the base classifier ``classifier(denoiser(x + delta))`` (Salman et al. 2020; Carlini et al.
2023). The composition is just another base classifier, so every certifier and attack applies unchanged and the
certificate is that of the composed model as run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PluginBuildError
from ..results.provenance import describe, weights_sha256


class DenoisedClassifier(nn.Module):
    """``classifier(denoiser(x))``, checking on every batch that the denoiser keeps the shape and stays finite.

    A broken denoiser fails with a message naming the plugin that built it, not deep inside the classifier. A
    denoiser with a ``classifier_size`` attribute (int) has its output resized to that square size (bicubic,
    antialiased) before the classifier, e.g. 32 x 32 CIFAR images for a 224 x 224 ViT.
    """

    def __init__(self, classifier: nn.Module, denoiser: nn.Module) -> None:
        super().__init__()
        self.classifier, self.denoiser = classifier, denoiser
        self.label = describe(denoiser, f"denoiser {type(denoiser).__name__}")

    def forward(self, x: Tensor) -> Tensor:
        out = self.denoise(x)
        size = getattr(self.denoiser, "classifier_size", None)
        if size:
            out = F.interpolate(out, size=(size, size), mode="bicubic", antialias=True)
        return self.classifier(out)

    def denoise(self, x: Tensor) -> Tensor:
        """The denoiser's clean-image estimate of ``x``, contract-checked."""
        out = self.denoiser(x)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise PluginBuildError(f"{self.label} returned {got} for input {tuple(x.shape)}; it must keep the shape")
        if not bool(torch.isfinite(out).all()):
            raise PluginBuildError(f"{self.label} returned NaN or infinite values; its output must be finite")
        return out


def parse_denoiser(text: str) -> tuple[str, str | None]:
    """``--denoiser NAME[:PATH]`` to (name, path or None)."""
    name, sep, path = text.partition(":")
    if not name or (sep and not path):
        raise ValueError(f"--denoiser takes NAME or NAME:PATH (e.g. diffusion:ddpm-cifar10-32); got {text!r}")
    return name, path or None


def smoothing_noise(noise: Any, model: nn.Module) -> Any:
    """The noise to draw for ``model``: its denoiser's ``smoothing_noise(noise)`` where it has one (the diffusion
    denoiser's own level under ``noise=authors``), else ``noise``; the radii stay those of ``noise``."""
    hook = getattr(getattr(model, "denoiser", None), "smoothing_noise", None)
    return hook(noise) if callable(hook) and noise is not None else noise


def denoiser_settings(name: str, path: str | None, options: dict[str, Any], denoiser: nn.Module) -> dict[str, Any]:
    """What the results depend on: the denoiser's name, path, options, weights' hash and own ``settings()``."""
    settings = {"name": name, "path": path, "options": options, "sha256": weights_sha256(denoiser)}
    extra = getattr(denoiser, "settings", None)
    if callable(extra):
        settings |= extra()
    return settings
