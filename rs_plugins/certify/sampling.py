"""The hot loop of randomized smoothing: noisy samples in planned forward passes, top-1 counts per image.

Every certifier goes through ``sample_counts`` (or ``sample_requests``); the plan keeps an image's draws the same
however many images share a call, so results with one generator per image do not depend on grouping.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from ..results.provenance import describe
from ..validation import (
    check_finite_logits,
    check_logits,
    check_noise_output,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..types import NoiseSampler


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run with BatchNorm running statistics and no dropout, then restore the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _plan(num_images: int, num: int, batch_size: int) -> Iterator[list[tuple[int, int]]]:
    """Forward passes as lists of (image, samples) segments.

    Whole images share a pass when ``num`` fits in a batch; otherwise one image goes in batch-size chunks.
    Either way each image's draws are split the same however many images are certified together, so
    with one generator per image the result does not depend on the grouping.
    """
    if num >= batch_size:
        for i in range(num_images):
            for start in range(0, num, batch_size):
                yield [(i, min(batch_size, num - start))]
    else:
        per_pass = batch_size // num
        for first in range(0, num_images, per_pass):
            yield [(i, num) for i in range(first, min(num_images, first + per_pass))]


def per_image_generators(generator, count: int) -> list[torch.Generator | None]:
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * count
    generators = list(generator)
    if len(generators) != count:
        msg = f"generator must be one torch.Generator or one per image ({count}); got {len(generators)}"
        raise ValueError(msg)
    return generators


_ON_PASS: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar("on_pass", default=None)


@contextlib.contextmanager
def reporting_passes(on_pass: Callable[[int], None]) -> Iterator[None]:
    """Within this block, every ``sample_counts`` call without its own ``on_pass`` reports each forward pass to
    ``on_pass(samples)``: how the runner's progress bar moves per pass through any certifier."""
    token = _ON_PASS.set(on_pass)
    try:
        yield
    finally:
        _ON_PASS.reset(token)


@torch.no_grad()
def sample_counts(
    model: nn.Module,
    x: Tensor,
    noise: NoiseSampler,
    num: int,
    *,
    batch_size: int,
    generator=None,
    on_pass: Callable[[int], None] | None = None,
) -> Tensor:
    """Count the base classifier's top-1 class over ``num`` noisy copies of each image.

    The noise is drawn on ``x``'s device and the counts stay there until the end: one copy to the CPU per call.
    ``on_pass(samples)`` (default: the one set by ``reporting_passes``) is called after each forward pass.

    Shape:
        x: (B, C, H, W). returns: (B, K) int64 counts on the CPU.
    """
    generators = per_image_generators(generator, len(x))
    on_pass = on_pass or _ON_PASS.get()
    counts = None
    finite = None
    for number, segments in enumerate(_plan(len(x), num, batch_size)):
        segment_counts, segment_finite = _count_segments(model, x, noise, segments, generators, first=number == 0)
        if counts is None:
            counts = torch.zeros(len(x), segment_counts.shape[1], dtype=torch.int64, device=segment_counts.device)
        start = segments[0][0]  # _plan's passes hold consecutive images: no index list to copy to the device
        counts[start : start + len(segments)] += segment_counts
        finite = segment_finite if finite is None else finite & segment_finite
        if on_pass is not None:
            on_pass(sum(c for _, c in segments))
    check_finite_logits(finite, model)
    return counts.cpu()


LOW_PRECISION = (torch.bfloat16, torch.float16)


def noise_input(x: Tensor) -> Tensor:
    """``x`` in float32 if it is bf16 or fp16, so noise is drawn and added in float32 (see docs/guarantees.md);
    the caller casts the noisy images back to ``x``'s dtype for the model."""
    return x.float() if x.dtype in LOW_PRECISION else x


def _count_segments(
    model: nn.Module,
    x: Tensor,
    noise: NoiseSampler,
    segments: Sequence[tuple[int, int]],
    generators: Sequence[torch.Generator | None],
    *,
    first: bool,
) -> tuple[Tensor, Tensor]:
    """One forward pass over (image, samples) segments, each drawn with its image's generator.

    The noise sampler's contract is checked on every pass (its values on the ``first`` pass of a call only), and
    the model's output shape too; finiteness is returned as a device flag so a caller synchronises once.

    Shape:
        x: (B, C, H, W). returns: (len(segments), K) int64 counts on the model's device, and a bool scalar.
    """
    draws = []
    for i, c in segments:
        clean = noise_input(x[i].expand(c, *x.shape[1:]))
        draws.append(noise.sample(clean, generator=generators[i]))
        check_noise_output(draws[-1], clean, noise, values=first)
        draws[-1] = draws[-1].to(x.dtype)  # low-precision images: rounded after adding, as the model's input
    noisy = draws[0] if len(draws) == 1 else torch.cat(draws)  # one image per pass: no copy
    logits = call_model(model, noisy, first=first)  # (M, K)
    check_logits(logits, model, len(noisy))
    num_classes, top = logits.shape[1], logits.argmax(1)
    if len(segments) == 1:
        return torch.bincount(top, minlength=num_classes)[None], torch.isfinite(logits).all()
    arange = torch.arange(len(segments), device=logits.device)
    if len({c for _, c in segments}) == 1:  # equal shares need no list copied to the device, which would sync
        owner = arange.repeat_interleave(segments[0][1])
    else:
        owner = arange.repeat_interleave(torch.tensor([c for _, c in segments], device=logits.device))
    counts = torch.bincount(owner * num_classes + top, minlength=len(segments) * num_classes)
    return counts.view(len(segments), num_classes), torch.isfinite(logits).all()


def call_model(model: nn.Module, noisy: Tensor, *, first: bool) -> Tensor:
    """The model on a batch; on the first pass (``first``) a RuntimeError, typically images of the wrong
    channels or size, is re-raised as a ValueError naming the model and the image shape."""
    if not first:
        return model(noisy)
    try:
        return model(noisy)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as err:
        name = describe(model, type(model).__name__)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        msg = (
            f"model {name} failed on images of shape {tuple(noisy.shape[1:])} (channels, height, width): {reason}. "
            "Check that the images (--data, or x) have the channels and size the model (--model) was built for"
        )
        raise ValueError(msg) from err


@torch.no_grad()
def count_pass(
    model: nn.Module,
    x: Tensor,
    noise: NoiseSampler,
    segments: Sequence[tuple[int, int]],
    generators: Sequence[torch.Generator | None],
    *,
    first: bool = False,
) -> Tensor:
    """One forward pass over (image, samples) segments, each drawn with its image's generator; ``first`` marks
    a call's first pass, where the noise's values and the model's fit to the images are checked.

    Shape:
        x: (B, C, H, W). returns: (len(segments), K) int64 top-1 counts on the CPU.
    """
    counts, finite = _count_segments(model, x, noise, segments, generators, first=first)
    check_finite_logits(finite, model)
    return counts.cpu()


def chunked(image: int, num: int, batch_size: int) -> list[tuple[int, int]]:
    """``num`` samples of ``image`` as (image, size) chunks of ``batch_size``, the last one shorter.

    Cutting each request the same way whatever else is queued keeps an image's noise independent of grouping.
    """
    return [(image, min(batch_size, num - start)) for start in range(0, num, batch_size)]


def sample_requests(
    model: nn.Module,
    x: Tensor,
    noise: NoiseSampler,
    requests: Sequence[tuple[int, int]],
    *,
    batch_size: int,
    generators: Sequence[torch.Generator | None],
) -> Tensor:
    """Counts for a list of (image, samples) requests, packed in order into passes of at most ``batch_size``.

    Each request is cut by ``chunked`` and drawn with its image's generator, so an image's noise depends only on
    its own sequence of requests, never on which other images share a pass.

    Shape:
        x: (B, C, H, W). returns: (len(requests), K) int64 counts on the CPU.
    """
    chunks = [(r, chunk) for r, (i, num) in enumerate(requests) for chunk in chunked(i, num, batch_size)]
    if not chunks:
        raise ValueError("sample_requests() needs at least one request of at least one sample")
    totals = None
    position = 0
    while position < len(chunks):
        size, end = 0, position
        while end < len(chunks) and size + chunks[end][1][1] <= batch_size:
            size += chunks[end][1][1]
            end += 1
        segments = [chunk for _, chunk in chunks[position:end]]
        counts = count_pass(model, x, noise, segments, generators, first=position == 0)
        if totals is None:
            totals = torch.zeros(len(requests), counts.shape[1], dtype=torch.int64)
        totals.index_add_(0, torch.tensor([r for r, _ in chunks[position:end]]), counts)
        position = end
    return totals
