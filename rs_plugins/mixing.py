"""Train the adaptive mixer's mixing network (Bai et al., SIMODS 2024, §8.2 of the spec) and sweep the trade-off.

Training follows the authors' recipe with torchattacks in place of their AutoAttack fork: each batch is used clean
(label s = 0) and attacked through the whole mixture (s = 1) by APGD-CE (one time in ten) or targeted APGD-DLR,
with ε scaled by U(0.4, 1.1), χ²-distributed step counts and the attacker's own BCE term pushing α towards the
accurate model. The loss is c_BCE·BCE(γ, s) + c_CE·CE(m(x), y) + c_prod·BCE·CE; AdamW with exponential warm-up and a
cosine schedule, gradient accumulation and clipping, optional autocast. The bases stay frozen: only the mixing
network and its γ normalisation learn. Checkpoints and exact resume reuse ``rs_plugins.training``'s.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .attacks import import_torchattacks
from .training import CHECKPOINT, PRECISIONS, _read_log, _resume, _save_checkpoint, _seed, _write_log
from .validation import MAX_SEED, check_integer, check_number

if TYPE_CHECKING:
    from torch import Tensor, nn
    from torch.utils.data import Dataset

MIXING_WEIGHTS = "mixing.pt"  # the mixing network's state dict alone, for --mixer-option checkpoint=
NORMS = ("Linf", "L2")


@dataclass(frozen=True)
class MixerTrainConfig:
    """The mixing network's training settings; defaults are the authors' CIFAR-10 EDM configuration.

    ``eps`` is the attack radius the randomized factor U(``eps_low``, ``eps_high``) scales; ``attack_steps`` is the
    χ² degrees of freedom of the step count (its mean); ``attack_weight`` the largest weight w of the attacker's
    BCE term; ``untargeted`` the share of APGD-CE attacks among all (the rest are targeted APGD-DLR).
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
    untargeted: float = 0.1
    bce_weight: float = 1.5
    ce_weight: float = 0.0
    prod_weight: float = 0.3
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "accumulate", "attack_steps"):
            check_integer(f"--{name.replace('_', '-')}", getattr(self, name))
        for name in ("lr", "clip", "eps", "eps_high"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), above=0)
        for name in ("weight_decay", "eps_low", "bce_weight", "ce_weight", "prod_weight"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), at_least=0)
        for name in ("warmup", "attack_weight", "untargeted"):
            if not 0 <= check_number(f"--{name.replace('_', '-')}", getattr(self, name), at_least=0) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1]; got {getattr(self, name)!r}")
        if self.eps_low > self.eps_high:
            raise ValueError(f"--eps-low ({self.eps_low}) must not exceed --eps-high ({self.eps_high})")
        if self.norm not in NORMS:
            raise ValueError(f"--norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        check_integer("--seed", self.seed, minimum=0, maximum=MAX_SEED)


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Exponential warm-up from 1e-3 to 1 over the first ``warmup`` share of steps, then cosine decay to 0."""
    warm = max(1, round(warmup * total))
    if step < warm:
        return 10 ** (-3 * (1 - step / warm))
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def _attack_classes():
    """torchattacks' APGD and APGDT with the attacker's composite loss (1 - w)·base + w·BCE(γ, 1)."""
    ta = import_torchattacks("attack", "train-mixer attacks the mixture")

    def bce_to_robust(model) -> Tensor:
        return F.softplus(-model.last_gamma.float())  # BCE(γ, 1): large when α leans to the accurate model

    class CompositeAPGD(ta.APGD):
        """Untargeted APGD-CE whose per-image loss adds the attacker's BCE term."""

        def __init__(self, model, weight: float, **kwargs) -> None:
            super().__init__(model, loss="dlr", **kwargs)  # "dlr" routes the loss through dlr_loss below
            self.weight = weight

        def dlr_loss(self, logits, y):
            ce = F.cross_entropy(logits.float(), y, reduction="none")
            return (1 - self.weight) * ce + self.weight * bce_to_robust(self.model)

    class CompositeAPGDT(ta.APGDT):
        """Targeted APGD-DLR towards the class ranked ``rank`` (2 = runner-up), plus the attacker's BCE term."""

        def __init__(self, model, weight: float, rank: int, **kwargs) -> None:
            super().__init__(model, n_classes=2, **kwargs)  # one target pass
            self.weight, self.rank = weight, rank

        def attack_single_run(self, x, y):
            self.target_class = self.rank
            return super().attack_single_run(x, y)

        def dlr_loss_targeted(self, logits, y, y_target):
            dlr = super().dlr_loss_targeted(logits.float(), y, y_target)
            return (1 - self.weight) * dlr + self.weight * bce_to_robust(self.model)

    return CompositeAPGD, CompositeAPGDT


def adaptive_attack(mixer: nn.Module, x: Tensor, y: Tensor, config: MixerTrainConfig, num_classes: int) -> Tensor:
    """One randomized training attack through the whole mixture (eval mode), drawing from torch's RNG.

    Shape:
        x: (B, C, H, W) in [0, 1]; y: (B,). returns adversarial images like x.
    """
    apgd, apgdt = _attack_classes()
    eps = config.eps * float(torch.empty(()).uniform_(config.eps_low, config.eps_high))
    steps = max(1, round(float(torch.distributions.Chi2(float(config.attack_steps)).sample())))
    weight = float(torch.empty(()).uniform_(0, config.attack_weight))
    seed = int(torch.randint(0, 2**31 - 1, ()))
    common = dict(norm=config.norm, eps=eps, steps=steps, n_restarts=1, seed=seed)
    if num_classes < 4 or float(torch.rand(())) < config.untargeted:  # DLR-targeted needs 4 classes
        attack = apgd(mixer, weight, **common)
    else:
        attack = apgdt(mixer, weight, int(torch.randint(2, num_classes + 1, ())), **common)
    attack.set_device(x.device)
    was_training = mixer.training
    try:
        return attack(x, y).detach()
    finally:
        mixer.train(was_training)


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
    and finally ``mixing.pt`` (for ``--mixer-option checkpoint=``). Returns the per-epoch log.
    """
    if not hasattr(mixer, "trainable"):
        raise ValueError("train-mixer trains the mixing network of --mixer adaptive; this mixer has none")
    device = torch.device(device)
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    mixer.to(device)
    trainable = mixer.trainable()
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = math.ceil(math.ceil(len(dataset) / config.batch_size) / config.accumulate)
    total = config.epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, config.warmup))
    autocast_dtype = PRECISIONS[config.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    # The cosine schedule spans every epoch, so unlike train's, the epoch count is fixed once a run has started.
    recorded = dataclasses.asdict(config) | (settings or {}) | {"schedule_epochs": config.epochs}
    start_epoch = _resume(directory, recorded, trainable, optimizer, scheduler, scaler, device)
    log = _read_log(directory)[:start_epoch]
    with torch.no_grad():
        mixer.eval()
        num_classes = mixer(torch.as_tensor(dataset[0][0])[None].to(device)).shape[1]

    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(_seed(config.seed, epoch))
        generator = torch.Generator().manual_seed(_seed(config.seed, epoch))
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
        sums: dict[str, float] = defaultdict(float)
        started = time.perf_counter()
        mixer.train()
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not progress, leave=False)
        for step, (x, y) in enumerate(bar):
            x, y = x.to(device), y.to(device)
            x_adv = adaptive_attack(mixer, x, y, config, num_classes)
            inputs, labels = torch.cat([x, x_adv]), torch.cat([y, y])
            attacked = torch.cat([torch.zeros(len(x)), torch.ones(len(x))]).to(device)
            order = torch.randperm(len(inputs), device=device)
            inputs, labels, attacked = inputs[order], labels[order], attacked[order]
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                log_probs = mixer(inputs)
            bce = F.binary_cross_entropy_with_logits(mixer.last_gamma.float(), attacked, reduction="none")
            ce = F.nll_loss(log_probs.float(), labels, reduction="none")
            loss = (config.bce_weight * bce + config.ce_weight * ce + config.prod_weight * bce * ce).mean()
            if not torch.isfinite(loss):
                raise ValueError(f"the mixing-network loss became {float(loss)} in epoch {epoch + 1}; try a lower --lr")
            scaler.scale(loss / config.accumulate).backward()
            if (step + 1) % config.accumulate == 0 or step == len(loader) - 1:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable.parameters(), config.clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            alpha = torch.sigmoid(mixer.last_gamma.detach().float())
            correct = (log_probs.detach().argmax(1) == labels).float()
            n = len(inputs)
            sums["loss"] += float(loss.detach()) * n
            sums["bce"] += float(bce.detach().mean()) * n
            sums["ce"] += float(ce.detach().mean()) * n
            sums["alpha_clean"] += float(alpha[attacked == 0].sum())
            sums["alpha_attacked"] += float(alpha[attacked == 1].sum())
            sums["acc_clean"] += float(correct[attacked == 0].sum())
            sums["acc_attacked"] += float(correct[attacked == 1].sum())
            sums["images"] += n
            if progress:
                half = sums["images"] / 2
                parts = {k: v / (half if k.startswith(("alpha", "acc")) else sums["images"]) for k, v in sums.items()}
                bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items() if k != "images"}, refresh=False)
        half = sums.pop("images") / 2
        entry: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        entry |= {k: v / (half if k.startswith(("alpha", "acc")) else 2 * half) for k, v in sums.items()}
        entry["seconds"] = time.perf_counter() - started
        log.append(entry)
        _save_checkpoint(directory, epoch + 1, recorded, trainable, optimizer, scheduler, scaler)
        _write_log(directory, log)
        if progress:
            tqdm.write("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))
    mixer.eval()
    torch.save(trainable.state_dict(), directory / MIXING_WEIGHTS)
    return log


# -- the accuracy-robustness trade-off ----------------------------------------------------------------------------

TRADEOFF_COLUMNS = ("mixer", "alpha", "clean_accuracy", "robust_accuracy")


def tradeoff(
    mixers: dict[str, tuple[nn.Module, float | None]],
    images: Tensor,
    labels: Tensor,
    *,
    attack: str = "APGD",
    norm: str | None = "Linf",
    eps: float = 8 / 255,
    options: dict | None = None,
    sigma: float | None = None,
    radii: Sequence[float] = (),
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Clean accuracy, robust accuracy under ``attack`` at ``eps`` through each whole mixture, and (with ``sigma``)
    certified accuracy of the mixture with the smoothed robust member at each radius, one row per mixer.

    Args:
        mixers: label -> (mixer module, its α for the table; None for the adaptive mixer, whose α_min is shown).
        images, labels: the evaluation set. Shape: (N, C, H, W) in [0, 1]; (N,).
    """
    from .builtin.gaussian import GaussianNoise
    from .evaluation import attack as run_attack
    from .mixed_certificate import MixedCertifier
    from .runner import image_generator

    device = torch.device(device)
    rows = []
    for label, (model, alpha_mix) in tqdm(mixers.items(), desc="trade-off", disable=not progress):
        model = model.to(device).eval()
        result = run_attack(model, images, labels, attack=attack, norm=norm, eps=[eps], options=options,
                            batch_size=batch_size, seed=seed, device=device)  # fmt: skip
        per_eps = result.summary["per_eps"][f"{eps:g}"]
        row = {"mixer": label, "alpha": "" if alpha_mix is None else alpha_mix}
        row |= {"clean_accuracy": per_eps["clean_accuracy"], "robust_accuracy": per_eps["robust_accuracy"]}
        if sigma is not None and float(getattr(model, "certified_alpha", 0)) <= 0.5:
            row |= {f"certified_{r:g}": 0.0 for r in radii}  # g may outvote h anywhere: nothing to sample
        elif sigma is not None:
            certifier, noise = MixedCertifier(), GaussianNoise(sigma)
            certificates = []
            for start in range(0, len(images), 16):
                chunk = images[start : start + 16].to(device)
                generators = [image_generator(seed, start + i, device) for i in range(len(chunk))]
                certificates += certifier.certify(model, chunk, noise, n0=n0, n=n, alpha=alpha,
                                                  batch_size=batch_size, generator=generators)  # fmt: skip
            for r in radii:
                hits = [c.prediction == int(y) and c.radius >= r for c, y in zip(certificates, labels)]
                row[f"certified_{r:g}"] = sum(hits) / len(hits)
        rows.append(row)
    return rows


def write_tradeoff(rows: list[dict[str, Any]], csv_path: str | os.PathLike, plot: str | os.PathLike | None,
                   *, title: str = "") -> None:  # fmt: skip
    """The trade-off table as CSV and, with ``plot``, the accuracy-robustness curve as a PNG."""
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    fixed = [r for r in rows if r["alpha"] != "" and not str(r["mixer"]).startswith("adaptive")]
    if fixed:
        ax.plot([r["robust_accuracy"] for r in fixed], [r["clean_accuracy"] for r in fixed], "o-", label="fixed α")
        for r in fixed:
            ax.annotate(f"{r['alpha']:g}", (r["robust_accuracy"], r["clean_accuracy"]), fontsize=7)
    for r in rows:
        if r not in fixed:
            ax.plot(r["robust_accuracy"], r["clean_accuracy"], "*", markersize=12, label=str(r["mixer"]))
    ax.set_xlabel("robust accuracy")
    ax.set_ylabel("clean accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    plt.close(fig)


__all__ = ["CHECKPOINT", "MIXING_WEIGHTS", "MixerTrainConfig", "adaptive_attack", "train_mixer", "tradeoff"]
