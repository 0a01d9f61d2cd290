"""Data-parallel training across processes started by ``torchrun`` (one process per GPU, any number of nodes),
and the sharding of certification's images across them (``shard``; ``sharding.run_sharded`` does the files).

Each process takes its share of every batch, and the gradients are averaged with ``all_reduce`` before each
optimiser step: the algorithm of ``DistributedDataParallel``. It runs after the loss rather than inside a
``DistributedDataParallel`` wrapper because the techniques' losses run several forward passes per step and
attacks with parameter gradients switched off, which a wrapped module does not allow. One coalesced
all-reduce per step keeps the traffic the same as DDP's; only the overlap with the backward pass is lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ..errors import RsPluginError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; ``size == 1`` when not launched by torchrun."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes checkpoints, logs and progress bars."""
        return self.rank == 0


def init_world(device_type: str, *, timeout: timedelta | None = None) -> World:
    """Join the process group torchrun set up through its environment; a lone process needs none.

    The backend is NCCL for training on CUDA and gloo on the CPU (CPU training and the tests). ``timeout``
    bounds how long a collective (a barrier too) may wait for the slowest process; torch's default if None.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend, **({"timeout": timeout} if timeout else {}))
    return world


def leave_world(world: World) -> None:
    """Destroy the process group before the interpreter exits: left to exit, gloo's threads can abort the process
    (``terminate called without an active exception``) after all the work is done."""
    if world.size > 1 and dist.is_initialized():
        dist.barrier()  # no process tears its connections down while another still uses them
        dist.destroy_process_group()


def average_gradients(model: nn.Module, world: World) -> None:
    """Replace every gradient by its mean over the processes (one all-reduce per dtype)."""
    if world.size == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    for dtype in {g.dtype for g in grads}:
        group = [g for g in grads if g.dtype == dtype]
        flat = _flatten_dense_tensors(group)
        dist.all_reduce(flat)
        flat /= world.size
        for grad, synced in zip(group, _unflatten_dense_tensors(flat, group)):
            grad.copy_(synced)


def average_buffers(model: nn.Module, world: World) -> None:
    """Average floating-point buffers (BatchNorm running statistics) so every process holds the same model."""
    if world.size == 1:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world.size


def sum_over_processes(values: dict[str, float], world: World) -> dict[str, float]:
    """Sum logged numbers over the processes."""
    if world.size == 1 or not values:
        return values
    keys = list(values)  # every process logs the same parts in the same order
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def barrier(world: World) -> None:
    """Wait for every process, e.g. until the main one has written a checkpoint."""
    if world.size > 1:
        dist.barrier()


def main_decides(world: World, check: Callable[[], T]) -> T | None:
    """Run ``check()`` (e.g. lock ``--out`` and compare its settings) on the main process and tell every process
    whether it passed, so that a refusal stops them all at once with one message instead of leaving them waiting at
    the next barrier. Returns what ``check`` returned on the main process, None elsewhere.

    Raises:
        what ``check`` raised, on the main process; ``RsPluginError`` saying so on the others.
    """
    if world.size == 1:
        return check()
    result, message = None, [None]
    if world.main:
        try:
            result = check()
        except Exception as err:  # any failure: the others must not wait for a broadcast that never comes
            message = [f"{type(err).__name__}: {err}"]
            dist.broadcast_object_list(message, src=0)
            raise
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise RsPluginError(f"process {world.rank} stopped: process 0 refused the run (its message is above)")
    return result


def broadcast_model(model: nn.Module, world: World) -> None:
    """Start every process from the main process's weights and buffers, as DDP does at construction."""
    if world.size == 1:
        return
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


def shard(items: Sequence[T], world: World) -> list[T]:
    """This process's share of ``items``: every ``size``-th item from its rank on.

    The shares are disjoint and together hold every item once: unlike ``DistributedSampler`` nothing is repeated
    to even them out, so no image is certified twice and counted twice in certified accuracy.
    """
    return list(items[world.rank :: world.size])
