"""Monte Carlo core of randomized smoothing: sample, count, bound, radius (Cohen et al., ICML 2019).

The smoothed classifier is g(x) = argmax_c P[f(x + delta) = c]. CERTIFY picks the top class on n0 selection
samples, counts it on n fresh samples, and certifies the radius that the noise assigns to a one-sided
Clopper-Pearson lower bound on its probability. PREDICT answers when a two-sided binomial test separates the
top two classes. With probability at least 1 - alpha, each output either abstains or equals g(x).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from .stats import binomial_pvalue, clopper_pearson_lower, min_samples_to_certify, min_samples_to_predict
from .types import ABSTAIN, Certificate

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .types import Certifier, NoiseSampler


def check_images(x: Tensor, what: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` is a batch of float images in [0, 1], the range noise is added in.

    Args:
        x: the images to check.
        what: how the message names their origin, e.g. ``"--data"`` or ``"x"``.
    """
    expected = "expected float images (N, C, H, W) with values in [0, 1]; scale uint8 images by 1/255"
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
    """Raise ValueError naming the first invalid sampling argument."""
    if n0 is not None and not (isinstance(n0, int) and n0 >= 1):
        raise ValueError(f"n0 must be a positive integer; got {n0!r}")
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive integer; got {n!r}")
    if n0 is not None and n0 > n:
        raise ValueError(f"n0 must not exceed n (n0 selects the class, n estimates it); got n0={n0}, n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")


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


@torch.no_grad()
def sample_counts(
    model: nn.Module, x: Tensor, noise: NoiseSampler, num: int, *, batch_size: int, generator=None
) -> Tensor:
    """Count the base classifier's top-1 class over ``num`` noisy copies of each image.

    The noise is drawn on ``x``'s device and the counts stay there until the end: one copy to the CPU per call.

    Shape:
        x: (B, C, H, W). returns: (B, K) int64 counts on the CPU.
    """
    generators = _per_image(generator, len(x))
    counts = None
    for segments in _plan(len(x), num, batch_size):
        draws = [noise.sample(x[i].expand(c, *x.shape[1:]), generator=generators[i]) for i, c in segments]
        noisy = draws[0] if len(draws) == 1 else torch.cat(draws)
        logits = model(noisy)  # (M, K)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != len(noisy):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            msg = f"the model must return logits of shape (batch, num_classes); for {len(noisy)} inputs got {got}"
            raise ValueError(msg)
        num_classes = logits.shape[1]
        if num_classes < 2:
            raise ValueError(f"the model must return at least 2 class scores; got {num_classes}")
        if counts is None:
            counts = torch.zeros(len(x) * num_classes, dtype=torch.int64, device=logits.device)
        # _plan's passes are consecutive images with equal counts, so the owner of each sample is known without
        # copying a list to the device: on a GPU such a copy would wait for the pass before it to finish.
        first, per_image = segments[0][0], segments[0][1]
        if len(segments) == 1:
            own = counts[first * num_classes : (first + 1) * num_classes]
            own += torch.bincount(logits.argmax(1), minlength=num_classes)
        else:
            owner = torch.arange(first, first + len(segments), device=logits.device).repeat_interleave(per_image)
            counts += torch.bincount(owner * num_classes + logits.argmax(1), minlength=len(counts))
    return counts.view(len(x), -1).cpu()


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
) -> list[Certificate]:
    """CERTIFY of Cohen et al. for each image of ``x`` (B, C, H, W); abstains below a bound of 1/2."""
    check_images(x)
    check_sampling(n0=n0, n=n, alpha=alpha, batch_size=batch_size)
    if n < min_samples_to_certify(alpha):
        warnings.warn(f"n={n} is too small for alpha={alpha}: every input will abstain", stacklevel=2)
    generator = _per_image(generator, len(x))
    with eval_mode(model):
        selection = sample_counts(model, x, noise, n0, batch_size=batch_size, generator=generator)
        top = selection.argmax(1)
        estimation = sample_counts(model, x, noise, n, batch_size=batch_size, generator=generator)
    n_top = estimation.gather(1, top[:, None]).squeeze(1)
    p_lower = torch.as_tensor(clopper_pearson_lower(n_top.numpy(), n, alpha), dtype=torch.float64)
    radii = noise.radius(p_lower)
    return [
        Certificate(int(c), float(r), float(p)) if p >= 0.5 else Certificate(ABSTAIN, 0.0, float(p))
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
        self.model = model
        self.noise = noise
        self.certifier = certifier

    def certify_batch(self, x: Tensor, **sampling) -> list[Certificate]:
        """Certificates for a batch (B, C, H, W); ``sampling`` takes n0, n, alpha, batch_size, generator."""
        if self.certifier is None:
            return cohen_certify(self.model, x, self.noise, **sampling)
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
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected one image of shape (C, H, W); got {got} (use the *_batch method for batches)")
    return x.unsqueeze(0)
