"""An example third-party plugin for rs-plugins: one module, three hooks, three components.

It shows the three things a plugin usually needs:

* a mixer (``rs_mixers``): ``ensemble`` averages the members' softmax, after Horváth et al., "Boosting
  Randomized Smoothing with Variance Reduced Classifiers", ICLR 2022, arXiv:2106.06946. (The authors' code
  also offers averaging the logits, its default; averaging probabilities is its "soft voting after softmax".)
* a noise sampler with its own certificate (``rs_noise_samplers``): ``example_uniform`` draws i.i.d. noise on
  [-lambda, lambda]^d and certifies l1, not l2, with the radius of Yang et al., "Randomized Smoothing of All
  Shapes and Sizes", ICML 2020, arXiv:2002.08118: R = 2 lambda (p_lower - 1/2). Checked against the authors'
  code (tonyduan/rs4a, ``Uniform.certify_l1``) and the short derivation in ``UniformNoise``, not against the
  paper's text. rs-plugins now ships the same noise as its built-in ``uniform``; the example keeps its own
  copy under another name (names are unique per kind) because it shows how a plugin adds a noise.
* a component whose dependency is missing (``rs_training_losses``): ``needs_missing`` is listed by
  ``rs-plugins plugins`` as unavailable, and building it fails with ``pip install 'rs-example-plugin[fancy]'``.

Registered through ``[project.entry-points.rs_plugins]`` in pyproject.toml; nothing else is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

import rs_plugins
from rs_plugins.types import LossSpec, MixerSpec, NoiseSpec

HORVATH = "Horváth et al., ICLR 2022, arXiv:2106.06946"
YANG = "Yang et al., ICML 2020, arXiv:2002.08118"


class SoftmaxEnsemble(nn.Module):
    """The log of the (weighted) average of the members' softmax.

    Its argmax is the averaged-probability vote, and it is differentiable in the input, so attacks run through it.

    Args:
        base_classifiers: one or more modules mapping (B, C, H, W) in [0, 1] to (B, K) logits.
        weights: one positive weight per member (normalised to sum to 1); equal weights by default.

    Shape:
        x: (B, C, H, W) in [0, 1]; returns log-probabilities (B, K).
    """

    def __init__(self, base_classifiers: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        members = list(base_classifiers)
        if not members or not all(isinstance(m, nn.Module) for m in members):
            got = [type(m).__name__ for m in members]
            raise ValueError(f"base_classifiers must be one or more nn.Module; got {got}")
        if weights is None:
            weights = [1.0] * len(members)
        msg = f"weights must be {len(members)} positive numbers, one per classifier; got {weights!r}"
        try:
            weights = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise ValueError(msg) from None
        if len(weights) != len(members) or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(msg)
        self.members = nn.ModuleList(members)
        self.register_buffer("log_weights", torch.tensor(weights).div(sum(weights)).log())  # (M,)

    def forward(self, x: Tensor) -> Tensor:
        log_probs = torch.stack([m(x).log_softmax(dim=-1) for m in self.members])  # (M, B, K)
        log_w = self.log_weights.to(log_probs.dtype)[:, None, None]  # (M, 1, 1)
        return torch.logsumexp(log_probs + log_w, dim=0)  # log sum_m w_m softmax_m: (B, K)


class UniformNoise:
    """I.i.d. uniform noise on [-lambda, lambda] per pixel, lambda = sqrt(3) sigma (standard deviation sigma).

    Certifies l1 (Yang et al. 2020). Shifting the cube by delta changes any event's probability by at most
    the total variation 1 - prod_i (1 - |delta_i| / (2 lambda)) <= ||delta||_1 / (2 lambda), so the top class
    keeps more than 1/2 while ||delta||_1 < 2 lambda (p_lower - 1/2); a shift along one axis attains the bound.
    """

    norm = "l1"

    def __init__(self, sigma: float) -> None:
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0; got {sigma!r}")
        self.sigma = float(sigma)
        self.lambd = math.sqrt(3) * self.sigma  # the half-width; `lambda` is reserved

    def sample(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)  # U[0, 1)
        return x + self.lambd * (2 * u - 1)

    def radius(self, p_lower: Tensor) -> Tensor:
        p = torch.as_tensor(p_lower, dtype=torch.float64)
        return torch.where(p > 0.5, 2 * self.lambd * (p - 0.5), torch.zeros_like(p))

    def __repr__(self) -> str:
        return f"UniformNoise(sigma={self.sigma})"


def _fancy_loss(**config):
    """Never reached without the dependency: the host checks ``requires`` before calling ``build``."""
    import rs_example_missing_dependency  # noqa: F401  (a heavy import belongs in build, not at module import)

    raise NotImplementedError("an example of an unavailable component")


@rs_plugins.hookimpl
def rs_mixers():
    yield MixerSpec("ensemble", SoftmaxEnsemble, "log of the (weighted) average of the members' softmax", HORVATH)


@rs_plugins.hookimpl
def rs_noise_samplers():
    yield NoiseSpec("example_uniform", UniformNoise, "i.i.d. uniform, std sigma; certifies l1", YANG)


@rs_plugins.hookimpl
def rs_training_losses():
    yield LossSpec(
        "needs_missing",
        _fancy_loss,
        "shows how a component with a missing dependency is listed",
        requires=("rs_example_missing_dependency",),
        extra="fancy",
    )
