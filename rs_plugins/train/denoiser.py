"""Train a denoiser for denoised smoothing (Salman et al., "Denoised Smoothing", NeurIPS 2020, arXiv:2003.01908).

The DnCNN network and its ``denoiser.pt`` format are here too, shared with the ``dncnn`` denoiser plugin that runs it.

The three objectives of the authors' ``code/train_denoiser.py`` (microsoft/denoised-smoothing):

- ``mse`` (their ``denoising``): the mean over pixels of (D(x + delta) - x)^2, i.e. ||D(x + delta) - x||^2 / (C H W);
- ``stability``: cross-entropy of a frozen classifier f on D(x + delta) against its own prediction on x,
  CE(f(D(x + delta)), argmax f(x)), which needs no labels;
- ``classification``: cross-entropy of f on D(x + delta) against the label, CE(f(D(x + delta)), y).

The loss is taken on D(x + delta) clipped to [0, 1], the function ``--denoiser dncnn:`` certifies (the hook's
contract); the authors train and certify the unclipped output. Clipping never increases the squared error, and
under ``stability`` and ``classification`` it keeps the classifier from being trained on inputs it never sees at
certification.

Defaults are the authors': Adam, learning rate 1e-3, weight decay 1e-4, batch 256, 90 epochs, the learning rate
times 0.1 every 30 epochs; the DnCNN has depth 17 and width 64. Their run's schedule, each decay one epoch later
(``scheduler.step(epoch)``), is ``lr_schedule="step-epoch"``; their CIFAR-10 training images are randomly cropped
and flipped, ``augment="crop-flip"``. Checkpoints, exact resume and ``train_log.csv`` go through
``rs_plugins.train.checkpoints`` as for every trainer; each epoch ends with held-out metrics: the PSNR of
D(x + delta) (and of x + delta, for comparison) and, with a classifier, its accuracy on x, x + delta and
D(x + delta).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..certify.runner import check_dataset
from ..certify.sampling import eval_mode
from ..errors import TrainingDivergedError
from ..file_checks import load_weights_only
from ..schemas import DnCNNFile, check_record
from ..validation import MAX_SEED, CheckedNoise, check_images, check_integer, check_labels, check_number
from .checkpoints import CHECKPOINT, derived_seed, one_writer_per_folder, read_log, resume, save_checkpoint, write_log
from .config import AUGMENTATIONS, PRECISIONS, crop_flip
from .estimate import EpochClock
from .held_out import VAL_IMAGES, spread_indices
from .schedules import build_scheduler, check_schedule

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from ..types import NoiseSampler

OPTION = "--denoiser dncnn:PATH"
FILE = "denoiser.pt"  # what train-denoiser writes in its --checkpoint-dir
FORMAT = "rs-plugins dncnn"
EXPECTED = f"a DnCNN denoiser ({FILE} from rs-plugins train-denoiser, or the authors' cifar_dncnn checkpoint)"


class DnCNN(nn.Module):
    """The residual denoising CNN: ``x - layers(x)``, unclipped (``DnCNNDenoiser`` and train-denoiser clip it).

    Shape:
        x: (B, C, H, W), any values (noisy images); returns the same shape.
    """

    def __init__(self, channels: int = 3, depth: int = 17, width: int = 64) -> None:
        super().__init__()
        if not (isinstance(depth, int) and depth >= 2):
            raise ValueError(f"--depth must be an integer >= 2 (convolutions, first and last included); got {depth!r}")
        self.channels, self.depth, self.width = channels, depth, width
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width, 1e-4, 0.95)]
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(width, channels, 3, padding=1, bias=False))
        self.layers = nn.Sequential(*layers)
        for module in self.layers:
            if isinstance(module, nn.Conv2d):
                nn.init.orthogonal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.layers[-1].weight)  # the predicted noise starts at 0: D starts as the identity

    def forward(self, x: Tensor) -> Tensor:
        return x - self.layers(x)

    def architecture(self) -> dict[str, int]:
        return {"channels": self.channels, "depth": self.depth, "width": self.width}


def shape_of(state: dict[str, Tensor]) -> dict[str, int]:
    """(channels, depth, width) of a DnCNN state dict, read from its convolutions' weights."""
    convs = sorted(int(m[1]) for k in state if (m := re.fullmatch(r"layers\.(\d+)\.weight", k)) and state[k].dim() == 4)
    if not convs or "layers.0.bias" not in state:
        raise KeyError("layers.0.weight")
    width, channels = state[f"layers.{convs[0]}.weight"].shape[:2]
    return {"channels": int(channels), "depth": len(convs), "width": int(width)}


def load_dncnn(path: str | Path, option: str = OPTION) -> tuple[DnCNN, dict[str, Any]]:
    """The DnCNN in ``path`` (a file or a directory holding ``denoiser.pt``) and what the file says about it.

    The architecture is read from the weights; a file of another architecture is refused naming ``option``.
    """
    file = Path(path) / FILE if Path(path).is_dir() else Path(path)
    if not file.exists():
        raise ValueError(f"{option}: no file {str(file)!r}; give {EXPECTED}")
    state, meta = _state_dict(file, option)
    try:
        net = DnCNN(**shape_of(state))
        net.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as err:
        keys = ", ".join(list(state)[:3]) if isinstance(state, dict) else type(state).__name__
        msg = f"{option}: another architecture's weights in {file} ({keys}, ...), not a DnCNN's; expected "
        raise ValueError(msg + EXPECTED + f" ({type(err).__name__})") from None
    return net, meta


def _state_dict(path: Path, option: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The DnCNN weights in ``path`` and what the file says about them (trained sigma, objective, ...)."""
    found = load_weights_only(path, option, EXPECTED)
    if not isinstance(found, dict):
        raise ValueError(f"{option}: {path} holds a {type(found).__name__}; expected {EXPECTED}")
    meta: dict[str, Any] = {}
    if found.get("format") == FORMAT:  # ours: its fields checked, one line naming the file and the field
        check_record(found, DnCNNFile, f"{option}: {path}", ValueError)
        meta = {k: v for k, v in found.items() if k not in ("format", "state_dict")}
        state = found["state_dict"]
    elif "state_dict" in found and "arch" in found:  # the authors' train_denoiser.py checkpoint
        if found["arch"] not in ("cifar_dncnn", "cifar_dncnn_wide", "imagenet_dncnn"):
            raise ValueError(f"{option}: {path} holds the authors' {found['arch']!r}, not a DnCNN; expected {EXPECTED}")
        meta = {"arch": found["arch"]}
        state = {re.sub(r"^(module\.)?dncnn\.", "layers.", k): v for k, v in found["state_dict"].items()}
    elif "model" in found and "optimizer" in found:
        raise ValueError(f"{option}: {path} is a training checkpoint (checkpoint.pt); give the {FILE} next to it")
    else:
        state = found
    return state, meta


OBJECTIVES = ("mse", "stability", "classification")
NEEDS_CLASSIFIER = ("stability", "classification")
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class DenoiserTrainConfig:
    """Objective and optimisation settings; the defaults are those of the authors' ``train_denoiser.py``.

    ``momentum`` applies to ``optimizer="sgd"`` only (Adam keeps its default betas, as the authors do).
    ``lr_schedule`` and ``augment`` default to plain step decay and no augmentation; the authors' runs are
    ``"step-epoch"`` and (CIFAR-10) ``"crop-flip"``.
    """

    objective: str = "mse"
    epochs: int = 90
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 30
    lr_gamma: float = 0.1
    lr_schedule: str = "standard"
    augment: str = "none"
    seed: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "lr_step"):
            check_integer(f"--{name.replace('_', '-')}", getattr(self, name), minimum=1)
        for name in ("lr", "lr_gamma"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), above=0)
        for name in ("momentum", "weight_decay"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), at_least=0)
        check_integer("--seed", self.seed, minimum=0, maximum=MAX_SEED)
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        check_schedule(self.lr_schedule, None)
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"--augment must be one of {', '.join(AUGMENTATIONS)}; got {self.augment!r}")


def mse_loss(denoised: Tensor, x: Tensor) -> Tensor:
    """Mean over pixels and images of (D(x + delta) - x)^2 (the authors' ``MSELoss()``)."""
    return F.mse_loss(denoised, x)


def stability_loss(classifier: nn.Module, denoised: Tensor, x: Tensor) -> Tensor:
    """Mean over images of CE(f(D(x + delta)), argmax f(x)); f is frozen, its gradient flows to D only.

    Shape:
        denoised, x: (B, C, H, W); returns a scalar.
    """
    with torch.no_grad():
        target = classifier(x).argmax(1)  # (B,)
    return F.cross_entropy(classifier(denoised), target)


def classification_loss(classifier: nn.Module, denoised: Tensor, y: Tensor) -> Tensor:
    """Mean over images of CE(f(D(x + delta)), y); f is frozen, its gradient flows to D only.

    Shape:
        denoised: (B, C, H, W); y: (B,) labels; returns a scalar.
    """
    return F.cross_entropy(classifier(denoised), y)


def psnr(estimate: Tensor, x: Tensor) -> Tensor:
    """Per-image peak signal-to-noise ratio in dB for images in [0, 1]: 10 log10(1 / mean squared error).

    Shape:
        estimate, x: (B, C, H, W); returns (B,).
    """
    mse = (estimate.float() - x.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


@torch.no_grad()
def held_out_metrics(
    denoiser: nn.Module,
    classifier: nn.Module | None,
    dataset: Dataset,
    noise: NoiseSampler,
    indices: list[int],
    *,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> dict[str, float]:
    """Mean PSNR of D(x + delta) clipped to [0, 1] (as certify runs it) and of x + delta; with a classifier, its
    accuracy on x, x + delta and D(x + delta). One noise draw per image from ``seed``: the same draws each epoch.
    """
    generator = torch.Generator(device).manual_seed(seed)
    sums = dict.fromkeys(("psnr", "psnr_noisy", "clean_acc", "noisy_acc", "denoised_acc"), 0.0)
    with eval_mode(denoiser):
        for start in range(0, len(indices), batch_size):
            items = [dataset[i] for i in indices[start : start + batch_size]]
            x = torch.stack([torch.as_tensor(item[0]) for item in items]).to(device)
            noisy = noise.sample(x, generator=generator)
            denoised = denoiser(noisy).clamp(0, 1)
            sums["psnr"] += float(psnr(denoised, x).sum())
            sums["psnr_noisy"] += float(psnr(noisy, x).sum())
            if classifier is not None:
                y = torch.as_tensor([int(item[1]) for item in items], device=device)
                for key, images in (("clean_acc", x), ("noisy_acc", noisy), ("denoised_acc", denoised)):
                    sums[key] += float((classifier(images).argmax(1) == y).sum())
    keys = sums if classifier is not None else ("psnr", "psnr_noisy")
    return {k: sums[k] / len(indices) for k in keys}


@one_writer_per_folder
def train_denoiser(
    denoiser: DnCNN,
    dataset: Dataset,
    noise: NoiseSampler,
    *,
    config: DenoiserTrainConfig,
    checkpoint_dir: str | os.PathLike,
    classifier: nn.Module | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    settings: dict | None = None,
    val_data: Dataset | None = None,
    val_images: int = VAL_IMAGES,
) -> list[dict[str, float]]:
    """Train ``denoiser`` in place; resume from ``checkpoint_dir`` when it holds a checkpoint of the same settings.

    Shuffling, crops and noise are seeded from (seed, epoch), so a run resumed after epoch k ends with the same
    weights as one that never stopped. ``classifier`` (needed by ``stability`` and ``classification``) is frozen
    and kept in eval mode. Writes ``checkpoint.pt`` and ``train_log.csv`` each epoch and finally ``denoiser.pt``
    (for ``--denoiser dncnn:``). Returns the per-epoch log.
    """
    if config.objective in NEEDS_CLASSIFIER and classifier is None:
        raise ValueError(f"--objective {config.objective} needs --model: the frozen classifier D is trained for")
    device = torch.device(device)
    noise = CheckedNoise(noise)  # a broken noise plugin is named, not crashed on
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    denoiser.to(device)
    if classifier is not None:
        classifier.to(device).eval().requires_grad_(False)
    params = denoiser.parameters()
    if config.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = build_scheduler(optimizer, step=config.lr_step, gamma=config.lr_gamma, schedule=config.lr_schedule)
    autocast_dtype = PRECISIONS[config.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    recorded = dataclasses.asdict(config) | (settings or {})
    defaults = dataclasses.asdict(type(config)())  # for settings added since a checkpoint was written
    start_epoch = resume(directory, recorded, denoiser, optimizer, scheduler, scaler, device, defaults)
    if start_epoch > config.epochs:
        msg = f"--epochs {config.epochs}: {directory / CHECKPOINT} already holds {start_epoch} epochs; give "
        raise ValueError(msg + f"--epochs {start_epoch} or more, or another --checkpoint-dir")
    if start_epoch:  # said even without progress bars: a rerun must not look like a fresh run
        done = "finished, nothing to do" if start_epoch == config.epochs else f"resuming after epoch {start_epoch}"
        tqdm.write(f"{directory / CHECKPOINT}: {done} ({config.epochs} epochs)")
    log = read_log(directory)[:start_epoch]
    val = None if val_data is None or val_images < 1 else spread_indices(len(val_data), val_images)
    if config.objective == "classification":  # labels outside the classifier's classes are refused, not crashed on
        classes = check_dataset(classifier, dataset, range(len(dataset)), device)

    for epoch in range(start_epoch, config.epochs):
        shuffle = torch.Generator().manual_seed(derived_seed(config.seed, epoch))
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=shuffle)
        draws = torch.Generator(device).manual_seed(derived_seed(config.seed, epoch, 1))
        crops = torch.Generator(device).manual_seed(derived_seed(config.seed, epoch, 2))
        total, images, started = torch.zeros((), device=device), 0, time.perf_counter()
        denoiser.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not progress, leave=False)
        if epoch == start_epoch:  # the cost line, printed with or without bars
            clock = EpochClock("train-denoiser", len(loader), config.epochs - start_epoch, device, evaluates=bool(val))
        for step, (x, y) in enumerate(bar):
            x = x.to(device)
            if epoch == start_epoch and step == 0:
                check_images(x, "--data images")
            if config.augment == "crop-flip":  # as the authors' CIFAR-10 training split: RandomCrop(32, 4) + flip
                x = crop_flip(x, generator=crops)
            if config.objective == "classification":
                check_labels(y, classes, "--data")
            noisy = noise.sample(x, generator=draws)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                denoised = denoiser(noisy).clamp(0, 1)  # trained as certify runs it: clipped to [0, 1]
                if config.objective == "mse":
                    loss = mse_loss(denoised, x)
                elif config.objective == "stability":
                    loss = stability_loss(classifier, denoised, x)
                else:
                    loss = classification_loss(classifier, denoised, torch.as_tensor(y).to(device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += loss.detach().float() * len(x)  # summed on the device: reading it every step would stall a GPU
            images += len(x)
            clock.batch_done()
            if progress and step % 10 == 0:
                bar.set_postfix({config.objective: f"{float(total) / images:.4f}"}, refresh=False)
        entry: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        entry[f"loss_{config.objective}"] = float(total) / max(images, 1)
        entry["seconds"] = time.perf_counter() - started
        if val is not None:
            entry |= held_out_metrics(denoiser, classifier, val_data, noise, val, batch_size=config.batch_size,
                                      device=device, seed=derived_seed(config.seed, 2**31 + 1))  # fmt: skip
        if not math.isfinite(entry[f"loss_{config.objective}"]):
            msg = f"the {config.objective} loss became {entry[f'loss_{config.objective}']} in epoch {epoch + 1}; "
            raise TrainingDivergedError(msg + f"{directory / CHECKPOINT} still holds epoch {epoch} (try a lower --lr)")
        scheduler.step()
        log.append(entry)
        save_checkpoint(directory, epoch + 1, recorded, denoiser, optimizer, scheduler, scaler)
        write_log(directory, log)
        tqdm.write("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))
    save_denoiser(denoiser, directory / FILE, {"sigma": getattr(noise, "sigma", None)} | recorded)
    return log


def save_denoiser(denoiser: DnCNN, path: Path, recorded: dict[str, Any]) -> None:
    """The weights and how they were trained, in a file ``torch.load(weights_only=True)`` reads."""
    about = {k: recorded.get(k) for k in ("objective", "sigma", "noise", "epochs", "data", "model")}
    state = {"format": FORMAT, "state_dict": denoiser.state_dict(), **denoiser.architecture(), **about}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
