"""Built-in data sources for ``--data``, and the choice of which images to certify.

Every source returns a torch ``Dataset`` of ``(x, y)`` items: ``x`` a float32 (C, H, W) image with values in
[0, 1] (smoothing noise is added in pixel space), ``y`` an integer label.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import TensorDataset

from rs_plugins.errors import MissingDependencyError, SourceError
from rs_plugins.file_checks import load_weights_only
from rs_plugins.sources import downloads, fetch, locations
from rs_plugins.validation import check_images

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from rs_plugins.types import DataRequest

DATA_FORMS = (
    "digits",
    "mnist[:<root>]",
    "cifar10[:<root>]",
    "cifar100[:<root>]",
    "imagenet:<root>",
    "<file>.pt",
    "<file>.npz",
)
"""The ``--data`` forms the built-in sources accept, for error messages."""

SPLITS = ("train", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        msg = f"split must be one of {', '.join(SPLITS)}; got {split!r}"
        raise ValueError(msg)


def load_digits(split: str) -> TensorDataset:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), split 80/20 the same way every time.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        Images (N, 1, 8, 8) float32 in [0, 1] and int64 labels.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    _check_split(split)
    bunch = sklearn_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def load_tensor_file(path: str) -> TensorDataset:
    """Images and labels saved by the user: a ``.pt`` dict or an ``.npz`` archive with entries ``x`` and ``y``.

    Args:
        path: the file; ``x`` must be float (N, C, H, W) in [0, 1] and ``y`` N integer labels.

    Raises:
        FileNotFoundError: no such file.
        SourceError: the file does not hold ``x`` and ``y`` as expected.
        ValueError: ``x`` is not float images in [0, 1].
    """
    expected = "expected a dict with tensors 'x' (N, C, H, W) and 'y' (N,)"
    if not Path(path).is_file():
        msg = f"--data: no such file: {path}"
        raise FileNotFoundError(msg)
    if Path(path).stat().st_size == 0:
        raise SourceError(f"--data: {path} is empty; {expected}")
    if path.lower().endswith(".npz"):
        try:  # allow_pickle=False: object arrays would be unpickled, which can run code
            with np.load(path, allow_pickle=False) as archive:
                found = {key: torch.from_numpy(archive[key]) for key in archive.files}
        except (OSError, ValueError, TypeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            msg = f"--data: cannot read {path}; it is truncated, damaged, not an .npz of numeric arrays ({err})"
            raise SourceError(msg) from err
    else:
        found = load_weights_only(path, "--data", expected.removeprefix("expected "))
    if not isinstance(found, dict) or not {"x", "y"} <= found.keys():
        what = f"keys {sorted(map(str, found))}" if isinstance(found, dict) else type(found).__name__
        msg = f"--data: {path} holds {what}; {expected}"
        raise SourceError(msg)
    x, y = found["x"], found["y"]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        msg = f"--data: {path} holds x: {type(x).__name__}, y: {type(y).__name__}; {expected}"
        raise SourceError(msg)
    check_images(x, f"--data {path}")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        msg = f"--data: {path} has labels y of shape {tuple(y.shape)} and dtype {y.dtype}; expected 1-D integer labels"
        raise SourceError(msg)
    if len(y) != len(x):
        msg = f"--data: {path} has {len(x)} images but {len(y)} labels; expected one label per image"
        raise SourceError(msg)
    if len(y) and int(y.min()) < 0:
        first = int((y < 0).nonzero()[0, 0])
        msg = (
            f"--data: {path} has label {int(y[first])} (image {first}); labels must be integers in 0..K-1, the "
            "classes of the model (-1 means abstain, never a class)"
        )
        raise SourceError(msg)
    return TensorDataset(x.float(), y.long())


def _torchvision(form: str):
    """torchvision's ``datasets`` and ``transforms`` modules, or a MissingDependencyError naming ``--data form``."""
    try:
        from torchvision import datasets, transforms
    except ImportError as err:
        msg = f"--data {form} needs torchvision: pip install 'rs-plugins[cifar]' ({err})"
        raise MissingDependencyError(msg) from err
    return datasets, transforms


def _not_on_disk(form: str, root: str, what: str, err: Exception, fetch_hint: str) -> SourceError:
    found = re.sub(r"\.?\s*You can use download=True to download it\.?", "", str(err))  # torchvision's advice
    msg = (
        f"--data {form}:{root}: {what} is missing or corrupt ({found}). It must already be there: nothing is "
        f"downloaded at run time. On a machine with internet, {fetch_hint} and copy the folder here."
    )
    return SourceError(msg)


def _torchvision_set(name: str, root: str, split: str, holds: str, errors: tuple) -> Dataset:
    """A torchvision data set from ``root``, downloaded into it first (torchvision's downloader and MD5 checks)
    when its folder is missing and downloads are on; offline, or with a damaged folder, the message says why."""
    _check_split(split)
    _, transforms = _torchvision(name)
    cls = downloads.torchvision_class(name)

    def load() -> Dataset:
        return cls(root, train=(split == "train"), download=False, transform=transforms.ToTensor())

    try:
        return load()
    except errors as err:
        folder = Path(root) / downloads.TORCHVISION[name][1]
        hint = f"run torchvision.datasets.{cls.__name__}({root!r}, download=True)"
        if fetch.offline():
            raise _not_on_disk(name, root, f"{root}/{holds}", err, hint) from err
        if folder.exists():
            msg = f" Remove {folder} and rerun to download a fresh copy."
            raise SourceError(str(_not_on_disk(name, root, f"{root}/{holds}", err, hint)) + msg) from err
    downloads.download_dataset(name, root)
    return load()


def load_cifar10(root: str, split: str) -> Dataset:
    """CIFAR-10 from ``root/cifar-10-batches-py`` through torchvision, downloaded there first if missing.

    torchvision unpickles the batch files, but only after checking each file's MD5 against the published
    data set's, so a crafted file is refused before it is unpickled.

    Args:
        root: the folder that holds ``cifar-10-batches-py``.
        split: ``"train"`` or ``"test"``.
    """
    return _torchvision_set("cifar10", root, split, "cifar-10-batches-py", (RuntimeError, OSError, EOFError,
                            pickle.UnpicklingError))  # fmt: skip


def load_cifar100(root: str, split: str) -> Dataset:
    """CIFAR-100 (100 fine labels) from ``root/cifar-100-python`` through torchvision, downloaded there first if
    missing. As for CIFAR-10, torchvision checks the files' MD5 against the published data set's before unpickling.

    Args:
        root: the folder that holds ``cifar-100-python`` (files ``train``, ``test``, ``meta``).
        split: ``"train"`` or ``"test"``.
    """
    return _torchvision_set("cifar100", root, split, "cifar-100-python", (RuntimeError, OSError, EOFError,
                            pickle.UnpicklingError))  # fmt: skip


def load_mnist(root: str, split: str) -> Dataset:
    """MNIST (1x28x28) from torchvision's layout ``root/MNIST/raw`` (the four uncompressed idx files
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``), downloaded there first if missing. The idx format holds raw bytes: nothing is
    unpickled.

    Args:
        root: the folder that holds ``MNIST/raw``.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
    """
    return _torchvision_set("mnist", root, split, "MNIST/raw (the four idx files)", (RuntimeError, OSError,
                            ValueError, AssertionError))  # fmt: skip


def load_imagenet(root: str, split: str) -> Dataset:
    """ImageNet as the papers read it: ``root/val`` (``"test"``) or ``root/train`` as class folders (an
    ImageFolder, the labels in sorted folder order, so ``val`` must be sorted into its 1000 synset folders);
    never downloads.

    The test split is resized to 256 and center-cropped to 224, the train split random-resized-cropped to 224
    and flipped, as in the papers' code (Cohen et al. 2019).

    Args:
        root: the folder that holds ``train`` and/or ``val``.
        split: ``"train"`` or ``"test"`` (the ``val`` folder).
    """
    _check_split(split)
    datasets, transforms = _torchvision("imagenet")
    folder = Path(root) / ("train" if split == "train" else "val")
    if split == "train":
        steps = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(256), transforms.CenterCrop(224)]
    try:
        return datasets.ImageFolder(str(folder), transforms.Compose([*steps, transforms.ToTensor()]))
    except (FileNotFoundError, OSError) as err:
        msg = (
            f"--data imagenet:{root}: {folder} is missing or holds no class folders of images ({err}). It must "
            "already be there, one folder per class (the validation images sorted into their 1000 synset folders, "
            "as the papers' code expects); nothing is downloaded at run time."
        )
        raise SourceError(msg) from err


FOLDER_SOURCES = {
    "mnist": (load_mnist, "MNIST/raw"),
    "cifar10": (load_cifar10, "cifar-10-batches-py"),
    "cifar100": (load_cifar100, "cifar-100-python"),
    "imagenet": (load_imagenet, "val and/or train"),
}
"""``--data <name>:<root>`` forms: the loader and what ``root`` must hold."""


def load_data(request: DataRequest) -> Dataset | None:
    """Load ``request.source`` if it has a built-in form (see ``DATA_FORMS``), else return None for other plugins.

    ``cifar10``, ``cifar100`` and ``mnist`` without a root use the cache (``fetch.home()/data``). A tensor file
    is its own split, so ``request.split`` is ignored for it.
    """
    source = request.source
    if source == "digits":
        return load_digits(request.split)
    name, sep, root = source.partition(":")
    if name == "imagenet" and not sep:
        msg = (f"--data imagenet needs the folder that holds val/ (and train/), e.g. imagenet:/data/imagenet: its "
               f"licence forbids redistribution, so nothing downloads it; request it at {locations.IMAGENET}")
        raise SourceError(msg)
    if name in FOLDER_SOURCES and not sep:  # the cache, downloaded into on first use
        return FOLDER_SOURCES[name][0](str(fetch.home() / "data"), request.split)
    if sep and name in FOLDER_SOURCES:
        loader, holds = FOLDER_SOURCES[name]
        if not root:
            msg = f"--data {name}:<root> needs the folder that holds {holds}, e.g. {name}:./data"
            raise SourceError(msg)
        return loader(root, request.split)
    if source.lower().endswith((".pt", ".npz")):
        return load_tensor_file(source)
    return None


def select_indices(
    length: int, *, start: int = 0, stop: int | None = None, every: int = 1, limit: int | None = None
) -> list[int]:
    """Dataset indices to certify: ``start <= i < stop``, ``i % every == 0``, at most ``limit`` of them.

    ``stop`` (``--max``) is an exclusive dataset index and ``every`` (``--every``/``--skip``) keeps every k-th
    index, as in the paper repos' certify.py. Mind their pitfall: ``--skip 20 --max 500`` certifies only 25
    images, not 500; use ``--limit`` to ask for a count.

    Args:
        length: the dataset's size.
        start: first index considered (``--start``).
        stop: exclusive end index (``--max``); None means the end of the dataset.
        every: keep indices divisible by this (``--every``).
        limit: keep at most this many (``--limit``); None means all.
    """
    if not 0 <= start < length:
        msg = f"--start must be in 0..{length - 1} for a data set of {length} images; got {start}"
        raise ValueError(msg)
    if stop is not None and stop <= start:
        msg = f"--max is an exclusive index and must be greater than --start ({start}); got {stop}"
        raise ValueError(msg)
    if every < 1:
        msg = f"--every must be at least 1; got {every}"
        raise ValueError(msg)
    if limit is not None and limit < 1:
        msg = f"--limit must be at least 1; got {limit}"
        raise ValueError(msg)
    end = length if stop is None else min(stop, length)
    first = -(-start // every) * every  # smallest multiple of `every` that is >= start
    indices = list(range(first, end, every))
    return indices if limit is None else indices[:limit]


def labels_of(dataset: Dataset) -> torch.Tensor:
    """All labels of ``dataset`` as int64, read without its images where it holds them apart (TensorDataset,
    torchvision's ``targets``), else image by image."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) > 1:
        labels = dataset.tensors[1]
    else:
        labels = getattr(dataset, "targets", None)
        if labels is None:
            labels = [int(dataset[i][1]) for i in range(len(dataset))]
    return torch.as_tensor(labels).to(torch.int64)


def data_identity(dataset: Dataset) -> dict:
    """What ties per-image results to a data set: its size and the SHA-256 of its labels in index order.

    Stored with per-example targets (``predict-confidence``) and compared by the loss that reads them, so a file
    made on another data set, split or ordering is refused rather than silently misaligned.
    """
    labels = labels_of(dataset)
    return {"images": len(dataset), "labels_sha256": hashlib.sha256(labels.numpy().tobytes()).hexdigest()}
