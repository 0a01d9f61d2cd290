"""The held-out split of a training run and its per-epoch clean and noisy accuracy (seeded apart from training's RNG).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..certify.sampling import eval_mode
from ..validation import (
    check_number,
)
from .checkpoints import (
    derived_seed,
)

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from ..types import NoiseSampler


VAL_IMAGES = 500
"""Held-out images evaluated after every epoch by default: enough to see a useless run, cheap next to an epoch."""


def hold_out(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split ``dataset`` into (train, held-out) with ``fraction`` of the images held out (``--val-split``).

    The split is a permutation seeded by ``seed`` alone, so a resumed run holds out the same images.
    """
    from torch.utils.data import Subset

    check_number("--val-split", fraction, above=0)
    if not fraction < 1:
        raise ValueError(f"--val-split is the fraction of the training data held out, in (0, 1); got {fraction}")
    held = max(1, round(fraction * len(dataset)))
    if held >= len(dataset):
        raise ValueError(f"--val-split {fraction} holds out all {len(dataset)} images; nothing is left to train on")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(derived_seed(seed, 2**31))).tolist()
    return Subset(dataset, order[held:]), Subset(dataset, order[:held])


def spread_indices(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(length)`` (all of them if ``count >= length``)."""
    if count >= length:
        return list(range(length))
    return [i * length // count for i in range(count)]


@torch.no_grad()
def held_out_accuracy(
    model: nn.Module,
    dataset: Dataset,
    noise: NoiseSampler | None,
    indices: list[int],
    *,
    batch_size: int,
    device: torch.device,
    seed: int,
    autocast_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> dict[str, float]:
    """Correct predictions on ``indices`` of ``dataset``, clean and under one noise draw per image, in eval mode.

    Returns counts (``clean``, ``noisy``, ``images``) so processes can sum them; the noise is drawn from a
    generator seeded by ``seed``, so the global RNG (and hence training) is untouched.
    """
    generator = torch.Generator(device).manual_seed(seed)
    counts = {"clean": 0.0, "noisy": 0.0, "images": 0.0}
    with eval_mode(model), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        for start in range(0, len(indices), batch_size):
            items = [dataset[i] for i in indices[start : start + batch_size]]
            x = torch.stack([torch.as_tensor(item[0]) for item in items]).to(device)
            y = torch.as_tensor([int(item[1]) for item in items], device=device)
            x = x.contiguous(memory_format=memory_format)
            counts["clean"] += float((model(x).argmax(1) == y).sum())
            if noise is not None:  # None: a run without noise (--loss standard without --sigma)
                noisy = noise.sample(x, generator=generator).contiguous(memory_format=memory_format)
                counts["noisy"] += float((model(noisy).argmax(1) == y).sum())
            counts["images"] += len(items)
    return counts
