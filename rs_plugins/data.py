"""Built-in data sources for ``--data``, and the choice of which images to certify.

Every source returns a torch ``Dataset`` of ``(x, y)`` items: ``x`` a float32 (C, H, W) image with values in
[0, 1] (smoothing noise is added in pixel space), ``y`` an integer label.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import TensorDataset

from rs_plugins.errors import MissingDependencyError, SourceError
from rs_plugins.smoothing import check_images
from rs_plugins.validation import load_weights_only

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from rs_plugins.types import DataRequest

DATA_FORMS = ("digits", "cifar10:<root>", "<file>.pt", "<file>.npz")
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
        msg = f"--data: {path} has label {int(y.min())}; labels are class indices 0..K-1 (-1 means abstain)"
        raise SourceError(msg)
    return TensorDataset(x.float(), y.long())


def load_cifar10(root: str, split: str) -> Dataset:
    """CIFAR-10 from ``root/cifar-10-batches-py`` through torchvision; never downloads.

    torchvision unpickles the batch files, but only after checking each file's MD5 against the published
    data set's, so a crafted file is refused before it is unpickled.

    Args:
        root: the folder that holds ``cifar-10-batches-py``.
        split: ``"train"`` or ``"test"``.
    """
    _check_split(split)
    try:
        from torchvision.datasets import CIFAR10
        from torchvision.transforms import ToTensor
    except ImportError as err:
        msg = f"--data cifar10 needs torchvision: pip install 'rs-plugins[cifar]' ({err})"
        raise MissingDependencyError(msg) from err
    try:
        return CIFAR10(root, train=(split == "train"), download=False, transform=ToTensor())
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        msg = (
            f"--data cifar10:{root}: {root}/cifar-10-batches-py is missing or corrupt ({err}). It must already be "
            "there: nothing is downloaded at run time. On a machine with internet, run "
            f"torchvision.datasets.CIFAR10({root!r}, download=True) and copy the folder here."
        )
        raise SourceError(msg) from err


def load_data(request: DataRequest) -> Dataset | None:
    """Load ``request.source`` if it has a built-in form (see ``DATA_FORMS``), else return None for other plugins.

    A tensor file is its own split, so ``request.split`` is ignored for it.
    """
    source = request.source
    if source == "digits":
        return load_digits(request.split)
    if source.startswith("cifar10:"):
        root = source.removeprefix("cifar10:")
        if not root:
            msg = "--data cifar10:<root> needs the folder that holds cifar-10-batches-py, e.g. cifar10:./data"
            raise SourceError(msg)
        return load_cifar10(root, request.split)
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
