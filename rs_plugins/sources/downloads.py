"""Downloads of whole data sets (through torchvision's own downloader and checksums) and of RobustBench
checkpoints (RobustBench's Google Drive ids, fetched by ``fetch``), each put in place only once complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import urllib.error
from pathlib import Path

from ..errors import MissingDependencyError
from . import fetch, locations

TORCHVISION = {"cifar10": ("CIFAR10", "cifar-10-batches-py"), "cifar100": ("CIFAR100", "cifar-100-python"),
               "mnist": ("MNIST", "MNIST")}  # fmt: skip
"""Data sets torchvision downloads: its class name and the folder it creates under the root."""


def torchvision_class(name: str):
    """torchvision's data set class for ``name`` with its download address taken from ``locations.DATASETS``.

    torchvision reads the address from class attributes (``url`` for CIFAR, ``mirrors`` for MNIST), so a subclass
    overriding them, under the same class name (MNIST keeps its files in ``root/<class name>``), redirects the
    download while every MD5 check stays torchvision's own.
    """
    try:
        from torchvision import datasets
    except ImportError as err:
        msg = f"--data {name} needs torchvision: pip install 'rs-plugins[cifar]' ({err})"
        raise MissingDependencyError(msg) from err
    base = getattr(datasets, TORCHVISION[name][0])
    address = locations.DATASETS[name]
    override = {"mirrors": list(address)} if isinstance(address, list) else {"url": address}
    return type(base.__name__, (base,), override)


def download_dataset(name: str, root: str | os.PathLike) -> None:
    """Download data set ``name`` into ``root`` with torchvision (MD5-checked), through a staging folder renamed
    into place once complete, so that an interrupted download leaves nothing that looks like the data set.

    Raises:
        fetch.DownloadError: offline, a network failure or a file whose MD5 differs; nothing is left in ``root``.
    """
    what = f"--data {name}"
    if fetch.offline():
        raise fetch.DownloadError(f"{what}: the data set is missing and downloads are off ({fetch.OFFLINE_HOW})")
    root = Path(root)
    folder = TORCHVISION[name][1]
    with fetch.one_fetcher(root / folder):  # torchrun's ranks: one downloads, the others wait and find it
        if (root / folder).is_dir():
            fetch.record_file(root / folder, what)
            return
        for stale in root.glob(".rs-plugins-download-*"):  # a killed run's staging folder, never read
            with contextlib.suppress(OSError):
                if time.time() - stale.stat().st_mtime > fetch.STALE_PART:
                    shutil.rmtree(stale, ignore_errors=True)
        staging = root / f".rs-plugins-download-{os.getpid()}"
        try:
            torchvision_class(name)(str(staging), train=False, download=True)
            os.replace(staging / folder, root / folder)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            msg = f"{what}: downloading it into {root} failed ({err}); nothing was kept"
            raise fetch.DownloadError(msg) from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        fetch.record_file(root / folder, what, downloaded=True)


def download_robustbench(gdrive_ids: list[str], files: list[Path], *, what: str) -> None:
    """Fetch a RobustBench checkpoint (or an ensemble's parts) from Google Drive by RobustBench's own ids.

    RobustBench's ``load_model`` would write straight into ``model_dir`` and unpickle what it fetched; here each
    file arrives through a temporary file, a Drive quota page is reported as such, and ``load_robustbench``
    checks the result with ``weights_only=True`` before RobustBench loads it.
    """
    for gdrive_id, file in zip(gdrive_ids, files):
        if not file.is_file():
            fetch.download(fetch.drive_url(gdrive_id), file, what=what)
