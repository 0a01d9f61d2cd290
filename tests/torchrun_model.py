"""What the torchrun tests share: a tiny model module that a rank can kill, and the two-process launch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MODEL = '''
import os

import torch

calls = 0


class Net(torch.nn.Module):
    """A fixed random linear classifier; on rank 1 it kills its process after DIE_AFTER forward passes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    def forward(self, x):
        global calls
        calls += 1
        if os.environ.get("RANK") == "1" and calls > int(os.environ.get("DIE_AFTER") or 10**9):
            os._exit(3)  # as abrupt as a kill: no cleanup, no flush
        return SCALE * self.body(x)


def net():
    return Net()
'''


def write_model(root: Path, name: str, scale: float) -> None:
    """``root/<name>.py`` with ``net()``, whose logits are ``scale`` times a fixed random linear map of 8x8 digits."""
    (root / f"{name}.py").write_text(MODEL.replace("SCALE", repr(scale)))


def torchrun(root: Path, argv: list[str], die_after: int | None = None) -> subprocess.CompletedProcess:
    """``rs-plugins argv`` in two gloo processes with ``root`` on the path; rank 1 dies after ``die_after`` passes."""
    env = os.environ | {"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("DIE_AFTER", None)
    if die_after:
        env["DIE_AFTER"] = str(die_after)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "rs_plugins", "--", *argv]  # `--`: torchrun's parser would take --n or --max for its own
    return subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=300)
