"""Checkpoints, exact resume and the per-epoch log, shared by every trainer (train, train-mixer, train-denoiser).

A trainer saves ``checkpoint.pt`` atomically after each epoch together with the settings that determine the run;
a rerun resumes from it only with the same settings, and ``train_log.csv`` holds one row per finished epoch.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

from ..file_checks import load_weights_only

CHECKPOINT = "checkpoint.pt"  # everything needed to resume: model, optimizer, scheduler, epoch, config
LOG = "train_log.csv"


def derived_seed(*parts: int) -> int:
    """A 32-bit seed derived from ``parts`` (e.g. seed, epoch, rank): independent streams, reproducible."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def resume(directory: Path, recorded: dict, model, optimizer, scheduler, scaler, device, defaults=None) -> int:
    """Restore ``directory``'s checkpoint and return its epoch count (0 without one); refuse other settings.

    A setting the checkpoint does not record (one added since it was written) matches its value in ``defaults``.
    """
    path = directory / CHECKPOINT
    if not path.exists():
        return 0
    damaged = f"it is not a checkpoint this command wrote, or it is damaged; delete {path} to start over"
    state = load_weights_only(path, "--checkpoint-dir", f"a training checkpoint ({damaged})")
    if not isinstance(state, dict) or not {"config", "model", "optimizer", "scheduler", "epoch"} <= state.keys():
        raise ValueError(f"--checkpoint-dir: {path} holds no training state; {damaged}")
    saved = {k: v for k, v in ((defaults or {}) | state["config"]).items() if k != "epochs"}
    wanted = {k: v for k, v in recorded.items() if k != "epochs"}
    if saved != wanted:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {wanted[k]!r}" for k in wanted if saved.get(k) != wanted[k])
        msg = f"{path} was written with other settings ({diff}); use another --checkpoint-dir or the same settings"
        raise ValueError(msg)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(f"--checkpoint-dir: {path} does not fit this model ({err}); {damaged}") from err
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    return int(state["epoch"])


def save_checkpoint(directory: Path, epoch: int, recorded: dict, model, optimizer, scheduler, scaler) -> None:
    """Everything a resume needs after ``epoch`` epochs, written atomically."""
    state = {
        "epoch": epoch,
        "config": recorded,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
    }
    tmp = directory / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, directory / CHECKPOINT)  # atomic: a crash leaves the previous checkpoint intact


def read_log(directory: Path) -> list[dict[str, float]]:
    """The per-epoch rows of ``directory``'s train_log.csv ([] without one)."""
    path = directory / LOG
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def write_log(directory: Path, log: list[dict[str, float]]) -> None:
    """Rewrite train_log.csv with ``log`` (one row per epoch; the columns are the union of the rows' keys)."""
    fields = list(dict.fromkeys(k for entry in log for k in entry))
    with open(directory / LOG, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(log)
