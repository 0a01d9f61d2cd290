"""Certify or predict a whole data set, resumably: every finished image is on disk before the next starts.

Under ``torchrun`` the images are sharded across the processes (``sharding.run_sharded``): each writes a resumable
partial file and the main process merges them into the one results file at the end. ``rs-plugins attack`` uses the same
machinery with rows keyed by (index, eps) and images sharded in whole attack groups.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ..results.files import ConfidenceRow, ResultsFile, Row
from ..validation import (
    MAX_SEED,
    accepts_keyword,
    check_certificates,
    check_input_shape,
    check_integer,
    check_labels,
    check_logits,
)
from .from_counts import predict_from_counts, records
from .sampling import call_model, count_pass, eval_mode, reporting_passes, sample_counts
from .smoothing import check_images, check_sampling, predict_counts

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from ..results.counts import CountsLog
    from ..types import Certifier, NoiseSampler

MAX_IMAGES_PER_CALL = 64


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when there is a GPU, else the CPU; anything else must be a device torch knows."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N; got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return resolved


def image_generator(seed: int, idx: int, device: torch.device, stream: int | None = None) -> torch.Generator:
    """A generator seeded from (seed, image index), so an image's result never depends on which run,
    shard or batch it was certified in; that is what makes resumed and split runs agree exactly.
    ``stream`` gives the image an independent second generator (e.g. for its augmentation)."""
    entropy = [seed, idx] if stream is None else [seed, idx, stream]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def _images(
    dataset: Dataset, chunk: Sequence[int], device: torch.device, num_classes: int
) -> tuple[torch.Tensor, list[int]]:
    items = [dataset[i] for i in chunk]
    x = torch.stack([torch.as_tensor(item[0]) for item in items]).to(device)
    check_images(x, "--data images")
    labels = [int(item[1]) for item in items]
    check_labels(labels, num_classes, "--data", indices=chunk)
    return x, labels


@torch.no_grad()
def check_dataset(model: nn.Module, dataset: Dataset, indices: Sequence[int], device: torch.device | str) -> int:
    """Before any sampling: the model takes these images, and their labels are its classes. Returns K.

    One clean forward pass of the first image, in eval mode; the labels are checked here when the data set
    holds them apart from its images (TensorDataset, torchvision), otherwise as each image is read.
    """
    if not indices:
        raise ValueError("the subset (--start, --max, --every, --limit) selects no image of --data")
    device = torch.device(device)
    x = torch.as_tensor(dataset[indices[0]][0])[None].to(device)
    check_images(x, "--data images")
    check_input_shape(model, tuple(x.shape[1:]))
    with eval_mode(model):
        logits = call_model(model, x, first=True)
    check_logits(logits, model, 1)
    num_classes = logits.shape[1]
    labels = getattr(dataset, "targets", None)
    if isinstance(dataset, torch.utils.data.TensorDataset) and len(dataset.tensors) > 1:
        labels = dataset.tensors[1]
    if labels is not None:
        check_labels(torch.as_tensor(labels)[list(indices)], num_classes, "--data", indices=indices)
    return num_classes



def _batches(indices: Sequence[int], size: int):
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _spaced(num: int) -> str:
    return f"{num:,}".replace(",", " ")  # 100 100, as the papers write N


def duration(seconds: float) -> str:
    """Seconds as people read a run's length: 0.8 s, 12 min, 3.1 h."""
    if seconds < 100:
        return f"{seconds:.2g} s"
    return f"{seconds / 60:.0f} min" if seconds < 6000 else f"{seconds / 3600:.1f} h"


def passes_per_image(parts: Sequence[int], batch_size: int) -> float:
    """Forward passes an image costs: a part of ``num >= batch_size`` samples takes ceil(num / batch_size) passes
    of its own, a smaller one shares a pass with the other images of its group (``sampling.sample_counts``' plan)."""
    return sum(math.ceil(num / batch_size) if num >= batch_size else 1 / (batch_size // num) for num in parts)


def cost_plan(model, x, noise, *, parts, batch_size, images, device, upto=False) -> str:
    """What a run will cost, said before it starts: samples and passes per image at ``batch_size``, and seconds
    per image and for ``images`` images from one timed pass of the model as run on ``x`` (1, C, H, W).

    The probe is the second of two passes (the first warms up, e.g. compiles) and draws from its own generator, so
    no row changes. ``upto``: the certifier may stop early (sequential), so the figures are the most it costs."""
    samples = sum(parts)
    probe = min(batch_size, samples)
    generator = torch.Generator(device=x.device).manual_seed(0)
    with eval_mode(model):
        for _ in range(2):
            start = time.perf_counter()
            count_pass(model, x, noise, [(0, probe)], [generator], first=True)  # counts on the CPU: synchronised
            seconds = time.perf_counter() - start
    per_image = seconds / probe * samples
    split = f" ({' + '.join(map(_spaced, parts))})" if len(parts) > 1 else ""
    most = "at most " if upto else ""
    plural = "image" if images == 1 else "images"
    return (
        f"{most}{_spaced(samples)} samples per image{split} in {passes_per_image(parts, batch_size):.3g} passes of "
        f"{batch_size}; {most}about {duration(per_image)} per image, {duration(per_image * images)} for {images} "
        f"{plural} on {torch.device(device).type}"
    )


def announced(announce, desc: str, model, noise, **plan):
    """A ``_run`` plan hook that passes ``announce`` the line ``cost_plan`` makes, or None without ``announce``."""
    if announce is None:
        return None
    return lambda x, images: announce(f"{desc}: " + cost_plan(model, x, noise, images=images, **plan))


def _run(decide, model, dataset, results, indices, *, group, per_image, desc, seed, device, progress, plan=None,
         counts_log=None):
    """Apply ``decide(x, generators, labels, num_classes) -> [(prediction, radius, samples, counts)]`` to pending
    images in groups, appending rows. The bar counts samples (``per_image`` planned per image) and moves per forward
    pass. ``plan(x, images)``, when given, is called once before any sampling with the first pending image and the
    number of pending images (``announced``). Each image's ``counts`` (when not None) go to ``counts_log`` before
    its row, so a row never lacks the counts it was computed from."""
    check_integer("seed", seed, minimum=0, maximum=MAX_SEED)
    if not indices:
        return results.rows  # e.g. a process's empty share of a sharded run
    num_classes = check_dataset(model, dataset, indices, device)
    pending = [i for i in indices if i not in results.done]
    done = len(indices) - len(pending)
    if plan is not None and pending:
        plan(_images(dataset, pending[:1], device, num_classes)[0], len(pending))
    bar = tqdm(
        total=len(indices) * per_image,
        initial=done * per_image,
        desc=desc,
        unit="sample",
        unit_scale=True,
        disable=not progress,
    )
    with bar, reporting_passes(bar.update), eval_mode(model):  # whatever the caller's mode: no batch statistics
        bar.set_postfix_str(f"{done}/{len(indices)} img")
        for chunk in _batches(pending, group):
            x, labels = _images(dataset, chunk, device, num_classes)
            generators = [image_generator(seed, i, device) for i in chunk]
            start = time.perf_counter()
            outcomes = decide(x, generators, labels, num_classes)
            seconds = (time.perf_counter() - start) / len(chunk)
            for i, label, (prediction, radius, samples, counts) in zip(chunk, labels, outcomes):
                if counts_log is not None and counts is not None:
                    counts_log.append(i, label, counts)
                results.append(Row(i, label, prediction, radius, prediction == label, seconds, samples))
            done += len(chunk)
            bar.n = done * per_image  # a certifier may draw fewer than planned (early stopping) or more (checks)
            bar.set_postfix_str(f"{done}/{len(indices)} img, {seconds:.2g} s/img")
    return results.rows


def certify_dataset(
    model: nn.Module,
    dataset: Dataset,
    noise: NoiseSampler,
    certifier: Certifier,
    results: ResultsFile,
    *,
    indices: Sequence[int],
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
    counts_log: CountsLog | None = None,
) -> list[Row]:
    """Certify ``dataset[i]`` for each i in ``indices`` not already in ``results``; returns all finished rows.

    Images whose n0 selection samples fit in one batch are certified together, so a pass holds
    ``batch_size`` samples even for small n0; a certifier may ask for more with an ``images_per_call`` attribute.
    A row's ``time`` is its share of its group's wall time. A certifier whose ``certify`` takes ``labels`` gets
    the data set's labels (for evaluation-only class selection); one whose certificates leave ``samples`` unset
    is recorded as drawing n0 + n per image, as CERTIFY does. ``announce`` (e.g. ``print``) gets one line before
    sampling: the samples and passes per image and the time per image and for the run (``cost_plan``); a
    certifier that stops early (a ``stopping`` attribute, e.g. sequential) is announced at its most. Each
    certificate's votes (``Certificate.counts``) go to ``counts_log`` (``results.counts.CountsLog``) when given.
    """
    device = torch.device(device)
    model = model.to(device)
    takes_labels = accepts_keyword(certifier.certify, "labels")

    check_sampling(n0=n0, n=n, alpha=alpha, batch_size=batch_size)  # a plugin certifier may not check them

    def decide(x, generators, labels, num_classes):
        extra = {"labels": torch.tensor(labels, dtype=torch.int64)} if takes_labels else {}
        certificates = certifier.certify(
            model, x, noise, n0=n0, n=n, alpha=alpha, batch_size=batch_size, generator=generators, **extra
        )
        check_certificates(certificates, len(x), num_classes, certifier)
        return [
            (c.prediction, c.radius, n0 + n if c.samples is None else c.samples, getattr(c, "counts", None))
            for c in certificates
        ]

    group = getattr(certifier, "images_per_call", None) or max(1, min(MAX_IMAGES_PER_CALL, batch_size // n0))
    options = dict(group=group, per_image=n0 + n, desc="certify", seed=seed, device=device, progress=progress)
    upto = hasattr(certifier, "stopping")
    plan = announced(announce, "certify", model, noise, parts=(n0, n), batch_size=batch_size, device=device, upto=upto)
    return _run(decide, model, dataset, results, indices, plan=plan, counts_log=counts_log, **options)


def predict_dataset(
    model: nn.Module,
    dataset: Dataset,
    noise: NoiseSampler,
    results: ResultsFile,
    *,
    indices: Sequence[int],
    n: int,
    alpha: float,
    batch_size: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
    counts_log: CountsLog | None = None,
) -> list[Row]:
    """Cohen's PREDICT for each pending index, with the same resumable bookkeeping (``announce``, ``counts_log``:
    the n votes of each image, as estimation counts) as ``certify_dataset``."""
    device = torch.device(device)
    model = model.to(device)

    def decide(x, generators, labels, num_classes):
        counts = predict_counts(model, x, noise, n=n, alpha=alpha, batch_size=batch_size, generator=generators)
        predictions = predict_from_counts(counts, alpha)
        return [(p, 0.0, n, record) for p, record in zip(predictions, records(counts))]

    group = max(1, min(MAX_IMAGES_PER_CALL, batch_size // n))
    options = dict(group=group, per_image=n, desc="predict", seed=seed, device=device, progress=progress)
    plan = announced(announce, "predict", model, noise, parts=(n,), batch_size=batch_size, device=device)
    return _run(decide, model, dataset, results, indices, plan=plan, counts_log=counts_log, **options)


def confidence_dataset(
    model: nn.Module,
    dataset: Dataset,
    noise: NoiseSampler,
    results: ResultsFile,
    *,
    indices: Sequence[int],
    n: int,
    batch_size: int,
    seed: int = 0,
    augment: str = "none",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[ConfidenceRow]:
    """The base classifier's top-1 votes over ``n`` noisy copies of each pending image (CAT-RS's p_b = votes / n).

    With ``augment="crop-flip"`` each image is first augmented once, as training augments it (the authors run
    their pass over the augmented training split); the crop and the noise are seeded from (seed, index), so a
    resumed or sharded run writes the same rows.
    """
    from ..train.config import crop_flip

    check_integer("seed", seed, minimum=0, maximum=MAX_SEED)
    check_sampling(n=n, alpha=0.5, batch_size=batch_size)
    device = torch.device(device)
    model = model.to(device)
    if not indices:
        return results.rows
    num_classes = check_dataset(model, dataset, indices, device)
    pending = [i for i in indices if i not in results.done]
    group = max(1, min(MAX_IMAGES_PER_CALL, batch_size // n))
    done = len(indices) - len(pending)
    bar = tqdm(total=len(indices), initial=done, desc="confidence", unit="img", disable=not progress)
    with bar, eval_mode(model):  # as certification: BatchNorm on its running statistics, which stay as they were
        for chunk in _batches(pending, group):
            x, labels = _images(dataset, chunk, torch.device("cpu"), num_classes)
            if augment == "crop-flip":
                crops = [image_generator(seed, i, torch.device("cpu"), stream=1) for i in chunk]
                x = torch.cat([crop_flip(image[None], generator=g) for image, g in zip(x, crops)])
            generators = [image_generator(seed, i, device) for i in chunk]
            start = time.perf_counter()
            counts = sample_counts(model, x.to(device), noise, n, batch_size=batch_size, generator=generators)
            seconds = (time.perf_counter() - start) / len(chunk)
            for i, label, votes in zip(chunk, labels, counts.tolist()):
                pairs = tuple((c, v) for c, v in enumerate(votes) if v)
                results.append(ConfidenceRow(i, label, pairs, seconds))
            bar.update(len(chunk))
    return results.rows
