"""Small built-in networks: the default model for the ``digits`` demo, and an input-normalization layer."""

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

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))
