"""Empirical robustness: torchattacks or AutoAttack against a base, smoothed or mixed classifier, per (image, eps).

``attack_dataset`` is the resumable runner behind ``rs-plugins attack`` (one ``AttackRow`` per image and eps,
on disk before the next group starts); ``attack`` does the same for tensors in a notebook. With a noise sampler
the target is the smoothed classifier: the attack runs on its soft version with m noise draws per image
(SmoothAdv-PGD's expectation over transformation, Salman et al. 2019), and both the clean image and the
adversarial point are judged by Cohen et al.'s PREDICT, so robust accuracy is the smoothed classifier's.
The adversaries themselves are in ``adversaries``, the tables, plots and certified cross-check in ``summary``.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from ..certify.runner import duration, image_generator, passes_per_image
from ..certify.sampling import eval_mode
from ..certify.smoothing import check_images, check_sampling, cohen_predict
from ..results.files import ATTACK_COLUMNS, AttackRow, ResultsFile, Row
from ..train.smoothed_pgd import EOTSoftClassifier, attack_mode
from ..validation import check_finite_logits, check_labels, check_logits
from .adversaries import Adversary, check_eps, make_adversary
from .summary import certified_breaks, certified_targets, format_attack_table, summarize_attack

if TYPE_CHECKING:
    from torch import Tensor, nn
    from torch.utils.data import Dataset

    from ..types import NoiseSampler


def _generator(seed: int, idx: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator for one image and one purpose (1: the attack's noise draws, 2: PREDICT at the adversary);
    stream 0 is ``runner.image_generator``, so clean PREDICT equals ``rs-plugins predict``."""
    if stream == 0:
        return image_generator(seed, idx, device)
    state = np.random.SeedSequence([seed, idx, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def _group_seed(seed: int, first: int, eps: float | None) -> int:
    """The global RNG seed for one attack call: torchattacks draws random starts from it."""
    bits = 0 if eps is None else int.from_bytes(struct.pack("<d", eps), "little")
    return int(np.random.SeedSequence([seed, first, bits]).generate_state(1, np.uint32)[0])


@dataclass
class Smoothing:
    """What turns the base model into the smoothed target: the noise, m draws for the attack, PREDICT's n, alpha."""

    noise: NoiseSampler
    m: int = 16
    n: int = 10_000
    alpha: float = 0.001


class _Judge:
    """Predictions and attacks on one group of images, for the base or the smoothed classifier."""

    def __init__(self, model, smoothing: Smoothing | None, *, batch_size: int, seed: int, device) -> None:
        self.model, self.smoothing, self.batch_size, self.seed, self.device = model, smoothing, batch_size, seed, device

    def predict(self, x: Tensor, chunk: Sequence[int], stream: int) -> list[int]:
        if self.smoothing is None:
            with torch.no_grad():
                logits = self.model(x)
            check_logits(logits, self.model, len(x))
            check_finite_logits(torch.isfinite(logits).all(), self.model)  # argmax of NaN would be class 0
            return logits.argmax(1).tolist()
        s = self.smoothing
        generators = [_generator(self.seed, i, stream, self.device) for i in chunk]
        return cohen_predict(
            self.model, x, s.noise, n=s.n, alpha=s.alpha, batch_size=self.batch_size, generator=generators
        )

    def target(self, x: Tensor, chunk: Sequence[int]) -> nn.Module:
        if self.smoothing is None:
            return self.model
        s = self.smoothing
        draws = []
        for i in chunk:
            zeros = torch.zeros((s.m, *x.shape[1:]), device=x.device, dtype=x.dtype)
            draws.append(s.noise.sample(zeros, generator=_generator(self.seed, i, 1, self.device)))
        return EOTSoftClassifier(self.model, torch.stack(draws, dim=1), s.noise).eval()  # (m, B, C, H, W)


def attack_group_size(batch_size: int, smoothing: Smoothing | None) -> int:
    """Images per attack call: ``batch_size``, or ``batch_size // m`` for a smoothed target (m draws per image)."""
    return max(1, batch_size // (smoothing.m if smoothing else 1))


def attack_keys(
    indices: Sequence[int], eps: Sequence[float], below: dict[int, float] | None = None
) -> set[tuple[int, float]]:
    """The (index, eps) pairs a run attacks: every pair, or with ``below`` only radii under each image's."""
    return {(i, float(e)) for i in indices for e in eps if below is None or e < below.get(i, 0.0)}


def _num_classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        logits = model(x[:1])
    check_logits(logits, model, 1)
    return int(logits.shape[1])


def attack_dataset(
    model: nn.Module,
    dataset: Dataset,
    adversary: Adversary,
    results: ResultsFile,
    *,
    indices: Sequence[int],
    eps: Sequence[float],
    smoothing: Smoothing | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    targets: dict[int, int] | None = None,
    below: dict[int, float] | None = None,
    announce: Callable[[str], None] | None = None,
) -> list[AttackRow]:
    """Attack ``dataset[i]`` at every radius in ``eps`` for each i in ``indices``; returns all finished rows.

    Images are attacked in fixed groups of ``indices`` (``attack_group_size``: ``batch_size`` images, or
    ``batch_size // m`` when smoothed), each group and radius under its own seed drawn from (seed, first index,
    eps), so a resumed run recomputes an unfinished group exactly as an uninterrupted run did and appends only the
    rows it lacks. Per-image seeds cannot replace them: torchattacks draws a whole batch's random starts from the
    global generator at once. A sharded run (``sharding.run_sharded`` with ``group=attack_group_size(...)``)
    therefore gives each process whole groups of the full index list, all their images included, and its share
    cut here again yields the same groups (only the list's last group may be short): each group has the same
    images, batch and seed whatever the process count, so the rows equal a one-process run's.

    Args:
        targets: the class to attack per index instead of the label (the certified class in a cross-check).
        below: attack index i only at radii strictly below ``below[i]`` (its certified radius); others are skipped.
        announce: gets one line once the first group is done (an attack's cost is known only by running it): the
            rows to do, what each costs when smoothed, and the time per row and for the run from that group.
    """
    device = torch.device(device)
    model = model.to(device)  # the CLI has already wrapped it for --precision etc. (execution.prepare_model)
    with eval_mode(model):  # the caller's mode back afterwards
        return _attack_dataset(model, dataset, adversary, results, indices, eps, smoothing, batch_size, seed, device,
                               progress, targets, below, announce)  # fmt: skip


def _attack_dataset(model, dataset, adversary, results, indices, eps, smoothing, batch_size, seed, device, progress,
                    targets, below, announce) -> list[AttackRow]:  # fmt: skip
    eps = check_eps(eps)
    if smoothing is not None:
        check_sampling(n=smoothing.n, alpha=smoothing.alpha, batch_size=batch_size)
    judge = _Judge(model, smoothing, batch_size=batch_size, seed=seed, device=device)
    group = attack_group_size(batch_size, smoothing)
    wanted = attack_keys(indices, eps, below)
    groups = [indices[start : start + group] for start in range(0, len(indices), group)]
    pending = len(wanted - results.done)
    with tqdm(total=len(wanted), desc=f"attack {adversary.name}", unit="row", disable=not progress) as bar:
        bar.update(len(wanted & results.done))
        for chunk in groups:
            todo = [e for e in eps if any((i, e) in wanted and (i, e) not in results.done for i in chunk)]
            if todo:
                start, before = time.perf_counter(), len(results.done)
                _attack_group(judge, dataset, adversary, results, chunk, todo, wanted, targets, bar)
                if announce is not None:
                    per_row = (time.perf_counter() - start) / max(1, len(results.done) - before)
                    announce(attack_plan(adversary, smoothing, pending, len(eps), group, batch_size, per_row, device))
                    announce = None
    return [row for row in results.rows if row.key in wanted]


def attack_plan(
    adversary, smoothing, rows: int, radii: int, group: int, batch_size: int, per_row: float, device
) -> str:
    """The line ``attack_dataset`` announces: rows, what a smoothed row samples, and the time from the first group."""
    per_image = f"{radii} radius" if radii == 1 else f"{radii} radii"
    line = f"attack {adversary.name}: {rows} rows to do ({per_image} per image) in groups of up to {group} images"
    if smoothing is not None:
        passes = passes_per_image([smoothing.n], batch_size)
        line += (
            f"; smoothed: {smoothing.m} noise draws per image in each attack step, PREDICT n = {smoothing.n} on the "
            f"clean image and on each attacked one ({passes:.3g} passes of {batch_size} each)"
        )
    return line + (
        f"; the first group took {duration(per_row)} per row: about {duration(per_row * rows)} for the {rows} rows "
        f"on {torch.device(device).type}"
    )


def _attack_group(judge, dataset, adversary, results, chunk, todo, wanted, targets, bar) -> None:
    items = [dataset[i] for i in chunk]
    x = torch.stack([torch.as_tensor(item[0]) for item in items]).to(judge.device)
    check_images(x, "--data images")
    labels = [int(item[1]) for item in items]
    num_classes = _num_classes(judge.model, x)
    check_labels(labels, num_classes, "--data", indices=chunk)
    attacked = [label if targets is None else targets.get(i, label) for i, label in zip(chunk, labels)]
    check_labels(attacked, num_classes, "--certified predictions", indices=chunk)
    clean = judge.predict(x, chunk, stream=0)
    unbounded: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}  # a minimal-perturbation attack runs once
    for e in todo:
        rows = [j for j, i in enumerate(chunk) if (i, e) in wanted]  # the same set on every run: a fixed batch
        start = time.perf_counter()
        if e == 0:
            adv = x[rows]
        else:
            sub = [chunk[j] for j in rows]
            y = torch.tensor([attacked[j] for j in rows], device=x.device)
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(_group_seed(judge.seed, chunk[0], e if adversary.bounded else None))
                target = judge.target(x[rows], sub)
                with attack_mode(judge.model), torch.enable_grad():
                    if adversary.bounded:
                        adv = adversary.run(target, x[rows], y, e, num_classes=num_classes, seed=judge.seed)
                    else:
                        if tuple(rows) not in unbounded:
                            found = adversary.run(target, x[rows], y, None, num_classes=num_classes, seed=judge.seed)
                            unbounded[tuple(rows)] = (found, adversary.perturbation(found, x[rows]))
                        found, size = unbounded[tuple(rows)]
                        inside = (size <= e).view(-1, *[1] * (x.dim() - 1))
                        adv = torch.where(inside, found, x[rows])
        sizes = adversary.perturbation(adv, x[rows]).tolist()
        adv_predictions = judge.predict(adv, [chunk[j] for j in rows], stream=2)
        seconds = (time.perf_counter() - start) / max(1, len(rows))
        for j, size, adv_prediction in zip(rows, sizes, adv_predictions):
            i = chunk[j]
            if (i, e) not in results.done:
                results.append(AttackRow(i, labels[j], e, clean[j], adv_prediction, size, seconds))
                bar.update(1)


# -- Python API -----------------------------------------------------------------------------------------------


class _Rows:
    """In-memory stand-in for ``ResultsFile``: the same ``done``/``append``/``rows``, nothing on disk."""

    def __init__(self) -> None:
        self.rows: list[AttackRow] = []
        self.done: set = set()

    def append(self, row: AttackRow) -> None:
        self.rows.append(row)
        self.done.add(row.key)


@dataclass
class AttackResult:
    """What ``attack`` returns: one row per (image, eps), their summary, and the cross-check's breaks."""

    rows: list[AttackRow]
    summary: dict[str, Any]
    breaks: list[dict[str, Any]] | None = None

    def robust_accuracy(self, eps: float) -> float:
        """Robust accuracy at one of the radii that were run."""
        return self.summary["per_eps"][f"{eps:g}"]["robust_accuracy"]

    def __str__(self) -> str:
        return format_attack_table(self.rows)


def attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | Sequence[int],
    *,
    attack: str = "PGD",
    norm: str | None = None,
    eps: Sequence[float] | float = (8 / 255,),
    options: dict[str, Any] | None = None,
    sigma: float | None = None,
    noise: NoiseSampler | None = None,
    m: int = 16,
    n: int = 10_000,
    alpha: float = 0.001,
    certified: Sequence[Row] | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    out: str | Path | None = None,
    progress: bool = False,
) -> AttackResult:
    """Attack a classifier (base, mixed, or smoothed with ``sigma``/``noise``) on a batch of images; see the
    ``rs-plugins attack`` command, which this mirrors option for option.

    Example::

        result = rs_plugins.attack(model, x, y, attack="PGDL2", eps=[0.25, 0.5], sigma=0.25, n=1000)
        print(result)                       # clean and robust accuracy per eps
        result.robust_accuracy(0.5)

    Args:
        model: (B, C, H, W) in [0, 1] -> (B, K) logits.
        images: (N, C, H, W) float in [0, 1]; ``labels``: N integers in [0, K).
        attack, norm, options: see ``make_adversary``.
        eps: one radius or several, each run on every image.
        sigma, noise: smooth the model with ``noise`` (default Gaussian with ``sigma``); m EOT draws per image
            for the attack, and PREDICT with ``n`` samples at level ``alpha`` to judge.
        certified: rows of a certify run on the same images (row ``idx`` = position in ``images``): attack each
            certified image at the radii below its radius, towards its certified class, and list the breaks.
        out: also write the rows to this TSV (resumable, as the CLI does).

    Shape:
        images: (N, C, H, W); labels: (N,).
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a tensor (N, C, H, W); got {type(images).__name__}")
    check_images(images, "images")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or len(labels) != len(images) or labels.dtype.is_floating_point:
        got = f"shape {tuple(labels.shape)}, dtype {labels.dtype}"
        raise ValueError(f"labels must be {len(images)} integers, one per image; got {got}")
    if sigma is not None and noise is None:
        from ..host import Host  # the built-in noise by name, as a third-party plugin would get it

        noise = Host().noise("gaussian", sigma=sigma)
    if certified is not None and noise is None:
        raise ValueError("certified needs the smoothed classifier: give sigma (or noise)")
    adversary = make_adversary(attack, norm, options, smoothed=noise is not None)
    smoothing = None if noise is None else Smoothing(noise, m=m, n=n, alpha=alpha)
    targets = below = None
    if certified is not None:
        targets, below = certified_targets(certified)
    dataset = TensorDataset(images.detach().cpu(), labels.long().cpu())
    common = dict(
        indices=[i for i in range(len(images)) if targets is None or i in targets],
        eps=[eps] if isinstance(eps, (int, float)) else eps,
        smoothing=smoothing,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        targets=targets,
        below=below,
    )
    if out is None:
        rows = attack_dataset(model, dataset, adversary, _Rows(), **common)
    else:
        settings = {"attack": adversary.name, "norm": adversary.norm, "options": adversary.options, "seed": seed}
        settings |= {"sigma": sigma, "m": m, "n": n, "alpha": alpha, "batch_size": batch_size}
        with ResultsFile(out, ATTACK_COLUMNS, json.loads(json.dumps(settings, default=str))) as results:
            rows = attack_dataset(model, dataset, adversary, results, **common)
    breaks = None if certified is None else certified_breaks(rows, certified)
    return AttackResult(rows, summarize_attack(rows), breaks)
