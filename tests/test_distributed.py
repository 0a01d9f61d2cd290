"""Training across processes with torchrun: two CPU processes (gloo) do the work of one, and resume exactly.

Averaging the gradients of two half-batches gives the gradient of the whole batch when the loss is a mean and the
model has no batch statistics, so two processes must end where one process ends. The noise differs between the
two layouts (it is seeded per process), so sigma is tiny and the comparison allows for it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rs_plugins.cli import main
from rs_plugins.sources.data import load_digits

MODEL = '''
import torch

def linear():
    """A model without BatchNorm: its full-batch gradient is the mean of the half-batch gradients."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder with the model module and 128 training digits as a tensor file."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "ddp_model.py").write_text(MODEL)
    digits = load_digits("train")
    x = torch.stack([digits[i][0] for i in range(128)])
    y = torch.tensor([int(digits[i][1]) for i in range(128)])
    torch.save({"x": x, "y": y}, root / "digits128.pt")
    return root


def train_args(root, directory, epochs):
    return [
        "train",
        "--model",
        "ddp_model:linear",
        "--data",
        str(root / "digits128.pt"),
        "--sigma",
        "1e-6",
        "--epochs",
        str(epochs),
        "--batch-size",
        "32",
        "--lr",
        "0.5",
        "--lr-step",
        "1",
        "--lr-gamma",
        "0.5",
        "--device",
        "cpu",
        "--no-progress",
        "--checkpoint-dir",
        str(directory),
    ]


def torchrun(root, directory, epochs):
    """``torchrun --standalone --nproc_per_node 2 -m rs_plugins train ...`` on the CPU with gloo."""
    env = os.environ | {"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "rs_plugins", *train_args(root, directory, epochs)]
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def weights(directory):
    return torch.load(directory / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def two_processes(setup):
    directory = setup / "two"
    stdout = torchrun(setup, directory, epochs=2)
    return directory, stdout


def test_two_processes_match_one(setup, two_processes, monkeypatch):
    """Same global batch, same schedule: the weights agree with a single-process run up to the tiny noise."""
    monkeypatch.syspath_prepend(str(setup))
    single = setup / "one"
    assert main(train_args(setup, single, epochs=2)) == 0
    directory, _ = two_processes
    one, two = weights(single), weights(directory)
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-4, rtol=0)
    assert float((one["1.weight"]).abs().max()) > 0.1  # training really moved the weights: the check has teeth


def test_only_the_main_process_writes(two_processes):
    directory, stdout = two_processes
    assert stdout.count("model state dict:") == 1
    rows = (directory / "train_log.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,lr,loss")
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint.pt", "model.pt", "train_log.csv"]


def test_resumed_two_process_run_ends_with_the_same_weights(setup, two_processes):
    """Stop after epoch 1 and resume to 2 under torchrun: identical to the uninterrupted two-process run."""
    directory = setup / "resumed"
    torchrun(setup, directory, epochs=1)
    torchrun(setup, directory, epochs=2)
    straight, resumed = weights(two_processes[0]), weights(directory)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
