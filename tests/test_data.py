"""Built-in data sources (digits, tensor files, CIFAR-10 on disk) and the choice of indices to certify."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch

from rs_plugins.errors import MissingDependencyError, SourceError
from rs_plugins.sources.data import (
    DATA_FORMS,
    check_images,
    load_cifar10,
    load_data,
    load_digits,
    load_tensor_file,
    select_indices,
)
from rs_plugins.types import DataRequest

# -- digits -----------------------------------------------------------------------------------------------


def test_digits_splits_partition_the_1797_images():
    train, test = load_digits("train"), load_digits("test")
    assert len(train) + len(test) == 1797
    assert len(test) == 360
    train_rows = {tuple(x.flatten().tolist()) for x in train.tensors[0]}
    test_rows = {tuple(x.flatten().tolist()) for x in test.tensors[0]}
    assert len(train_rows) == len(train) and len(test_rows) == len(test)  # no duplicate images to hide overlap
    assert not train_rows & test_rows


def test_digits_shapes_dtypes_and_ranges():
    x, y = load_digits("test").tensors
    assert x.shape == (360, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (360,) and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1
    assert set(y.tolist()) == set(range(10))
    check_images(x)


def test_digits_split_is_deterministic():
    a, b = load_digits("train"), load_digits("train")
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])


def test_digits_rejects_unknown_split():
    with pytest.raises(ValueError, match=r"split must be one of train, test; got 'val'"):
        load_digits("val")


# -- tensor files -----------------------------------------------------------------------------------------


def _images(n=6):
    return torch.rand(n, 3, 4, 4), torch.arange(n) % 3


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_tensor_file_round_trip(tmp_path, suffix):
    x, y = _images()
    path = str(tmp_path / f"batch{suffix}")
    if suffix == ".pt":
        torch.save({"x": x, "y": y}, path)
    else:
        np.savez(path, x=x.numpy(), y=y.numpy().astype(np.int32))
    data = load_data(DataRequest(path, split="train"))  # the split is ignored: the file is the split
    assert len(data) == 6
    assert torch.equal(data.tensors[0], x) and torch.equal(data.tensors[1], y)
    assert data.tensors[1].dtype == torch.int64


def test_tensor_file_float64_images_become_float32(tmp_path):
    path = str(tmp_path / "b.npz")
    np.savez(path, x=np.full((2, 1, 3, 3), 0.5), y=np.array([0, 1]))
    assert load_tensor_file(path).tensors[0].dtype == torch.float32


@pytest.mark.parametrize(
    ("x", "y", "error", "match"),
    [
        (torch.full((2, 1, 4, 4), 255.0), torch.tensor([0, 1]), ValueError, r"got values in \[255, 255\]"),
        (torch.full((2, 1, 4, 4), 255, dtype=torch.uint8), torch.tensor([0, 1]), ValueError, "scale uint8 images by"),
        (torch.rand(1, 4, 4), torch.tensor([0]), ValueError, r"shape \(1, 4, 4\)"),
        (torch.rand(2, 1, 4, 4), torch.tensor([0, 1, 2]), SourceError, "2 images but 3 labels"),
        (torch.rand(2, 1, 4, 4), torch.tensor([0.0, 1.0]), SourceError, "expected 1-D integer labels"),
        (torch.rand(2, 1, 4, 4), torch.tensor([[0, 1]]), SourceError, "expected 1-D integer labels"),
    ],
)
def test_tensor_file_bad_contents(tmp_path, x, y, error, match):
    path = str(tmp_path / "bad.pt")
    torch.save({"x": x, "y": y}, path)
    with pytest.raises(error, match=match) as info:
        load_tensor_file(path)
    assert "--data" in str(info.value)


def test_tensor_file_missing_keys(tmp_path):
    path = str(tmp_path / "bad.npz")
    np.savez(path, images=np.zeros((1, 1, 2, 2)), y=np.zeros(1, dtype=np.int64))
    with pytest.raises(SourceError, match=r"--data: .* holds keys \['images', 'y'\]; expected a dict with tensors 'x'"):
        load_tensor_file(path)


def test_tensor_file_not_a_dict(tmp_path):
    path = str(tmp_path / "bad.pt")
    torch.save([torch.zeros(1)], path)
    with pytest.raises(SourceError, match="--data: .* holds list; expected a dict"):
        load_tensor_file(path)


def test_tensor_file_unreadable(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SourceError, match=f"--data: cannot read {path}"):
        load_tensor_file(str(path))


def test_tensor_file_missing(tmp_path):
    path = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match=f"--data: no such file: {path}"):
        load_data(DataRequest(path))


def test_check_images_message_names_what_and_range():
    with pytest.raises(ValueError, match=r"^x: got values in \[-1, 2\] .*expected float images \(N, C, H, W\)"):
        check_images(torch.tensor([-1.0, 2.0]).view(1, 1, 1, 2), "x")
    with pytest.raises(ValueError, match="got values in"):
        check_images(torch.full((1, 1, 2, 2), float("nan")))


# -- CIFAR-10 -----------------------------------------------------------------------------------------------


def _write_fake_cifar(root, n=3):
    """CIFAR-10's python pickle layout with n random images per batch; returns the test batch's images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        entry = {"data": batches[name], "labels": list(range(n))}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return batches


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    """The real md5 checks would reject the fake files; batches.meta is checked by the module-level function."""
    cifar = pytest.importorskip("torchvision.datasets.cifar")
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)


@pytest.mark.usefixtures("skip_cifar_md5")
def test_cifar10_from_disk(tmp_path):
    batches = _write_fake_cifar(tmp_path)
    train = load_data(DataRequest(f"cifar10:{tmp_path}", split="train"))
    test = load_data(DataRequest(f"cifar10:{tmp_path}", split="test"))
    assert (len(train), len(test)) == (15, 3)
    x, y = test[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    expected = torch.from_numpy(batches["test_batch"][1].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(x, expected)


def test_cifar10_missing_folder(tmp_path):
    pytest.importorskip("torchvision")
    with pytest.raises(SourceError, match="cifar-10-batches-py is missing or corrupt") as info:
        load_cifar10(str(tmp_path), "test")
    assert str(tmp_path) in str(info.value) and "download=True" in str(info.value)


def test_cifar10_without_torchvision(monkeypatch, tmp_path):
    for name in ("torchvision", "torchvision.datasets", "torchvision.transforms"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'rs-plugins\[cifar\]'"):
        load_cifar10(str(tmp_path), "test")


def test_cifar10_needs_a_root():
    with pytest.raises(SourceError, match="cifar10:<root>"):
        load_data(DataRequest("cifar10:"))


def test_unknown_forms_are_left_to_other_plugins():
    assert load_data(DataRequest("svhn:/data")) is None
    assert "cifar10[:<root>]" in DATA_FORMS


# -- select_indices -----------------------------------------------------------------------------------------


def test_select_indices_every_is_by_dataset_index():
    assert select_indices(10, every=3) == [0, 3, 6, 9]
    assert select_indices(10, start=4, every=3) == [6, 9]
    assert select_indices(10, start=2, stop=5) == [2, 3, 4]
    assert select_indices(10, stop=100) == list(range(10))
    assert select_indices(10, every=2, limit=3) == [0, 2, 4]


def test_select_indices_paper_repo_pitfall():
    # `certify.py --skip 20 --max 500` in the paper repos certifies 25 images, not 500
    assert len(select_indices(10_000, every=20, stop=500)) == 25
    assert len(select_indices(10_000, every=20, limit=500)) == 500


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": -1}, r"--start must be in 0\.\.9"),
        ({"start": 10}, r"--start must be in 0\.\.9"),
        ({"start": 5, "stop": 5}, "--max is an exclusive index and must be greater than --start"),
        ({"every": 0}, "--every must be at least 1"),
        ({"limit": 0}, "--limit must be at least 1"),
    ],
)
def test_select_indices_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_indices(10, **kwargs)
