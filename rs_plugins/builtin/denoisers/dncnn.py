"""Salman et al.'s trained denoiser (Denoised Smoothing, NeurIPS 2020, arXiv:2003.01908): a DnCNN.

The network (Zhang et al. 2017, as configured in the authors' ``code/archs/dncnn.py``): a 3 x 3 convolution with
bias and a ReLU, ``depth - 2`` blocks of bias-free 3 x 3 convolution, batch norm (eps 1e-4, momentum 0.95) and
ReLU, and a bias-free 3 x 3 convolution back to the image's channels. It predicts the noise, so
D(x) = x - net(x). Convolutions start orthogonal and the last one at zero, so an untrained DnCNN is the identity.
With depth 17, width 64 and 3 channels it has 558,400 parameters, as the authors' ``cifar_dncnn``.

Trained by ``rs-plugins train-denoiser`` (``rs_plugins.denoiser_training``); ``--denoiser dncnn:PATH`` loads the
``denoiser.pt`` it writes (or its directory), or one of the authors' own ``cifar_dncnn`` checkpoints.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from rs_plugins.validation import check_number, load_weights_only

OPTION = "--denoiser dncnn:PATH"
FILE = "denoiser.pt"  # what train-denoiser writes in its --checkpoint-dir
FORMAT = "rs-plugins dncnn"
EXPECTED = f"a DnCNN denoiser ({FILE} from rs-plugins train-denoiser, or the authors' cifar_dncnn checkpoint)"


class DnCNN(nn.Module):
    """The residual denoising CNN: ``x - layers(x)``, unclipped (``DnCNNDenoiser`` and train-denoiser clip it).

    Shape:
        x: (B, C, H, W), any values (noisy images); returns the same shape.
    """

    def __init__(self, channels: int = 3, depth: int = 17, width: int = 64) -> None:
        super().__init__()
        if not (isinstance(depth, int) and depth >= 2):
            raise ValueError(f"--depth must be an integer >= 2 (convolutions, first and last included); got {depth!r}")
        self.channels, self.depth, self.width = channels, depth, width
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width, 1e-4, 0.95)]
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(width, channels, 3, padding=1, bias=False))
        self.layers = nn.Sequential(*layers)
        for module in self.layers:
            if isinstance(module, nn.Conv2d):
                nn.init.orthogonal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.layers[-1].weight)  # the predicted noise starts at 0: D starts as the identity

    def forward(self, x: Tensor) -> Tensor:
        return x - self.layers(x)

    def architecture(self) -> dict[str, int]:
        return {"channels": self.channels, "depth": self.depth, "width": self.width}


def shape_of(state: dict[str, Tensor]) -> dict[str, int]:
    """(channels, depth, width) of a DnCNN state dict, read from its convolutions' weights."""
    convs = sorted(int(m[1]) for k in state if (m := re.fullmatch(r"layers\.(\d+)\.weight", k)) and state[k].dim() == 4)
    if not convs or "layers.0.bias" not in state:
        raise KeyError("layers.0.weight")
    width, channels = state[f"layers.{convs[0]}.weight"].shape[:2]
    return {"channels": int(channels), "depth": len(convs), "width": int(width)}


def load_dncnn(path: str | Path, option: str = OPTION) -> tuple[DnCNN, dict[str, Any]]:
    """The DnCNN in ``path`` (a file or a directory holding ``denoiser.pt``) and what the file says about it.

    The architecture is read from the weights; a file of another architecture is refused naming ``option``.
    """
    file = Path(path) / FILE if Path(path).is_dir() else Path(path)
    if not file.exists():
        raise ValueError(f"{option}: no file {str(file)!r}; give {EXPECTED}")
    state, meta = _state_dict(file, option)
    try:
        net = DnCNN(**shape_of(state))
        net.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as err:
        keys = ", ".join(list(state)[:3]) if isinstance(state, dict) else type(state).__name__
        msg = f"{option}: another architecture's weights in {file} ({keys}, ...), not a DnCNN's; expected "
        raise ValueError(msg + EXPECTED + f" ({type(err).__name__})") from None
    return net, meta


def _state_dict(path: Path, option: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The DnCNN weights in ``path`` and what the file says about them (trained sigma, objective, ...)."""
    found = load_weights_only(path, option, EXPECTED)
    if not isinstance(found, dict):
        raise ValueError(f"{option}: {path} holds a {type(found).__name__}; expected {EXPECTED}")
    meta: dict[str, Any] = {}
    if found.get("format") == FORMAT:  # ours
        meta = {k: v for k, v in found.items() if k not in ("format", "state_dict")}
        state = found["state_dict"]
    elif "state_dict" in found and "arch" in found:  # the authors' train_denoiser.py checkpoint
        if found["arch"] not in ("cifar_dncnn", "cifar_dncnn_wide", "imagenet_dncnn"):
            raise ValueError(f"{option}: {path} holds the authors' {found['arch']!r}, not a DnCNN; expected {EXPECTED}")
        meta = {"arch": found["arch"]}
        state = {re.sub(r"^(module\.)?dncnn\.", "layers.", k): v for k, v in found["state_dict"].items()}
    elif "model" in found and "optimizer" in found:
        raise ValueError(f"{option}: {path} is a training checkpoint (checkpoint.pt); give the {FILE} next to it")
    else:
        state = found
    return state, meta


class DnCNNDenoiser(nn.Module):
    """A trained DnCNN as a denoiser plugin: D(x + delta), clipped to [0, 1] (the hook's contract).

    Clipping only moves outputs toward the clean image's range, so it never increases the squared error.

    Args:
        sigma: the smoothing noise level; a denoiser trained for another sigma is used with a warning.
        path: ``denoiser.pt`` written by ``rs-plugins train-denoiser``, its directory, or an authors' checkpoint.
    """

    def __init__(self, sigma: float, path: str) -> None:
        super().__init__()
        self.sigma = check_number("sigma", sigma, above=0)
        self.net, self.meta = load_dncnn(path, OPTION)
        self.net.eval()
        trained = self.meta.get("sigma")
        if trained is not None and abs(float(trained) - self.sigma) > 1e-12:
            msg = f"{OPTION}: {path} was trained for sigma {trained:g}; --sigma is {self.sigma:g}"
            warnings.warn(msg, stacklevel=2)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.net.channels:
            msg = f"{OPTION}: the DnCNN takes {self.net.channels}-channel images; the data has {x.shape[1]} channels"
            raise ValueError(msg)
        return self.net(x).clamp(0, 1)

    def settings(self) -> dict[str, Any]:
        """The architecture and how the weights were trained, for the results' sidecar."""
        shape = self.net.architecture()
        trained = {k: v for k, v in self.meta.items() if k not in shape}
        return {"architecture": "dncnn", **shape, "trained": trained or None}


def build(sigma: float, path: str | None = None) -> DnCNNDenoiser:
    if path is None:
        raise ValueError(f"{OPTION}: give the trained weights, e.g. --denoiser dncnn:checkpoints/{FILE}")
    return DnCNNDenoiser(sigma, path)
