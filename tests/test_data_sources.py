"""The torchvision data sources (MNIST, CIFAR-100, ImageNet) on small files the tests write in their formats."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from rs_plugins.errors import SourceError
from rs_plugins.sources.data import DATA_FORMS, load_data, load_imagenet, load_mnist
from rs_plugins.types import DataRequest

pytest.importorskip("torchvision")


def _write_idx(path, array: np.ndarray) -> None:
    """The idx format MNIST ships in: magic (0, 0, dtype 0x08 = uint8, ndim), big-endian sizes, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_raw_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {split: rng.integers(0, 256, size=(n, 28, 28)) for split, n in (("train", 4), ("t10k", 3))}
    for split, x in images.items():
        _write_idx(raw / f"{split}-images-idx3-ubyte", x)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(len(x)) % 10)
    train = load_data(DataRequest(f"mnist:{tmp_path}", "train"))
    test = load_data(DataRequest(f"mnist:{tmp_path}", "test"))
    assert (len(train), len(test)) == (4, 3)
    x, y = test[2]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 2
    assert torch.allclose(x[0], torch.from_numpy(images["t10k"][2]).float() / 255)


def test_mnist_missing_files_say_what_must_be_on_disk(tmp_path):
    with pytest.raises(SourceError, match=r"MNIST/raw \(the four idx files\) is missing") as info:
        load_mnist(str(tmp_path), "test")
    assert "nothing is downloaded at run time" in str(info.value) and "download=True" in str(info.value)


def test_cifar100_from_pickles(tmp_path, monkeypatch):
    cifar = pytest.importorskip("torchvision.datasets.cifar")
    # The real MD5 checks would refuse these files (they are not the published ones).
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = {}
    for name, n in (("train", 5), ("test", 3)):
        data[name] = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        entry = {"data": data[name], "fine_labels": [97, 3, 50, 1, 2][:n], "coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    train = load_data(DataRequest(f"cifar100:{tmp_path}", "train"))
    test = load_data(DataRequest(f"cifar100:{tmp_path}", "test"))
    assert (len(train), len(test)) == (5, 3)
    x, y = test[0]
    assert x.shape == (3, 32, 32) and y == 97
    assert torch.allclose(x, torch.from_numpy(data["test"][0].reshape(3, 32, 32)).float() / 255)


def test_cifar100_missing_folder(tmp_path):
    with pytest.raises(SourceError, match="cifar-100-python is missing or corrupt"):
        load_data(DataRequest(f"cifar100:{tmp_path}", "test"))


def test_imagenet_val_folder_resized_and_center_cropped(tmp_path):
    from PIL import Image

    for label, (name, color) in enumerate((("n01440764", (255, 0, 0)), ("n01443537", (0, 0, 255)))):
        (tmp_path / "val" / name).mkdir(parents=True)
        # A 300x400 image with a 1-pixel white border: resize 256 (short side) then center-crop 224 removes it.
        pixels = np.full((300, 400, 3), color, dtype=np.uint8)
        pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1] = 255, 255, 255, 255
        Image.fromarray(pixels).save(tmp_path / "val" / name / f"img{label}.{'png' if label else 'jpeg'}")
    test = load_data(DataRequest(f"imagenet:{tmp_path}", "test"))
    assert len(test) == 2 and test.targets == [0, 1]
    x, y = test[1]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 1
    assert torch.allclose(x, torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 224, 224))  # no border left


def test_imagenet_missing_folder(tmp_path):
    with pytest.raises(SourceError, match=r"val is missing or holds no class folders") as info:
        load_imagenet(str(tmp_path), "test")
    assert "nothing is downloaded at run time" in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "cifar100", "imagenet"])
def test_folder_forms_need_a_root(name):
    assert f"{name}:<root>" in DATA_FORMS or f"{name}[:<root>]" in DATA_FORMS  # the root is optional but mnist's
    with pytest.raises(SourceError, match=f"--data {name}:<root> needs the folder"):
        load_data(DataRequest(f"{name}:"))
