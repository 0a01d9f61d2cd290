"""Synthetic data sets in their published archives' layouts, served by the local server with torchvision's own
download and MD5 checks (the synthetic files' MD5s replace the published ones)."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
from authors_layouts import tar_bytes
from torchvision import datasets

from rs_plugins.sources import locations


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def cifar10_archive(images: int = 6) -> tuple[bytes, dict[str, bytes], np.ndarray, list[int]]:
    """cifar-10-python.tar.gz as published: cifar-10-batches-py/ with five training batches, test_batch and
    batches.meta, each a pickled dict (data: N x 3072 uint8, labels), here with a few random images."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(images, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=images)]
    files = {f"data_batch_{i}": batch(data, labels) for i in range(1, 6)} | {"test_batch": batch(data, labels)}
    files["batches.meta"] = pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}, protocol=2)
    archive = tar_bytes({f"cifar-10-batches-py/{name}": b for name, b in files.items()}, mode="w:gz")
    return archive, files, data, labels


def batch(data, labels) -> bytes:
    return pickle.dumps({"batch_label": "b", "labels": labels, "data": data, "filenames": []}, protocol=2)


def serve_cifar10(server, monkeypatch, images: int = 6):
    """Serve cifar-10-python.tar.gz from ``server`` and point ``--data cifar10`` at it: (test images, labels)."""
    archive, files, data, labels = cifar10_archive(images)
    server.routes["/cifar-10-python.tar.gz"] = archive
    monkeypatch.setitem(locations.DATASETS, "cifar10", server.url("/cifar-10-python.tar.gz"))
    monkeypatch.setattr(datasets.CIFAR10, "tgz_md5", md5(archive))
    monkeypatch.setattr(datasets.CIFAR10, "train_list", [[f"data_batch_{i}", md5(files[f"data_batch_{i}"])]
                                                         for i in range(1, 6)])  # fmt: skip
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5(files["test_batch"])]])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                                   "md5": md5(files["batches.meta"])})  # fmt: skip
    return data, labels
