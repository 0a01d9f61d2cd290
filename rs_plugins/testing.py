"""Helpers for testing plugins: contract checks every component must pass, and tiny classifiers.

A plugin's own test suite can run the same checks the host runs on its built-ins::

    from rs_plugins.testing import check_noise
    check_noise(MyNoise(sigma=0.5))

A certifier plugin also runs the soundness bench (``check_certifier_soundness``): its failure rate on classifiers
whose smoothed classifier is known in closed form, against its alpha.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .types import ABSTAIN, Certifier, CertifierSpec, LossOutput, NoiseSampler, TrainingLoss


class LinearClassifier(nn.Module):
    """Two classes split by the hyperplane w.x + b = 0: logits (-(w.x + b), w.x + b).

    Under N(0, sigma^2 I) the smoothed classifier is known in closed form: the top-class probability is
    Phi(d / sigma) with d = |w.x + b| / ||w||, so the exact certified l2 radius is d.
    """

    def __init__(self, w: Tensor, b: float) -> None:
        super().__init__()
        self.register_buffer("w", w.flatten().double())
        self.b = float(b)

    def forward(self, x: Tensor) -> Tensor:
        score = (x.flatten(1).double() @ self.w + self.b).to(x.dtype)
        return torch.stack([-score, score], dim=1)

    def distance(self, x: Tensor) -> Tensor:
        """Signed l2 distance of each image of ``x`` to the decision boundary."""
        return (x.flatten(1).double() @ self.w + self.b) / self.w.norm()


class CoordinateClassifier(nn.Module):
    """Two classes split by one pixel: logits (-(x_j - t), x_j - t) for the flattened pixel j and threshold t.

    Any noise that is i.i.d. and symmetric per pixel gives a smoothed classifier known in closed form: the
    top-class probability is F(d), F the per-pixel noise CDF and d = |x_j - t|, and the smoothed classifier
    changes only when pixel j crosses t, so the exact certified radius is d in every l_p norm. The l1
    certificates of uniform and Laplace noise are tight here, which makes it the l1 counterpart of
    ``LinearClassifier``.
    """

    def __init__(self, index: int, threshold: float) -> None:
        super().__init__()
        self.index, self.threshold = int(index), float(threshold)

    def forward(self, x: Tensor) -> Tensor:
        score = x.flatten(1)[:, self.index] - self.threshold
        return torch.stack([-score, score], dim=1)


def tiny_classifier(channels: int = 1, size: int = 8, num_classes: int = 3, seed: int = 0) -> nn.Module:
    """A seeded two-layer CNN for contract tests: (B, channels, size, size) -> (B, num_classes)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * size * size, num_classes),
    )


def check_noise(noise: NoiseSampler, *, shape: tuple[int, ...] = (256, 3, 8, 8), tolerance: float = 0.05) -> None:
    """Shape, device and dtype kept; mean x and standard deviation sigma; reproducible; radius 0 at p <= 1/2."""
    x = torch.rand(shape)
    noisy = noise.sample(x, generator=torch.Generator().manual_seed(0))
    assert noisy.shape == x.shape and noisy.dtype == x.dtype and noisy.device == x.device, (
        "sample() must keep shape, dtype, device"
    )
    delta = noisy - x
    assert abs(float(delta.mean())) < tolerance * noise.sigma, f"noise mean {float(delta.mean()):.4f} is not ~0"
    assert abs(float(delta.std()) / noise.sigma - 1) < tolerance, (
        f"noise std {float(delta.std()):.4f} is not ~sigma={noise.sigma}"
    )
    again = noise.sample(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again), "the same generator state must give the same noise"
    radii = noise.radius(torch.tensor([0.0, 0.3, 0.5, 0.6, 0.9, 0.999]))
    assert torch.all(radii[:3] == 0), "radius must be 0 where p_lower <= 1/2"
    assert torch.all(radii[3:] > 0) and torch.all(radii[3:].diff() > 0), "radius must grow with p_lower above 1/2"


def check_loss(loss: TrainingLoss, noise: NoiseSampler, *, num_classes: int = 3) -> None:
    """Finite scalar, gradients reach every parameter, and the model's mode and requires_grad flags survive."""
    model = tiny_classifier(num_classes=num_classes)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % num_classes
    for training in (True, False):
        model.train(training)
        out = loss(model, x, y, noise, progress=0.5)
        assert isinstance(out, LossOutput), f"a loss must return LossOutput; got {type(out).__name__}"
        assert out.loss.dim() == 0 and math.isfinite(float(out.loss.detach())), "loss must be a finite scalar"
        assert model.training == training, "a loss must leave model.training as it found it"
        assert all(p.requires_grad for p in model.parameters()), "a loss must restore requires_grad flags"
        assert all(not v.requires_grad for v in out.parts.values()), "loss parts must be detached"
    model.zero_grad()
    loss(model, x, y, noise, progress=0.0).loss.backward()
    assert all(p.grad is not None for p in model.parameters()), "the loss gradient must reach every parameter"


def check_mixer(mixed: nn.Module, *, channels: int = 1, size: int = 8, num_classes: int = 3) -> None:
    """(B, K) logits, gradients flow to the input (so attacks can run through it)."""
    x = torch.rand(4, channels, size, size, requires_grad=True)
    logits = mixed(x)
    assert logits.shape == (4, num_classes), (
        f"mixer output must be (B, K) = (4, {num_classes}); got {tuple(logits.shape)}"
    )
    logits.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all(), "the mixer must be differentiable in its input"


class IdentityDenoiser(nn.Module):
    """A denoiser that returns its input: denoised smoothing with it is plain smoothing, row for row."""

    def __init__(self, sigma: float = 0.0) -> None:
        super().__init__()
        self.sigma = float(sigma)

    def forward(self, x: Tensor) -> Tensor:
        return x


def check_denoiser(denoiser: nn.Module, *, shape: tuple[int, ...] = (4, 3, 8, 8), sigma: float = 0.25) -> None:
    """Shape, dtype and device kept; finite values in [0, 1] for noisy inputs that leave [0, 1]."""
    torch.manual_seed(0)
    x = torch.rand(shape) + sigma * torch.randn(shape)
    with torch.no_grad():
        out = denoiser(x)
    assert isinstance(out, Tensor) and out.shape == x.shape, f"denoiser output must have shape {tuple(x.shape)}"
    assert out.dtype == x.dtype and out.device == x.device, "denoiser output must keep dtype and device"
    assert torch.isfinite(out).all(), "denoiser output must be finite"
    assert out.min() >= 0 and out.max() <= 1, "denoiser output must lie in [0, 1]"


def check_certifier(
    certifier: Certifier, noise: NoiseSampler, *, num_classes: int = 3, model: nn.Module | None = None
) -> None:
    """Predictions are classes or ABSTAIN, radii are non-negative and 0 when abstaining, one per image.

    ``model`` (default: a tiny CNN with ``num_classes`` classes) is for certifiers that need a particular kind of
    classifier, e.g. a mixture for ``mixed``.
    """
    model = tiny_classifier(num_classes=num_classes).eval() if model is None else model
    x = torch.rand(3, 1, 8, 8)
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    certs = certifier.certify(model, x, noise, n0=10, n=200, alpha=0.01, batch_size=64, generator=generators)
    assert len(certs) == 3, "one certificate per image"
    for cert in certs:
        assert cert.prediction == ABSTAIN or 0 <= cert.prediction < num_classes, f"bad prediction {cert.prediction}"
        assert cert.radius >= 0, f"negative radius {cert.radius}"
        assert cert.prediction != ABSTAIN or cert.radius == 0, "an abstention must have radius 0"
        assert cert.samples is None or cert.samples >= 1, f"samples must be None or positive; got {cert.samples}"


def check_certifier_soundness(certifier: CertifierSpec | Certifier, **options):
    """The soundness bench (``rs_plugins.certify.soundness``): certify closed-form cases many times at a large alpha
    and fail (AssertionError with the table) when a case's failure rate is above alpha with 99 % confidence.

    ``certifier`` is your ``CertifierSpec`` (built with ``options=``) or a built certifier; ``trials`` (400), ``alpha``
    (0.1), ``n0`` (64), ``n`` (512), ``seed``, ``cases`` and ``noises`` as for the bench. Returns its report."""
    from .certify.soundness import check_certifier_soundness as bench

    return bench(certifier, **options)
