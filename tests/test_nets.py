"""The papers' networks as --model factories: shapes, parameter counts, and the normalisation layer inside."""

from __future__ import annotations

import sys

import pytest
import torch

from rs_plugins import nets
from rs_plugins.errors import MissingDependencyError
from rs_plugins.host import Host
from rs_plugins.types import ModelRequest


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _resnet110_parameters(num_classes: int) -> int:
    """Counted by hand from He et al.'s CIFAR ResNet: 18 basic blocks per stage, 1x1 projections between stages."""
    conv, bn = (lambda i, o, k=3: i * o * k * k), (lambda c: 2 * c)
    total = conv(3, 16) + bn(16)
    for stage, c in enumerate((16, 32, 64)):
        for block in range(18):
            c_in = c // 2 if stage and not block else c
            total += conv(c_in, c) + bn(c) + conv(c, c) + bn(c)
            if c_in != c:
                total += conv(c_in, c, 1) + bn(c)
    return total + 64 * num_classes + num_classes


def test_cifar_resnet110_shape_parameters_and_normalization():
    model = nets.cifar_resnet110()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert _parameters(model) == _resnet110_parameters(10)
    assert 1.7e6 < _parameters(model) < 1.75e6  # "1.7M parameters", as the papers' tables say
    first = model[0]
    assert isinstance(first, nets.Normalize)
    assert first.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
    assert first.std.flatten().tolist() == pytest.approx([0.2023, 0.1994, 0.2010])  # Cohen et al.'s code


def test_cifar_resnet110_for_cifar100():
    model = nets.cifar_resnet110(num_classes=100, normalize="cifar100")
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 100)
    assert _parameters(model) == _resnet110_parameters(100)
    assert model[0].mean.flatten().tolist() == pytest.approx([0.5071, 0.4865, 0.4409])
    with pytest.raises(ValueError, match="normalize must be one of cifar10, cifar100, imagenet, none; got 'svhn'"):
        nets.cifar_resnet110(normalize="svhn")
    assert isinstance(nets.cifar_resnet110(normalize="none"), nets.CifarResNet)


def test_lenet_shape_and_parameters():
    model = nets.lenet()
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # conv 1->20 (5x5), conv 20->50 (5x5), 800->500, 500->10, each with a bias
    assert _parameters(model) == (25 * 20 + 20) + (20 * 25 * 50 + 50) + (800 * 500 + 500) + (500 * 10 + 10)
    assert not any(isinstance(m, nets.Normalize) for m in model.modules())  # the papers' MNIST models normalise nothing


def test_resnet50_shape_parameters_and_normalization():
    pytest.importorskip("torchvision")
    model = nets.resnet50().eval()
    assert _parameters(model) == 25_557_032  # torchvision's ResNet-50, as published
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)
    assert model[0].mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert model[0].std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])


def test_resnet50_without_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(MissingDependencyError, match=r"resnet50 needs torchvision: pip install 'rs-plugins\[cifar\]'"):
        nets.resnet50()


@pytest.mark.parametrize("name", ["cifar_resnet110", "lenet"])
def test_factories_load_as_model_options(name):
    model = Host().load_model(ModelRequest(f"rs_plugins.nets:{name}", kwargs={"num_classes": 3}), factory_weights=True)
    assert _parameters(model) > 0
    assert list(model.modules())[-1].out_features == 3
