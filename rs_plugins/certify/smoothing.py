"""Monte Carlo core of randomized smoothing: sample, count, bound, radius (Cohen et al., ICML 2019).

The smoothed classifier is g(x) = argmax_c P[f(x + delta) = c]. CERTIFY picks the top class on n0 selection
samples, counts it on n fresh samples, and certifies the radius that the noise assigns to a one-sided
Clopper-Pearson lower bound on its probability. PREDICT answers when a two-sided binomial test separates the
top two classes. With probability at least 1 - alpha, each output either abstains or equals g(x).
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from ..errors import IncompatibleComponentsError
from ..results.provenance import built_from, describe
from ..types import ABSTAIN, Certificate
from ..validation import (
    check_finite_logits,
    check_integer,
    check_logits,
    check_noise_output,
    check_number,
    check_tensor,
)
from .stats import binomial_pvalue, clopper_pearson_lower, min_samples_to_certify, min_samples_to_predict

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..types import Certifier, NoiseSampler


def check_images(x: Tensor, what: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` is a batch of float images in [0, 1], the range noise is added in.

    Args:
        x: the images to check.
        what: how the message names their origin, e.g. ``"--data"`` or ``"x"``.
    """
    expected = "expected float images (N, C, H, W) with values in [0, 1]; scale uint8 images by 1/255"
    check_tensor(what, x)
    if not x.dtype.is_floating_point or x.dim() != 4:
        msg = f"{what}: got images of shape {tuple(x.shape)} and dtype {x.dtype}; {expected}"
        raise ValueError(msg)
    if x.numel() == 0:
        msg = f"{what}: got no images (shape {tuple(x.shape)}); {expected}"
        raise ValueError(msg)
    lo, hi = x.min().item(), x.max().item()
    if not (lo >= 0 and hi <= 1):  # also rejects NaN
        msg = f"{what}: got values in [{lo:g}, {hi:g}] (shape {tuple(x.shape)}, dtype {x.dtype}); {expected}"
        raise ValueError(msg)


def check_sampling(*, n0: int | None = None, n: int, alpha: float, batch_size: int) -> None:
    """Raise ValueError naming the first invalid sampling argument (strings, NaN and inf included)."""
    if n0 is not None:
        check_integer("n0", n0)
    check_integer("n", n)
    if n0 is not None and n0 > n:
        raise ValueError(f"n0 must not exceed n (n0 selects the class, n estimates it); got n0={n0}, n={n}")
    check_number("alpha", alpha, above=0, below=1)
    check_integer("batch_size", batch_size)


def check_smoothing(model: object, noise: object) -> None:
    """Refuse a model that cannot be called or a noise that is not a ``NoiseSampler`` (e.g. None)."""
    from ..types import NoiseSampler

    if not callable(model):
        raise ValueError(f"model must be a torch.nn.Module (or a callable returning logits); got {model!r}")
    if not isinstance(noise, NoiseSampler):
        msg = "noise must be a NoiseSampler with sample(), radius(), sigma and norm, e.g. "
        raise ValueError(msg + f"Host().noise('gaussian', sigma=0.25); got {noise!r}")


def check_compatible(certifier: object, noise: object) -> None:
    """Refuse a certifier a ``Host`` built with a noise sampler it has no radius for (``CertifierSpec.noises``),
    naming both components and their plugins; components not built by a host are left to the certifier."""
    certifier_spec, noise_spec = built_from(certifier), built_from(noise)
    supported = getattr(certifier_spec, "noises", ())
    if supported and noise_spec is not None and noise_spec.name not in supported:
        what = describe(certifier, type(certifier).__name__)
        msg = f"{what} supports noise {list(supported)}; got {describe(noise, type(noise).__name__)} (no radius for it)"
        raise IncompatibleComponentsError(msg)


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


def _per_image(generator, count: int) -> list[torch.Generator | None]:
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
    generators = _per_image(generator, len(x))
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


CLASS_SELECTIONS = ("n0", "label")
"""How a certifier picks the class to certify: the top class of n0 fresh samples (CERTIFY), or the label
(evaluation only: it certifies "g(x) = y and robust", saves the n0 pass, and is no deployable prediction)."""


def check_class_selection(class_selection: str) -> str:
    """Return ``class_selection`` if it is one of ``CLASS_SELECTIONS``, else raise ValueError naming it."""
    if class_selection not in CLASS_SELECTIONS:
        msg = f"class_selection must be one of {', '.join(CLASS_SELECTIONS)}; got {class_selection!r}"
        raise ValueError(msg)
    return class_selection


def select_classes(
    model: nn.Module,
    x: Tensor,
    noise: NoiseSampler,
    *,
    n0: int,
    batch_size: int,
    generators,
    class_selection: str,
    labels: Tensor | None,
) -> tuple[Tensor, int]:
    """The class to certify for each image and the samples spent choosing it (0 with ``class_selection="label"``).

    Shape:
        x: (B, C, H, W); labels: (B,) or None. returns: (B,) int64 classes on the CPU, and an int.
    """
    if check_class_selection(class_selection) == "label":
        if labels is None:
            raise ValueError("class_selection='label' needs the labels: pass labels=(B,) tensor to certify()")
        labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
        if labels.shape != (len(x),):
            raise ValueError(f"labels must have shape ({len(x)},), one per image; got {tuple(labels.shape)}")
        return labels, 0
    selection = sample_counts(model, x, noise, n0, batch_size=batch_size, generator=generators)
    return selection.argmax(1), n0


def cohen_certify(
    model: nn.Module,
    x: Tensor,
    noise: NoiseSampler,
    *,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    generator=None,
    class_selection: str = "n0",
    labels: Tensor | None = None,
) -> list[Certificate]:
    """CERTIFY of Cohen et al. for each image of ``x`` (B, C, H, W); abstains below a bound of 1/2.

    ``class_selection="label"`` certifies ``labels`` instead of the n0 sample's top class (see ``CLASS_SELECTIONS``).
    """
    check_smoothing(model, noise)
    check_images(x)
    check_sampling(n0=n0, n=n, alpha=alpha, batch_size=batch_size)
    if n < min_samples_to_certify(alpha):
        warnings.warn(f"n={n} is too small for alpha={alpha}: every input will abstain", stacklevel=2)
    generator = _per_image(generator, len(x))
    with eval_mode(model):
        top, spent = select_classes(
            model,
            x,
            noise,
            n0=n0,
            batch_size=batch_size,
            generators=generator,
            class_selection=class_selection,
            labels=labels,
        )
        estimation = sample_counts(model, x, noise, n, batch_size=batch_size, generator=generator)
    n_top = estimation.gather(1, top[:, None]).squeeze(1)
    p_lower = torch.as_tensor(clopper_pearson_lower(n_top.numpy(), n, alpha), dtype=torch.float64)
    radii = noise.radius(p_lower)
    samples = spent + n
    return [
        Certificate(int(c), float(r), float(p), samples) if p >= 0.5 else Certificate(ABSTAIN, 0.0, float(p), samples)
        for c, r, p in zip(top.tolist(), radii.tolist(), p_lower.tolist())
    ]


def cohen_predict(
    model: nn.Module,
    x: Tensor,
    noise: NoiseSampler,
    *,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    generator=None,
) -> list[int]:
    """PREDICT of Cohen et al.: the top class where a binomial test tells it from the runner-up, else ABSTAIN."""
    check_smoothing(model, noise)
    check_images(x)
    check_sampling(n=n, alpha=alpha, batch_size=batch_size)
    if n < min_samples_to_predict(alpha):
        warnings.warn(f"n={n} is too small for alpha={alpha}: every input will abstain", stacklevel=2)
    with eval_mode(model):
        counts = sample_counts(model, x, noise, n, batch_size=batch_size, generator=generator)
    top2_counts, top2 = counts.topk(2, dim=1)
    return [
        int(c) if binomial_pvalue(n_a, n_a + n_b) <= alpha else ABSTAIN
        for c, (n_a, n_b) in zip(top2[:, 0].tolist(), top2_counts.tolist())
    ]


class SmoothedClassifier:
    """A base classifier smoothed by a noise distribution, with CERTIFY and PREDICT.

    Example::

        smoothed = SmoothedClassifier(model, host.noise("gaussian", sigma=0.25))
        cert = smoothed.certify(image, n=10_000, generator=torch.Generator().manual_seed(0))
    """

    def __init__(self, model: nn.Module, noise: NoiseSampler, certifier: Certifier | None = None) -> None:
        check_smoothing(model, noise)
        if certifier is not None and not callable(getattr(certifier, "certify", None)):
            msg = f"certifier must have a certify() method, e.g. Host().certifier('cohen'); got {certifier!r}"
            raise ValueError(msg)
        check_compatible(certifier, noise)
        self.model = model
        self.noise = noise
        self.certifier = certifier

    def certify_batch(self, x: Tensor, **sampling) -> list[Certificate]:
        """Certificates for a batch (B, C, H, W); ``sampling`` takes n0, n, alpha, batch_size, generator."""
        if self.certifier is None:
            return cohen_certify(self.model, x, self.noise, **sampling)
        check_compatible(self.certifier, self.noise)  # the attributes may have been swapped since __init__
        return self.certifier.certify(self.model, x, self.noise, **sampling)

    def certify(self, x: Tensor, **sampling) -> Certificate:
        """Certificate for one image (C, H, W)."""
        return self.certify_batch(_one_image(x), **sampling)[0]

    def predict_batch(self, x: Tensor, **sampling) -> list[int]:
        """PREDICT for a batch (B, C, H, W); ``sampling`` takes n, alpha, batch_size, generator."""
        return cohen_predict(self.model, x, self.noise, **sampling)

    def predict(self, x: Tensor, **sampling) -> int:
        """PREDICT for one image (C, H, W)."""
        return self.predict_batch(_one_image(x), **sampling)[0]


def _one_image(x: Tensor) -> Tensor:
    check_tensor("x", x)
    if x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected one image of shape (C, H, W); got {got} (use the *_batch method for batches)")
    return x.unsqueeze(0)
