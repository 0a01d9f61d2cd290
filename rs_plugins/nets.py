"""Small built-in networks: the default model for the ``digits`` demo, and an input-normalization layer.

Each network declares the images it takes as ``input_shape`` (C, H, W; None for any size), which the runner and
the training loop check the data against before any work (``validation.check_input_shape``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """The built-in default model for the ``digits`` demo: three convolutions and a linear head.

    Adaptive pooling makes it work on any input of at least 2x2 pixels (digits are 1x8x8, CIFAR 3x32x32).

    Args:
        in_channels: image channels C.
        num_classes: number of logits K.
        width: channels of the first convolution; later layers use twice as many.

    Shape:
        x: (B, C, H, W) in [0, 1]; returns logits (B, K).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(8 * w, num_classes)
        self.input_shape = (in_channels, None, None)  # any size of at least 2x2

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the model's first layer.

    Smoothing noise is added in [0, 1] pixel space, so normalization belongs inside the model,
    after the noise, not in the data pipeline (Cohen et al.'s ``NormalizeLayer``).

    Args:
        mean: one value per channel.
        std: one positive value per channel.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            msg = f"Normalize: mean and std need one value per channel; got {len(mean)} and {len(std)} values"
            raise ValueError(msg)
        if any(s <= 0 for s in std):
            msg = f"Normalize: std must be positive; got {list(std)}"
            raise ValueError(msg)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1-projected) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR-10 ResNet of He et al. (2016) that the smoothing papers certify: three stages of 16, 32 and 64
    channels with (depth - 2) / 6 basic blocks each, 1x1 projection shortcuts where the shape changes; depth 110
    has 1.73M parameters, depth 20 has 0.27M.

    Args:
        depth: 6k + 2 layers (20, 32, 44, 56, 110).
        num_classes: number of logits K.
        in_channels: image channels C.

    Shape:
        x: (B, C, H, W) in [0, 1]; returns logits (B, K).
    """

    def __init__(self, depth: int = 110, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CifarResNet: depth must be 6k + 2 (20, 32, 44, 56, 110); got {depth}")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        layers, width = [], 16
        for stage, channels in enumerate((16, 32, 64)):
            for block in range(blocks):
                layers.append(_BasicBlock(width, channels, 2 if stage and not block else 1))
                width = channels
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
        self.input_shape = (in_channels, 32, 32)  # the CIFAR images it is designed for

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


# The papers' per-channel statistics (Cohen et al.'s code and every repository that reuses it). MNIST models there
# have no normalisation layer; CIFAR-100's are the usual training-set statistics (CAT-RS and others).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALIZATIONS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": None,
}
"""The ``normalize=`` choices of the built-in factories: a data set's statistics, or no normalisation layer."""


def _normalized(net: nn.Module, normalize: str) -> nn.Module:
    """``Sequential(Normalize, net)`` as the papers build their models (``normalize="none"``: ``net`` alone)."""
    if normalize not in NORMALIZATIONS:
        msg = f"normalize must be one of {', '.join(NORMALIZATIONS)}; got {normalize!r}"
        raise ValueError(msg)
    stats = NORMALIZATIONS[normalize]
    return net if stats is None else nn.Sequential(Normalize(*stats), net)


class LeNet(nn.Module):
    """The LeNet of the papers' MNIST experiments: two 5x5 convolutions (20 and 50 channels), each followed by
    2x2 max pooling, then 500 hidden units; 431,080 parameters for 10 classes.

    Args:
        num_classes: number of logits K.

    Shape:
        x: (B, 1, 28, 28) in [0, 1]; returns logits (B, K).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(4 * 4 * 50, 500), nn.ReLU(), nn.Linear(500, num_classes))
        self.input_shape = (1, 28, 28)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def cifar_resnet110(num_classes: int = 10, normalize: str = "cifar10") -> nn.Module:
    """``--model rs_plugins.nets:cifar_resnet110``: the papers' CIFAR ResNet-110 (1.73M parameters) behind their
    normalisation layer.

    Args:
        num_classes: 10 for CIFAR-10, 100 for CIFAR-100.
        normalize: whose statistics the first layer standardises with (see ``NORMALIZATIONS``); use
            ``"cifar100"`` with ``--data cifar100:<root>``.

    Shape:
        x: (B, 3, 32, 32) in [0, 1]; returns logits (B, K).
    """
    return _normalized(CifarResNet(110, num_classes), normalize)


def lenet(num_classes: int = 10) -> nn.Module:
    """``--model rs_plugins.nets:lenet``: the papers' MNIST LeNet; like theirs it normalises nothing.

    Shape:
        x: (B, 1, 28, 28) in [0, 1]; returns logits (B, K).
    """
    return LeNet(num_classes)


def resnet50(num_classes: int = 1000, normalize: str = "imagenet") -> nn.Module:
    """``--model rs_plugins.nets:resnet50``: torchvision's ResNet-50 (25.6M parameters, random weights), the papers'
    ImageNet model, behind the ImageNet normalisation layer. Needs torchvision (``pip install 'rs-plugins[cifar]'``).

    Shape:
        x: (B, 3, 224, 224) in [0, 1]; returns logits (B, K).
    """
    try:
        from torchvision.models import resnet50 as torchvision_resnet50
    except ImportError as err:
        from rs_plugins.errors import MissingDependencyError

        msg = f"--model rs_plugins.nets:resnet50 needs torchvision: pip install 'rs-plugins[cifar]' ({err})"
        raise MissingDependencyError(msg) from err
    net = torchvision_resnet50(weights=None, num_classes=num_classes)
    net.input_shape = (3, 224, 224)  # the papers' 224x224 crops (``--data imagenet:<root>`` makes them)
    return _normalized(net, normalize)
