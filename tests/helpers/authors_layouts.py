"""Synthetic checkpoints in the papers' authors' exact layouts (key names, nesting, prefixes), for the zoo tests.

The key names and shapes are facts about the authors' networks: Wei Yang's (bearpaw) CIFAR ResNet that Cohen et
al.'s ``code/archs/cifar_resnet.py`` and its descendants use, saved as ``Sequential(NormalizeLayer, net)`` by
``train.py`` in ``{'epoch', 'arch', 'state_dict', 'optimizer'}``.
"""

from __future__ import annotations

import io
import tarfile

import torch


def _bn(prefix: str, channels: int) -> dict[str, tuple]:
    return {f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def bearpaw_shapes(depth: int = 110, classes: int = 10) -> dict[str, tuple]:
    """The state-dict keys and shapes of the authors' ``resnet(depth=depth, num_classes=classes)``, in order."""
    blocks = (depth - 2) // 6
    shapes = {"conv1.weight": (16, 3, 3, 3), **_bn("bn1", 16)}
    width = 16
    for stage, planes in enumerate((16, 32, 64), start=1):
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            shapes[f"{p}.conv1.weight"] = (planes, width, 3, 3)
            shapes |= _bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            shapes |= _bn(f"{p}.bn2", planes)
            if (stage > 1 and block == 0) or width != planes:
                shapes[f"{p}.downsample.0.weight"] = (planes, width, 1, 1)
                shapes |= _bn(f"{p}.downsample.1", planes)
            width = planes
    return shapes | {"fc.weight": (classes, 64), "fc.bias": (classes,)}


def bearpaw_state(depth: int = 110, classes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights (and batch-norm statistics) in the authors' key names, drawn from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in bearpaw_shapes(depth, classes).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("running_mean", "bias")) or (".bn" in key or "bn1" in key or "downsample.1" in key):
            state[key] = 0.1 * torch.randn(shape, generator=g) + (1.0 if key.endswith("weight") else 0.0)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return state


def cohen_checkpoint(state: dict[str, torch.Tensor], *, arch: str = "cifar_resnet110", data_parallel: bool = False):
    """The dict Cohen et al.'s ``train.py`` saves for ``Sequential(NormalizeLayer, net)`` (``DataParallel(net)``
    for ImageNet): weights under ``1.`` (``1.module.``); the NormalizeLayer holds no tensors."""
    prefix = "1.module." if data_parallel else "1."
    return {"epoch": 90, "arch": arch, "state_dict": {prefix + k: v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "momentum": 0.9, "params": [0, 1]}]}}


def legacy_bytes(obj) -> bytes:
    """``obj`` as torch.save wrote files before torch 1.6 (the authors' checkpoints are from 2019)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def tar_bytes(files: dict[str, bytes], mode: str = "w") -> bytes:
    """A tar archive (``mode`` "w:gz" for .tar.gz) holding ``files`` (archive path -> bytes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
