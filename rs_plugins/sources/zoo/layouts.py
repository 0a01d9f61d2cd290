"""The authors' checkpoint layouts, turned into rs-plugins models that take [0, 1] images and normalise inside.

- ``cohen``: ``{'arch', 'state_dict', 'epoch', 'optimizer'}`` from Cohen et al.'s ``train.py`` and every code base
  built on it (SmoothAdv, Consistency, SmoothMix, CAT-RS, Denoised Smoothing's classifiers). The model is
  ``Sequential(NormalizeLayer or InputCenterLayer, net)``; those layers keep their statistics as plain
  attributes, so the weights are ``1.<net>``, or ``1.module.<net>`` where ``net`` is a ``DataParallel``
  (the ImageNet ResNet-50s).
- ``macer``: ``{'net', 'epoch'}``: the bare ResNet-110, no normalisation layer.
- ``dncnn``: Denoised Smoothing's ``{'arch': 'cifar_dncnn', 'state_dict'}``, read by the DnCNN denoiser itself.

The CIFAR ResNet-110 of these code bases is Wei Yang's (bearpaw) ``resnet``; its weights are renamed onto
``rs_plugins.nets.CifarResNet``, which computes the same function (``tests/test_zoo.py`` checks it against
logits of the authors' network).
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor, nn

from ...errors import MissingDependencyError, SourceError
from ...file_checks import state_dict_diff
from ...nets import CifarResNet, Normalize

STEM = {"conv1": "stem.0", "bn1": "stem.1", "fc": "head.2"}
"""The bearpaw ResNet's layers outside the blocks, and their names in ``CifarResNet``."""

LAYOUTS = {
    "cohen": "state_dict",
    "macer": "net",
}
"""Classifier layouts and the key of the checkpoint dict that holds the weights."""


def network_state(found: Any, layout: str, what: str, path: str) -> dict[str, Tensor]:
    """The bare network's weights from an authors' checkpoint (normalisation and DataParallel prefixes removed)."""
    key = LAYOUTS[layout]
    if not isinstance(found, dict) or not isinstance(found.get(key), dict):
        held = f"keys {sorted(map(str, found))[:6]}" if isinstance(found, dict) else f"a {type(found).__name__}"
        raise SourceError(f"{what}: {path} holds {held}; expected the authors' checkpoint, a dict with {key!r}")
    state = {k.removeprefix("module."): v for k, v in found[key].items()}  # a DataParallel around everything
    if layout == "macer":
        return state
    if not any(k.startswith("1.") for k in state):
        raise SourceError(f"{what}: {path} has no '1.*' weights; expected Sequential(NormalizeLayer, network)")
    return {k[2:].removeprefix("module."): v for k, v in state.items() if k.startswith("1.")}


def from_bearpaw(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], int, int]:
    """Rename the bearpaw CIFAR ResNet's weights onto ``CifarResNet``: (weights, depth, classes)."""
    blocks = 1 + max((int(m[1]) for k in state if (m := re.match(r"layer1\.(\d+)\.", k))), default=-1)
    renamed = {}
    for key, value in state.items():
        if m := re.match(r"layer([123])\.(\d+)\.(.*)$", key):
            index = (int(m[1]) - 1) * blocks + int(m[2])
            renamed[f"blocks.{index}.{m[3].replace('downsample.', 'shortcut.')}"] = value
        else:
            head, _, rest = key.partition(".")
            renamed[f"{STEM.get(head, head)}.{rest}"] = value
    classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else 10
    return renamed, 6 * blocks + 2, classes


def first_layer(normalization: tuple | None) -> nn.Module | None:
    """The authors' first layer as a ``Normalize``: standardise (mean, std), centre (mean only), or none."""
    if normalization is None:
        return None
    kind, mean, *std = normalization
    return Normalize(mean, std[0] if kind == "standardize" else [1.0] * len(mean))


def build(entry: Any, found: Any, what: str, path: str) -> nn.Module:
    """The entry's network with the weights of ``found`` (the checkpoint as loaded), behind its first layer."""
    state = network_state(found, entry.layout, what, path)
    if entry.architecture == "cifar_resnet110":
        state, depth, classes = from_bearpaw(state)
        net = CifarResNet(depth, classes)
    elif entry.architecture == "resnet50":
        try:
            from torchvision.models import resnet50
        except ImportError as err:
            raise MissingDependencyError(f"{what} needs torchvision: pip install 'rs-plugins[cifar]' ({err})") from err
        classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else 1000
        net = resnet50(weights=None, num_classes=classes)
        net.input_shape = (3, 224, 224)
    else:
        raise SourceError(f"{what} is a {entry.architecture} ({entry.kind}), not a classifier --model can load")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError:
        diff = state_dict_diff(net, state)
        raise SourceError(f"{what}: {path} does not fit the authors' {entry.architecture}: {diff}") from None
    layer = first_layer(entry.normalization)
    return (net if layer is None else nn.Sequential(layer, net)).eval()
