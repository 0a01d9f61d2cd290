"""The training loop every loss plugin shares: SGD with step decay, a checkpoint each epoch, exact resume.

Defaults follow the shared harness of the randomized-smoothing papers (Cohen et al. 2019; Jeong & Shin 2020):
SGD, momentum 0.9, weight decay 1e-4, batch 256, learning rate 0.1 decayed by 0.1 every 50 epochs, 150 epochs.
A loss may ask for each loader batch to be split into ``loss.chunks`` chunks with one optimiser step each (the
papers' convention for m noise draws), may take ``set_epoch(epoch)`` for its warm-up schedule, and may ask for
per-example targets (``example_targets``, e.g. CAT-RS's smoothed predictions p_b), delivered with each batch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..certify.distributed import (
    World,
    average_buffers,
    average_gradients,
    barrier,
    broadcast_model,
    sum_over_processes,
)
from ..certify.sampling import call_model, eval_mode
from ..certify.smoothing import check_images
from ..errors import PluginBuildError, TrainingDivergedError
from ..results.provenance import describe
from ..validation import (
    CheckedNoise,
    check_input_shape,
    check_labels,
    check_logits,
)
from .checkpoints import (
    CHECKPOINT,
    LOG,  # noqa: F401  (the log's file name, where the training runner's users look for it)
    derived_seed,
    one_writer_per_folder,
    read_log,
    resume,
    save_checkpoint,
    write_log,
)
from .config import FINAL_MODEL, PRECISIONS, TrainConfig, crop_flip
from .estimate import EpochClock
from .held_out import VAL_IMAGES, held_out_accuracy, spread_indices
from .schedules import build_scheduler

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from ..types import NoiseSampler, TrainingLoss


class _Indexed(torch.utils.data.Dataset):
    """``dataset``'s (x, y) items with their position: (x, y, i). The loader draws the same order as over
    ``dataset`` itself (its sampler sees only the length), so a loss without targets trains exactly as before."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        return item[0], item[1], i


def base_indices(dataset: Dataset) -> tuple[Dataset, torch.Tensor]:
    """(the data set under any ``Subset``s, e.g. ``--val-split``'s, and each position's index into it)."""
    positions = torch.arange(len(dataset))
    while isinstance(dataset, torch.utils.data.Subset):
        positions = torch.as_tensor(dataset.indices, dtype=torch.int64)[positions]
        dataset = dataset.dataset
    return dataset, positions


def example_targets(loss: TrainingLoss, dataset: Dataset, num_classes: int) -> dict[str, torch.Tensor] | None:
    """The per-example targets ``loss`` asks for, indexed by the underlying data set's index; None if it asks none.

    A loss with ``example_targets(dataset, num_classes) -> {name: tensor}`` gets them for every batch as
    ``targets={name: tensor[batch indices]}``, split into chunks as the images are. It is handed the data set the
    indices refer to (under any ``Subset``) and must refuse targets made for another one.
    """
    ask = getattr(loss, "example_targets", None)
    if ask is None:
        return None
    base, _ = base_indices(dataset)
    targets = ask(base, num_classes)
    name = describe(loss, f"training loss {type(loss).__name__}")
    if not isinstance(targets, dict) or not all(torch.is_tensor(v) for v in targets.values()):
        raise PluginBuildError(f"{name}: example_targets must return a dict of tensors; got {type(targets).__name__}")
    for key, value in targets.items():
        if value.dim() == 0 or len(value) != len(base):
            shape = tuple(value.shape)
            msg = f"{name}: example target {key!r} has shape {shape}; expected one row per image ({len(base)})"
            raise PluginBuildError(msg)
    return {key: value.cpu() for key, value in targets.items()}


@one_writer_per_folder
def train(
    model: nn.Module,
    dataset: Dataset,
    loss: TrainingLoss,
    noise: NoiseSampler | None,
    *,
    config: TrainConfig,
    checkpoint_dir: str | os.PathLike,
    device: torch.device | str = "cpu",
    progress: bool = True,
    world: World | None = None,
    settings: dict | None = None,
    val_data: Dataset | None = None,
    val_images: int = VAL_IMAGES,
) -> list[dict[str, float]]:
    """Train ``model`` in place with ``loss``; resume from ``checkpoint_dir`` if it holds a checkpoint.

    Shuffling is seeded from (seed, epoch) and noise from (seed, epoch, process rank), so a run resumed after
    epoch k ends with the same weights as one that never stopped. With a ``world`` of several torchrun
    processes each takes its share of every batch of ``config.batch_size`` images and gradients are averaged;
    the main process alone writes files. ``settings`` (e.g. the loss, its options, sigma) are stored with the
    checkpoint, and resuming with other settings is refused like resuming with another config.

    With ``val_data``, each epoch ends by measuring accuracy on ``val_images`` held-out images spread over it,
    clean and under one draw of ``noise`` (``clean_acc``, ``noisy_acc`` in the log), printed on the main process
    whether or not ``progress`` shows bars. ``noise`` may be None for a loss with ``uses_noise = False`` (e.g.
    ``standard``): no ``noisy_acc`` then. Returns the per-epoch log (also written to ``train_log.csv``).
    """
    val = None if val_data is None or val_images < 1 else (val_data, spread_indices(len(val_data), val_images))
    if not config.deterministic:
        return _train(model, dataset, loss, noise, config, checkpoint_dir, device, progress, world, settings, val)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic matmuls
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        return _train(model, dataset, loss, noise, config, checkpoint_dir, device, progress, world, settings, val)
    finally:  # the switch is process-wide; leave it as the caller had it
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def _train(model, dataset, loss, noise, config, checkpoint_dir, device, progress, world, settings, val):
    world = world or World()
    device = torch.device(device)
    if noise is None and getattr(loss, "uses_noise", True):
        name = describe(loss, f"training loss {type(loss).__name__}")
        raise ValueError(f"{name} trains under noise; give a noise sampler (only a loss with uses_noise = False "
                         "trains without one)")  # fmt: skip
    noise = None if noise is None else CheckedNoise(noise)  # a broken sampler is named, not crashed on
    directory = Path(checkpoint_dir)
    if world.main:
        directory.mkdir(parents=True, exist_ok=True)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    broadcast_model(model, world)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = build_scheduler(
        optimizer, step=config.lr_step, gamma=config.lr_gamma, milestones=config.lr_milestones,
        schedule=config.lr_schedule, drop_once=config.lr_drop_once,
    )  # fmt: skip
    autocast_dtype = PRECISIONS[config.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    barrier(world)
    recorded = dataclasses.asdict(config) | (settings or {})
    num_classes = _check_data_fits_model(model, dataset, device, memory_format)
    targets = example_targets(loss, dataset, num_classes)
    positions = base_indices(dataset)[1]
    defaults = dataclasses.asdict(type(config)())  # for settings added since a checkpoint was written
    start_epoch = resume(directory, recorded, model, optimizer, scheduler, scaler, device, defaults)
    if start_epoch > config.epochs:  # the checkpoint is past the requested epoch: its weights are not those
        msg = (
            f"--epochs {config.epochs}: {directory / CHECKPOINT} already holds {start_epoch} epochs, and the weights "
            f"of epoch {config.epochs} are not kept; give --epochs {start_epoch} or more, or another --checkpoint-dir"
        )
        raise ValueError(msg)
    if start_epoch and world.main:  # said even with --no-progress: a rerun must not look like a fresh run
        if start_epoch == config.epochs:
            tqdm.write(f"{directory / CHECKPOINT}: finished, all {start_epoch} epochs trained; nothing to do")
        else:
            tqdm.write(f"{directory / CHECKPOINT}: resuming after epoch {start_epoch} of {config.epochs}")
    log = read_log(directory)[:start_epoch]
    chunks = int(getattr(loss, "chunks", 1))
    flags = [p.requires_grad for p in model.parameters()]
    show = progress and world.main

    for epoch in range(start_epoch, config.epochs):
        if hasattr(loss, "set_epoch"):
            loss.set_epoch(epoch)
        torch.manual_seed(derived_seed(config.seed, epoch, world.rank))
        loader = DataLoader(
            _Indexed(dataset),
            batch_size=config.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(derived_seed(config.seed, epoch)),
        )
        sums: dict[str, float] = defaultdict(float)
        started = time.perf_counter()
        model.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not show, leave=False)
        if epoch == start_epoch:  # the cost line, printed with or without bars (--no-progress)
            clock = EpochClock("train", len(loader), config.epochs - start_epoch, device, evaluates=val is not None,
                               say=tqdm.write if world.main else None)  # fmt: skip
        for step, (x, y, index) in enumerate(bar):
            if len(x) < world.size * chunks:
                clock.batch_done()  # counted, so the cost line still comes for an epoch of a few batches
                continue  # a tail batch too small to give every process and chunk an image, on every process alike
            check_labels(y, num_classes, "--data")  # on the CPU, before the copy: no synchronisation
            x, y = x[world.rank :: world.size].to(device), y[world.rank :: world.size].to(device)
            mine = positions[index[world.rank :: world.size]]
            extra = {k: v[mine].to(device) for k, v in (targets or {}).items()}
            if epoch == start_epoch and step == 0:
                check_images(x, "--data images")
            if config.augment == "crop-flip":
                x = crop_flip(x)
            x = x.contiguous(memory_format=memory_format)
            parts = [v.tensor_split(chunks) for v in extra.values()]
            for chunk, (cx, cy) in enumerate(zip(x.tensor_split(chunks), y.tensor_split(chunks))):
                fraction = (epoch + step / len(loader)) / config.epochs
                given = {} if targets is None else {"targets": {k: p[chunk] for k, p in zip(extra, parts)}}
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    out = loss(model, cx, cy, noise, progress=fraction, **given)
                _check_loss_restored(loss, model, flags)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(out.loss).backward()
                average_gradients(model, world)
                scaler.step(optimizer)
                scaler.update()
                # Summed as tensors on the device: reading a value every step would stall a GPU.
                sums["loss"] += out.loss.detach() * len(cx)
                for name, value in out.parts.items():  # prefixed: a part never shares a column with clean_acc
                    sums[f"loss_{name}"] += (value.detach() if torch.is_tensor(value) else float(value)) * len(cx)
                sums["images"] += len(cx)
            clock.batch_done()
            if show and sums["images"] and (step % 10 == 0 or step == len(loader) - 1):
                means = {k: f"{float(v) / sums['images']:.3f}" for k, v in sums.items() if k != "images"}
                bar.set_postfix(means, refresh=False)
        average_buffers(model, world)
        totals = sum_over_processes({k: float(v) for k, v in sums.items()}, world)
        images = totals.pop("images", 0) or 1
        entry = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        entry |= {k: v / images for k, v in totals.items()}
        entry["seconds"] = time.perf_counter() - started
        if val is not None:  # each process takes every world.size-th image; the counts are summed
            val_set, val_indices = val
            counts = held_out_accuracy(
                model, val_set, noise, val_indices[world.rank :: world.size], batch_size=config.batch_size,
                device=device, seed=derived_seed(config.seed, epoch, world.rank, 1), autocast_dtype=autocast_dtype,
                memory_format=memory_format,
            )  # fmt: skip
            counts = sum_over_processes(counts, world)
            entry["clean_acc"] = counts["clean"] / max(counts["images"], 1)
            if noise is not None:
                entry["noisy_acc"] = counts["noisy"] / max(counts["images"], 1)
        if not math.isfinite(entry["loss"]):
            name = describe(loss, f"training loss {type(loss).__name__}")
            msg = f"{name} became {entry['loss']} in epoch {epoch + 1}; "
            msg += f"{directory / CHECKPOINT} still holds epoch {epoch} (try a lower --lr or other loss options)"
            raise TrainingDivergedError(msg)
        scheduler.step()
        log.append(entry)
        if world.main:
            save_checkpoint(directory, epoch + 1, recorded, model, optimizer, scheduler, scaler)
            write_log(directory, log)
        barrier(world)
        if world.main:  # --no-progress hides the bars, not these lines
            tqdm.write("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))
    if world.main:
        torch.save(model.state_dict(), directory / FINAL_MODEL)
    barrier(world)
    return log


def _check_data_fits_model(model, dataset, device, memory_format) -> int:
    """Before the first epoch: the model takes the images, and every label is one of its classes. Returns K.

    One clean forward pass in eval mode without gradients: it changes no weights, statistics or RNG state.
    """
    x = torch.as_tensor(dataset[0][0])[None].to(device).contiguous(memory_format=memory_format)
    check_images(x, "--data images")
    check_input_shape(model, tuple(x.shape[1:]))
    with torch.no_grad(), eval_mode(model):
        logits = call_model(model, x, first=True)
    check_logits(logits, model, 1)
    labels = _labels(dataset)
    if labels is not None:
        check_labels(labels, logits.shape[1], "--data", indices=range(len(labels)))
    return logits.shape[1]


def _labels(dataset) -> torch.Tensor | None:
    """All labels of a data set when they can be read without loading its images, else None."""
    if isinstance(dataset, torch.utils.data.TensorDataset) and len(dataset.tensors) > 1:
        return dataset.tensors[1]
    targets = getattr(dataset, "targets", None)
    return torch.as_tensor(targets) if targets is not None else None


def _check_loss_restored(loss: TrainingLoss, model: nn.Module, flags: list[bool]) -> None:
    """A loss must hand the model back in training mode with the requires_grad flags it found."""
    name = describe(loss, f"training loss {type(loss).__name__}")
    if not model.training:
        raise PluginBuildError(f"{name} left the model in eval mode; a loss must restore the mode")
    if [p.requires_grad for p in model.parameters()] != flags:
        raise PluginBuildError(f"{name} changed requires_grad flags; a loss must restore them")
