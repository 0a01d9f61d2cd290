"""Train the adaptive mixer's mixing network (Bai et al., SIMODS 2024, §8.2 of the spec): ``rs-plugins train-mixer``.

Training follows the authors' ``trainer.py`` and ``attacks.py``: every clean batch of B images is attacked through the
whole mixture (in the authors' view: γ's BatchNorm in eval, the training constants, α unsquashed) by one APGD-CE and
``targets`` targeted APGD-DLR runs (towards the classes ranked 2, 3, ... by the mixture), each with its own per-image
ε = eps·U(0.4, 1.1), per-image attacker weight w ~ U(0, 0.4) on the BCE term pushing α to the accurate model, and a
χ²-distributed step count. Every image gets an adversarial example: the last misclassified iterate, else the random
start on the ε-sphere, never the clean image (torchattacks' ``APGD.attack_single_run``, called directly).
``extra_clean``·B other clean images join the buffer, which is shuffled into 2·(1 + targets) mini-batches with an
optimizer step every ``accumulate`` of them. Loss c_BCE·BCE(γ, s) + c_CE·CE + c_prod·BCE·CE; AdamW, exponential
warm-up, cosine; gradient clipping, optional autocast. Only the mixing network and its γ normalisation learn.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..validation import MAX_SEED, check_integer, check_number
from .checkpoints import CHECKPOINT, derived_seed, one_writer_per_folder, read_log, resume, save_checkpoint, write_log
from .config import PRECISIONS
from .estimate import EpochClock
from .smoothed_pgd import import_torchattacks

if TYPE_CHECKING:
    from torch import Tensor, nn
    from torch.utils.data import Dataset

MIXING_WEIGHTS = "mixing.pt"  # the mixing network's state dict alone, for --mixer-option checkpoint=
NORMS = ("Linf", "L2")


@dataclass(frozen=True)
class MixerTrainConfig:
    """The mixing network's training settings; defaults are the authors' CIFAR-10 EDM configuration.

    ``eps`` is the attack radius the per-image factor U(``eps_low``, ``eps_high``) scales; ``attack_steps`` is the
    χ² degrees of freedom of each attack's step count (its mean); ``attack_weight`` the largest per-image weight w of
    the attacker's BCE term; ``targets`` the targeted APGD-DLR runs per batch besides the APGD-CE one (capped by the
    number of classes minus one; none below 4 classes); ``extra_clean`` the other clean images per batch, in
    batches; ``accumulate`` the mini-batches per optimizer step (the buffer has 2·(1 + targets) of them).
    """

    epochs: int = 3
    batch_size: int = 50
    lr: float = 5e-5
    weight_decay: float = 1e-5
    accumulate: int = 4
    clip: float = 10.0
    warmup: float = 1 / 25
    eps: float = 8 / 255
    norm: str = "Linf"
    eps_low: float = 0.4
    eps_high: float = 1.1
    attack_steps: int = 75
    attack_weight: float = 0.4
    targets: int = 9
    extra_clean: int = 9
    bce_weight: float = 1.5
    ce_weight: float = 0.0
    prod_weight: float = 0.3
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        flag = {"eps_low": "--eps-range LOW", "eps_high": "--eps-range HIGH"}  # the others: --name-with-dashes
        for name in ("epochs", "batch_size", "accumulate", "attack_steps"):
            check_integer(f"--{name.replace('_', '-')}", getattr(self, name))
        for name in ("targets", "extra_clean"):
            check_integer(f"--{name.replace('_', '-')}", getattr(self, name), minimum=0)
        for name in ("lr", "clip", "eps", "eps_high"):
            check_number(flag.get(name, f"--{name.replace('_', '-')}"), getattr(self, name), above=0)
        for name in ("weight_decay", "eps_low", "bce_weight", "ce_weight", "prod_weight"):
            check_number(flag.get(name, f"--{name.replace('_', '-')}"), getattr(self, name), at_least=0)
        for name in ("warmup", "attack_weight"):
            if not 0 <= check_number(f"--{name.replace('_', '-')}", getattr(self, name), at_least=0) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1]; got {getattr(self, name)!r}")
        if self.eps_low > self.eps_high:
            raise ValueError(
                f"--eps-range LOW HIGH: LOW ({self.eps_low:g}) must not exceed HIGH ({self.eps_high:g}); the attack "
                "radius of each image is eps times a factor drawn from U(LOW, HIGH), e.g. --eps-range 0.4 1.1"
            )
        if self.norm not in NORMS:
            raise ValueError(f"--norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        check_integer("--seed", self.seed, minimum=0, maximum=MAX_SEED)

    def n_targets(self, num_classes: int) -> int:
        """Targeted runs per batch: ranks 2..targets+1, capped by the classes; DLR-targeted needs 4 classes."""
        return min(self.targets, num_classes - 1) if num_classes >= 4 else 0


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Exponential warm-up from 1e-3 to 1 over the first ``warmup`` share of steps, then cosine decay to 0."""
    warm = max(1, round(warmup * total))
    if step < warm:
        return 10 ** (-3 * (1 - step / warm))
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def _keep_iterate_apgd():
    """torchattacks' APGD run once on every image, with per-image ε and the attacker's composite loss.

    ``attack_single_run`` (not ``forward``/``perturb``, which attack only the images the model gets right and give
    the others back clean) returns as its last output the last misclassified iterate of each image, else its random
    start on the ε-sphere: the authors' ``attack_single_run(x, y)[-1]``.
    """
    ta = import_torchattacks("attack", "train-mixer attacks the mixture")

    class KeepIterateAPGD(ta.APGD):
        """APGD-CE (``target`` None) or the authors' targeted DLR, each as (1 - w)·loss + w·BCE(γ, 1) per image."""

        def __init__(self, model, eps: Tensor, weight: Tensor, target: Tensor | None, **kwargs) -> None:
            super().__init__(model, eps=1.0, loss="dlr", n_restarts=1, **kwargs)  # "dlr" routes through dlr_loss
            self.eps, self.weight, self.target = eps, weight, target  # eps: (B, 1, 1, 1), broadcast by APGD

        def dlr_loss(self, logits, y):
            logits = logits.float()
            if self.target is None:
                base = F.cross_entropy(logits, y, reduction="none")
            else:  # the authors' DLRLoss: -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)
                ordered, rows = logits.sort(dim=1)[0], torch.arange(len(y), device=y.device)
                gap = ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12
                base = -(logits[rows, y] - logits[rows, self.target]) / gap
            bce = F.softplus(-self.model.last_gamma.float())  # BCE(γ, 1): large when α leans to the accurate model
            return (1 - self.weight) * base + self.weight * bce

    return KeepIterateAPGD


def training_attacks(mixer: nn.Module, x: Tensor, y: Tensor, config: MixerTrainConfig, num_classes: int):
    """The authors' training attacks on one clean batch: APGD-CE, then targeted APGD-DLR towards the mixture's
    classes ranked 2..``n_targets + 1``, each through the mixture in the authors' view, drawing from torch's RNG.

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,). returns a list of 1 + n_targets adversarial batches like x.
    """
    apgd = _keep_iterate_apgd()
    view = getattr(mixer, "authors_view", None)
    with view() if view is not None else _eval(mixer):
        with torch.no_grad():
            ranked = mixer(x).argsort(dim=1, descending=True)
        adversarial = []
        for rank in [None, *range(2, config.n_targets(num_classes) + 2)]:
            eps = config.eps * torch.empty(len(x), 1, 1, 1, device=x.device).uniform_(config.eps_low, config.eps_high)
            weight = torch.empty(len(x), device=x.device).uniform_(0, config.attack_weight)
            steps = max(1, round(float(torch.distributions.Chi2(float(config.attack_steps)).sample())))
            target = None if rank is None else ranked[:, rank - 1]
            attack = apgd(mixer, eps, weight, target, norm=config.norm, steps=steps)
            attack.set_device(x.device)
            adversarial.append(attack.attack_single_run(x, y)[-1].detach())
    return adversarial


class _eval:
    """Eval mode for the duration of a ``with`` block (a mixer without the authors' view)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


@one_writer_per_folder
def train_mixer(
    mixer: nn.Module,
    dataset: Dataset,
    *,
    config: MixerTrainConfig,
    checkpoint_dir: str | os.PathLike,
    device: torch.device | str = "cpu",
    progress: bool = True,
    settings: dict | None = None,
) -> list[dict[str, float]]:
    """Train ``mixer``'s mixing network in place; resume from ``checkpoint_dir`` when it holds a checkpoint.

    Shuffling and every random draw of the attacks are seeded from (seed, epoch), so a run resumed after epoch k
    ends with the same weights as one that never stopped. Writes ``checkpoint.pt`` each epoch, ``train_log.csv``
    (with ``identical_share``, the share of attacked examples equal to their clean twin: 0 by construction) and
    finally ``mixing.pt`` (for ``--mixer-option checkpoint=``). Returns the per-epoch log.
    """
    if not hasattr(mixer, "trainable"):
        raise ValueError("train-mixer trains the mixing network of --mixer adaptive; this mixer has none")
    device = torch.device(device)
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    mixer.to(device)
    trainable = mixer.trainable()
    with torch.no_grad():
        mixer.eval()
        num_classes = mixer(torch.as_tensor(dataset[0][0])[None].to(device)).shape[1]
    mini_batches = 2 * (1 + config.n_targets(num_classes))  # per buffer, as the authors' trainer
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = math.ceil(len(dataset) / config.batch_size) * math.ceil(mini_batches / config.accumulate)
    total = config.epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, config.warmup))
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    # The cosine schedule spans every epoch, so unlike train's, the epoch count is fixed once a run has started.
    recorded = dataclasses.asdict(config) | (settings or {}) | {"schedule_epochs": config.epochs}
    start_epoch = resume(directory, recorded, trainable, optimizer, scheduler, scaler, device)
    log = read_log(directory)[:start_epoch]

    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(derived_seed(config.seed, epoch))
        generator = torch.Generator().manual_seed(derived_seed(config.seed, epoch))
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
        sums: dict[str, float] = defaultdict(float)
        started = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not progress, leave=False)
        if epoch == start_epoch:  # the cost line, printed with or without bars
            clock = EpochClock("train-mixer", len(loader), config.epochs - start_epoch, device)
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            adversarial = training_attacks(mixer, x, y, config, num_classes)
            twins = torch.cat(adversarial) == x.repeat(len(adversarial), 1, 1, 1)
            sums["identical"] += float(twins.flatten(1).all(1).sum())
            extra = torch.randperm(len(dataset), generator=generator)[: config.extra_clean * len(x)].tolist()
            clean = [x] + ([torch.stack([torch.as_tensor(dataset[i][0]) for i in extra]).to(device)] if extra else [])
            clean_labels = [y] + ([torch.tensor([int(dataset[i][1]) for i in extra], device=device)] if extra else [])
            inputs = torch.cat(clean + adversarial)
            labels = torch.cat(clean_labels + [y] * len(adversarial))
            n_clean = len(inputs) - len(adversarial) * len(x)
            attacked = torch.cat([torch.zeros(n_clean), torch.ones(len(inputs) - n_clean)]).to(device)
            order = torch.randperm(len(inputs), device=device)
            size = math.ceil(len(inputs) / mini_batches)
            mixer.train()
            optimizer.zero_grad(set_to_none=True)
            for ind in range(mini_batches):
                part = order[ind * size : (ind + 1) * size]
                if len(part):
                    _mini_batch(mixer, inputs[part], labels[part], attacked[part], size, config, scaler, sums)
                if (ind + 1) % config.accumulate == 0 or ind == mini_batches - 1:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable.parameters(), config.clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
            clock.batch_done()
            if progress:
                bar.set_postfix({k: f"{v:.3f}" for k, v in _means(sums).items()}, refresh=False)
        entry: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]} | _means(sums)
        entry["seconds"] = time.perf_counter() - started
        log.append(entry)
        save_checkpoint(directory, epoch + 1, recorded, trainable, optimizer, scheduler, scaler)
        write_log(directory, log)
        # one line per epoch, with or without bars (--no-progress)
        tqdm.write("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))
    mixer.eval()
    torch.save(trainable.state_dict(), directory / MIXING_WEIGHTS)
    return log


def _mini_batch(mixer, inputs, labels, attacked, size: int, config: MixerTrainConfig, scaler, sums) -> None:
    """Forward and backward one mini-batch of the shuffled buffer (loss scaled as the authors' by its share of a
    full mini-batch and by 1 / accumulate); adds its statistics to ``sums``."""
    autocast_dtype = PRECISIONS[config.precision]
    device = inputs.device
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        log_probs = mixer(inputs)
    gamma = mixer.last_gamma.float()
    bce = F.binary_cross_entropy_with_logits(gamma, attacked, reduction="none")
    ce = F.nll_loss(log_probs.float(), labels, reduction="none")
    loss = (config.bce_weight * bce + config.ce_weight * ce + config.prod_weight * bce * ce).mean()
    if not torch.isfinite(loss):
        raise ValueError(f"the mixing-network loss became {loss.item()}; try a lower --lr")
    scaler.scale(loss * (len(inputs) / size) / config.accumulate).backward()
    alpha = mixer.alpha(gamma.detach())  # training mode: the sigmoid, as the loss sees it
    correct = (log_probs.detach().argmax(1) == labels).float()
    n = len(inputs)
    sums["loss"] += float(loss.detach()) * n
    sums["bce"] += float(bce.detach().sum())
    sums["ce"] += float(ce.detach().sum())
    sums["alpha_clean"] += float(alpha[attacked == 0].sum())
    sums["alpha_attacked"] += float(alpha[attacked == 1].sum())
    sums["acc_clean"] += float(correct[attacked == 0].sum())
    sums["acc_attacked"] += float(correct[attacked == 1].sum())
    sums["clean_images"] += float((attacked == 0).sum())
    sums["attacked_images"] += float((attacked == 1).sum())


def _means(sums: dict[str, float]) -> dict[str, float]:
    """Per-epoch means: losses over all examples, α and accuracy over the clean or the attacked ones."""
    clean, attacked = max(1.0, sums["clean_images"]), max(1.0, sums["attacked_images"])
    total = clean + attacked
    means = {k: sums[k] / total for k in ("loss", "bce", "ce")}
    means |= {k: sums[k] / (clean if k.endswith("clean") else attacked) for k in
              ("alpha_clean", "alpha_attacked", "acc_clean", "acc_attacked")}  # fmt: skip
    means["identical_share"] = sums["identical"] / attacked
    return means


# -- the accuracy-robustness trade-off ----------------------------------------------------------------------------

__all__ = ["CHECKPOINT", "MIXING_WEIGHTS", "MixerTrainConfig", "train_mixer", "training_attacks"]
