"""``--data cifar10`` / ``mnist`` without preparing anything: torchvision's own downloader and MD5 checks, pointed at
a web server on 127.0.0.1 that serves synthetic files in the real archives' layouts."""

import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from rs_plugins.cli import main
from rs_plugins.errors import SourceError
from rs_plugins.sources import fetch, locations
from rs_plugins.sources.data import load_data
from rs_plugins.types import DataRequest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from served_data import md5, serve_cifar10  # noqa: E402


@pytest.fixture
def served_cifar10(local_server, monkeypatch):
    data, labels = serve_cifar10(local_server, monkeypatch)
    return local_server, data, labels


def test_cifar10_without_a_root_downloads_into_the_cache_once(served_cifar10, capsys):
    server, data, labels = served_cifar10
    test = load_data(DataRequest("cifar10", "test"))
    x, y = test[1]
    expected = torch.from_numpy(data[1].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(x, expected) and y == labels[1] and len(test) == len(labels)
    cache = fetch.home() / "data"
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-py"]  # no archive, no staging folder
    asked = len(server.requests)
    assert len(load_data(DataRequest("cifar10", "train"))) == 5 * len(labels)
    assert len(server.requests) == asked  # the second load reads the cache


def test_a_data_set_with_the_wrong_checksum_is_refused_and_nothing_is_left(served_cifar10, monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.CIFAR10, "tgz_md5", "0" * 32)
    with pytest.raises(fetch.DownloadError, match="--data cifar10: downloading it .* failed") as caught:
        load_data(DataRequest(f"cifar10:{tmp_path / 'data'}", "test"))
    assert "nothing was kept" in str(caught.value)
    assert list((tmp_path / "data").iterdir()) == []


def test_offline_keeps_todays_message_exactly(served_cifar10, monkeypatch, tmp_path):
    monkeypatch.setenv("RS_PLUGINS_OFFLINE", "1")
    with pytest.raises(SourceError) as caught:
        load_data(DataRequest(f"cifar10:{tmp_path}", "test"))
    message = str(caught.value)
    assert message.startswith(f"--data cifar10:{tmp_path}: {tmp_path}/cifar-10-batches-py is missing or corrupt (")
    assert message.endswith(
        f"It must already be there: nothing is downloaded at run time. On a machine with internet, run "
        f"torchvision.datasets.CIFAR10({str(tmp_path)!r}, download=True) and copy the folder here."
    )
    assert served_cifar10[0].requests == []


def test_certify_with_data_cifar10_works_without_preparing_anything(served_cifar10, tmp_path, capsys):
    code = main(["certify", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"in_channels": 3}',
                 "--random-weights", "--data", "cifar10", "--sigma", "0.25", "--n0", "4", "--n", "40", "--alpha", "0.1",
                 "--limit", "2", "--batch-size", "40", "--device", "cpu", "--no-progress",
                 "--out", str(tmp_path / "c.tsv")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "c.tsv.json").read_text())
    assert record["data"] == "cifar10" and "images: 2" in capsys.readouterr().out


def idx_files(images: int = 5) -> dict[str, bytes]:
    """MNIST's four gzipped idx files (images: magic 2051, labels: 2049), with a few random images."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=images, dtype=np.uint8)
    image_file = struct.pack(">iiii", 2051, images, 28, 28) + pixels.tobytes()
    label_file = struct.pack(">ii", 2049, images) + labels.tobytes()
    return {f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz": gzip.compress(image_file if kind ==
            "images" else label_file) for prefix in ("train", "t10k") for kind in ("images", "labels")}  # fmt: skip


def test_mnist_tries_its_mirrors_in_order(local_server, monkeypatch):
    files = idx_files()
    for name, data in files.items():
        local_server.routes[f"/mirror2/{name}"] = data
    monkeypatch.setitem(locations.DATASETS, "mnist", [local_server.url("/mirror1/"), local_server.url("/mirror2/")])
    monkeypatch.setattr(datasets.MNIST, "resources", [(name, md5(data)) for name, data in files.items()])
    test = load_data(DataRequest("mnist", "test"))
    assert len(test) == 5 and test[0][0].shape == (1, 28, 28)
    assert any(r.startswith("/mirror1/") for r in local_server.requests)  # the first mirror 404s, the second serves
    assert sorted(p.name for p in (fetch.home() / "data").iterdir()) == ["MNIST"]


def test_imagenet_cannot_be_downloaded_and_says_where_to_get_it():
    with pytest.raises(SourceError, match="licence forbids redistribution.*image-net.org"):
        load_data(DataRequest("imagenet", "test"))
