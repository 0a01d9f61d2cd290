"""Monte Carlo core of randomized smoothing: sample, count, bound, radius (Cohen et al., ICML 2019).

The smoothed classifier is g(x) = argmax_c P[f(x + delta) = c]. CERTIFY picks the top class on n0 selection
samples, counts it on n fresh samples, and certifies the radius that the noise assigns to a one-sided
Clopper-Pearson lower bound on its probability. PREDICT answers when a two-sided binomial test separates the
top two classes. With probability at least 1 - alpha, each output either abstains or equals g(x).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from ..errors import IncompatibleComponentsError
from ..results.provenance import built_from, describe
from ..types import Certificate
from ..validation import (  # check_images lives there, below the data sources that check with it
    check_images,
    check_integer,
    check_number,
    check_tensor,
)
from .from_counts import choose_classes, cohen_from_counts, predict_from_counts, records
from .sampling import eval_mode, per_image_generators, sample_counts
from .stats import min_samples_to_certify, min_samples_to_predict

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..types import Certifier, NoiseSampler


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


CLASS_SELECTIONS = ("n0", "label")
"""How a certifier picks the class to certify: the top class of n0 fresh samples (CERTIFY), or the label
(evaluation only: it certifies "g(x) = y and robust", saves the n0 pass, and is no deployable prediction)."""


LABEL_CLAIM = (
    "class_selection=label: certifies g(x) = y and robust (evaluation only, no n0 pass; not a deployable prediction)"
)
"""What a results file made with ``class_selection=label`` certifies: its sidecar, table and summary say it."""


def check_class_selection(class_selection: str) -> str:
    """Return ``class_selection`` if it is one of ``CLASS_SELECTIONS``, else raise ValueError naming it."""
    if class_selection not in CLASS_SELECTIONS:
        msg = f"class_selection must be one of {', '.join(CLASS_SELECTIONS)}; got {class_selection!r}"
        raise ValueError(msg)
    return class_selection


def selection_counts(
    model: nn.Module,
    x: Tensor,
    noise: NoiseSampler,
    *,
    n0: int,
    batch_size: int,
    generators,
    class_selection: str,
) -> Tensor | None:
    """The n0 class-selection pass: (B, K) int64 counts on the CPU, or None with ``class_selection="label"``."""
    if check_class_selection(class_selection) == "label":
        return None
    return sample_counts(model, x, noise, n0, batch_size=batch_size, generator=generators)


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
    counts = selection_counts(
        model, x, noise, n0=n0, batch_size=batch_size, generators=generators, class_selection=class_selection
    )
    return choose_classes(counts, class_selection, labels, len(x)), 0 if counts is None else n0


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
    Each certificate carries its votes (``Certificate.counts``) for the counts log.
    """
    check_smoothing(model, noise)
    check_images(x)
    check_sampling(n0=n0, n=n, alpha=alpha, batch_size=batch_size)
    if n < min_samples_to_certify(alpha):
        warnings.warn(f"n={n} is too small for alpha={alpha}: every input will abstain", stacklevel=2)
    generator = per_image_generators(generator, len(x))
    with eval_mode(model):
        selection = selection_counts(
            model, x, noise, n0=n0, batch_size=batch_size, generators=generator, class_selection=class_selection
        )
        top = choose_classes(selection, class_selection, labels, len(x))
        estimation = sample_counts(model, x, noise, n, batch_size=batch_size, generator=generator)
    spent = 0 if selection is None else n0
    return cohen_from_counts(top, estimation, noise, alpha, spent, records(estimation, selection))


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
    counts = predict_counts(model, x, noise, n=n, alpha=alpha, batch_size=batch_size, generator=generator)
    return predict_from_counts(counts, alpha)


def predict_counts(
    model: nn.Module, x: Tensor, noise: NoiseSampler, *, n: int, alpha: float, batch_size: int, generator=None
) -> Tensor:
    """PREDICT's votes: (B, K) int64 counts of n draws per image, after its checks (and a warning where n is too
    small for any answer at alpha); ``predict_from_counts`` decides from them."""
    check_smoothing(model, noise)
    check_images(x)
    check_sampling(n=n, alpha=alpha, batch_size=batch_size)
    if n < min_samples_to_predict(alpha):
        warnings.warn(f"n={n} is too small for alpha={alpha}: every input will abstain", stacklevel=3)
    with eval_mode(model):
        return sample_counts(model, x, noise, n, batch_size=batch_size, generator=generator)


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
