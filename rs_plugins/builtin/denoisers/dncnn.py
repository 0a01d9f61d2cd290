"""Salman et al.'s trained denoiser (Denoised Smoothing, NeurIPS 2020, arXiv:2003.01908): a DnCNN.

The network (Zhang et al. 2017, as configured in the authors' ``code/archs/dncnn.py``): a 3 x 3 convolution with
bias and a ReLU, ``depth - 2`` blocks of bias-free 3 x 3 convolution, batch norm (eps 1e-4, momentum 0.95) and
ReLU, and a bias-free 3 x 3 convolution back to the image's channels. It predicts the noise, so
D(x) = x - net(x). Convolutions start orthogonal and the last one at zero, so an untrained DnCNN is the identity.
With depth 17, width 64 and 3 channels it has 558,400 parameters, as the authors' ``cifar_dncnn``.

Trained by ``rs-plugins train-denoiser``; ``--denoiser dncnn:PATH`` loads the ``denoiser.pt`` it writes (or its
directory), or one of the authors' own ``cifar_dncnn`` checkpoints (``dncnn:zoo:NAME`` fetches theirs). The network
and that file's format live in ``rs_plugins.train.denoiser``, beside the trainer that writes it (this plugin is the
part that runs it).
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor, nn

from rs_plugins.sources import zoo
from rs_plugins.train.denoiser import FILE, OPTION, load_dncnn
from rs_plugins.validation import check_number


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
    """``path``: a file or folder, or ``zoo:NAME``, one of the authors' released DnCNNs (``rs-plugins zoo``)."""
    if path is None:
        raise ValueError(f"{OPTION}: give the trained weights, e.g. --denoiser dncnn:checkpoints/{FILE}")
    if path.startswith(zoo.PREFIX):
        path = str(zoo.denoiser_file(path.removeprefix(zoo.PREFIX), "dncnn"))
    return DnCNNDenoiser(sigma, path)
