"""CAT-RS's p_b read back from a ``predict-confidence`` votes file, checked against the data it trains on.

The file is written by ``runner.confidence_dataset``; everything in it (the sidecar's fields, each row's index,
classes and votes) is checked before a vote is used, so a hand-edited or foreign file gets one line naming the file
and what is wrong, never a traceback or votes that land on the wrong class through negative indexing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import ResultsFileError
from ..results.files import check_not_sidecar, read_confidence
from ..results.sidecars import load_sidecar, sidecar_path
from ..schemas import ConfidenceSidecar

if TYPE_CHECKING:
    from torch.utils.data import Dataset

WRITE_IT = "write it with `rs-plugins predict-confidence`"


def read_confidence_targets(path: str | os.PathLike, dataset: Dataset, num_classes: int, option: str) -> torch.Tensor:
    """p_b = votes / n, (len(dataset), num_classes) float32, from a finished ``confidence_dataset`` file.

    Refused (naming ``option``) unless its sidecar shows it was made on this data set (``data.data_identity``:
    size and labels in index order) for this many classes, and its rows hold, for every image of the data set
    exactly once, its label and votes for classes of the model that sum to the sidecar's n.
    """
    from ..sources.data import data_identity, labels_of

    path = Path(path)
    check_not_sidecar(path, option)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        raise FileNotFoundError(f"{option}: {path} is {what}; give the votes file, {WRITE_IT}")
    sidecar = load_sidecar(path, ConfidenceSidecar, option)
    if sidecar is None:
        msg = f"{option}: {path} has no settings file {sidecar_path(path).name} recording its data and n; "
        raise ResultsFileError(msg + WRITE_IT)
    stored, wanted = sidecar["data_identity"], data_identity(dataset)
    if stored != wanted:
        msg = (
            f"{option}: {path} was made on other data ({stored['images']} images, labels sha256 "
            f"{stored['labels_sha256'][:12]}...) than the training data ({wanted['images']} images, "
            f"{wanted['labels_sha256'][:12]}...); run predict-confidence on the --data and --split you train on"
        )
        raise ValueError(msg)
    classes, n = sidecar["num_classes"], sidecar["n"]
    if classes != num_classes:
        raise ValueError(f"{option}: {path} holds votes over {classes} classes, but the model has {num_classes}")
    rows = read_confidence(path)  # one row per index (identical repeats kept once, differing ones refused)
    labels = labels_of(dataset)
    votes = torch.zeros(len(dataset), num_classes, dtype=torch.float64)
    for row in rows:
        where = f"{option}: {path}, image {row.idx}"
        if not 0 <= row.idx < len(dataset):
            raise ResultsFileError(f"{where}: the index is outside the data set's 0..{len(dataset) - 1}")
        if row.label != int(labels[row.idx]):
            raise ResultsFileError(f"{where}: label {row.label}, but the training data has {int(labels[row.idx])}")
        for c, count in row.counts:
            if not (0 <= c < num_classes and count > 0):
                msg = f"{where}: votes {c}:{count}; each must be class:count with a class in 0..{num_classes - 1} "
                raise ResultsFileError(msg + "and a count > 0")
            votes[row.idx, c] = count
        if len({c for c, _ in row.counts}) < len(row.counts):
            raise ResultsFileError(f"{where}: a class appears twice in its votes {row.counts}")
        if sum(count for _, count in row.counts) != n:
            raise ResultsFileError(f"{where}: its votes sum to {sum(c for _, c in row.counts)}, not the file's n = {n}")
    if len(rows) != len(dataset):  # every index in range and none twice: fewer rows means images missing
        missing = sorted(set(range(len(dataset))) - {row.idx for row in rows})
        msg = f"{option}: {path} covers {len(rows)} of {len(dataset)} images (first missing: {missing[0]}); rerun "
        raise ValueError(msg + "its predict-confidence command to finish it")
    return (votes / n).float()
