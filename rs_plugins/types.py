"""The component contracts: specs that plugins yield, the protocols their components satisfy, and results.

A plugin never hands the host a live component. It yields a frozen *spec* that names the component and
says how to build it, so registration costs nothing and build errors can be attributed to the plugin.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

ABSTAIN = -1
"""The prediction a smoothed classifier returns when it declines to answer (Cohen et al. 2019)."""

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class ComponentSpec:
    """What a plugin contributes: a named factory plus what a user needs to choose it.

    Args:
        name: unique within its kind across all plugins, matching ``^[a-z][a-z0-9_]*$``.
        build: factory called as ``build(**config)``; a class is fine.
        summary: one line shown by ``rs-plugins plugins``.
        reference: the paper, e.g. ``"Cohen et al., ICML 2019, arXiv:1902.02918"``.
        requires: modules that must be importable; if one is missing the component is listed as
            unavailable and building it raises ``MissingDependencyError`` with the pip command.
        extra: the pip extra of the providing distribution that installs ``requires``.
    """

    kind: ClassVar[str] = "component"
    label: ClassVar[str] = "component"  # how messages name the kind

    name: str
    build: Callable[..., Any]
    summary: str = ""
    reference: str = ""
    requires: tuple[str, ...] = ()
    extra: str = ""


@dataclass(frozen=True)
class NoiseSpec(ComponentSpec):
    """Contributes a smoothing noise distribution; ``build(sigma=..., **config) -> NoiseSampler``."""

    kind: ClassVar[str] = "noise"
    label: ClassVar[str] = "noise sampler"


@dataclass(frozen=True)
class LossSpec(ComponentSpec):
    """Contributes a training objective; ``build(**config) -> TrainingLoss``."""

    kind: ClassVar[str] = "loss"
    label: ClassVar[str] = "training loss"


@dataclass(frozen=True)
class MixerSpec(ComponentSpec):
    """Contributes a way to combine base classifiers; ``build(base_classifiers, **config) -> nn.Module``."""

    kind: ClassVar[str] = "mixer"
    label: ClassVar[str] = "mixer"


@dataclass(frozen=True)
class CertifierSpec(ComponentSpec):
    """Contributes a certification procedure; ``build(**config) -> Certifier``.

    ``noises`` lists the noise samplers it is derived for; empty means any noise that has a radius.
    """

    kind: ClassVar[str] = "certifier"
    label: ClassVar[str] = "certifier"

    noises: tuple[str, ...] = ()


@dataclass(frozen=True)
class DenoiserSpec(ComponentSpec):
    """Contributes a denoiser for denoised smoothing; ``build(sigma=..., [path=...,] **config) -> Denoiser``."""

    kind: ClassVar[str] = "denoiser"
    label: ClassVar[str] = "denoiser"


SPEC_TYPES: dict[str, type[ComponentSpec]] = {
    spec.kind: spec for spec in (NoiseSpec, LossSpec, MixerSpec, CertifierSpec, DenoiserSpec)
}
"""Component kinds in display order."""


@runtime_checkable
class NoiseSampler(Protocol):
    """Draws noisy copies of inputs and converts a probability bound into a certified radius."""

    sigma: float
    norm: str  # the norm its radius is measured in, e.g. "l2"

    def sample(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Return ``x`` plus fresh i.i.d. noise, one draw per element.

        Shape:
            x: (B, C, H, W), values in [0, 1].
            returns: same shape, device and dtype as ``x``; not clamped.
        """
        ...

    def radius(self, p_lower: Tensor) -> Tensor:
        """Certified radius for a lower bound on the top-class probability (0 where ``p_lower <= 0.5``)."""
        ...


@dataclass(frozen=True)
class LossOutput:
    """A training loss: the scalar to minimise plus detached named parts to log."""

    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


class TrainingLoss(Protocol):
    """One training objective. It must leave ``model.training`` and ``requires_grad`` flags as it found them.

    Two optional members the training runner honours: ``chunks`` (int, default 1) splits each loader batch into
    that many chunks with one optimiser step each, the papers' convention for m noise draws; ``set_epoch(epoch)``
    is called at the start of every epoch (from 0) for warm-up schedules (see ``rs_plugins.train.losses.EpochAware``).
    A third, ``example_targets(dataset, num_classes) -> {name: (N, ...) tensor}``, asks for per-example data by
    data set index (e.g. CAT-RS's p_b); the runner then calls the loss with ``targets={name: rows of this batch}``
    (see ``rs_plugins.train.loop.example_targets``). A loss with ``uses_noise = False`` (e.g. ``standard``)
    trains without noise: the runner may then pass ``noise=None`` and ``train`` needs no ``--sigma``.
    """

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, noise: NoiseSampler, *, progress: float) -> LossOutput:
        """Loss for a batch.

        Shape:
            x: (B, C, H, W) in [0, 1]; y: (B,) integer labels.
        ``progress`` is the fraction of training done, in [0, 1], for warm-up schedules.
        """
        ...


@dataclass(frozen=True)
class Counts:
    """The base classifier's top-1 votes a certificate was computed from, over all K classes (the counts log).

    ``estimation`` is the pass the bound comes from (n draws; for a certifier that looks at its counts as they
    grow, the counts at its last look); ``selection`` the n0 class-selection pass, None where none was drawn
    (``class_selection=label``, PREDICT). ``looks`` holds (samples, cumulative counts) at each look of such a
    certifier (``sequential``), the last one being ``estimation``; empty for a fixed n. ``extra`` is what else
    ``certify_counts`` needs to recompute the certificate, JSON-ready (e.g. the mixture's weight).
    """

    estimation: tuple[int, ...]
    selection: tuple[int, ...] | None = None
    looks: tuple[tuple[int, tuple[int, ...]], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Certificate:
    """The outcome of certifying one input.

    ``prediction`` is a class index or ``ABSTAIN``; ``radius`` is 0 when abstaining; ``p_lower`` is the
    lower confidence bound on the top-class probability that the radius was computed from. ``samples`` is the
    number of noisy copies drawn for this input, class selection included; ``None`` (a certifier that does not
    count) makes the runner record n0 + n, what CERTIFY draws. ``counts`` (optional) are the votes it was
    computed from; the runner writes them to the counts log, from which ``recertify`` recomputes certificates.
    """

    prediction: int
    radius: float
    p_lower: float
    samples: int | None = None
    counts: Counts | None = None


class Certifier(Protocol):
    """Turns a base classifier and a noise distribution into certificates for a batch of inputs."""

    def certify(
        self,
        model: nn.Module,
        x: Tensor,
        noise: NoiseSampler,
        *,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> list[Certificate]:
        """Certify each input of ``x``; with probability at least 1 - alpha each result abstains or is correct.

        Shape:
            x: (B, C, H, W) in [0, 1]. ``generator`` is one shared generator or one per input.

        A certifier may also accept ``labels`` (a (B,) int64 tensor, or None): the runner passes the data set's
        labels to a ``certify`` whose signature has that keyword, for evaluation-only class selection.

        Optional, for certifying from stored counts (``recertify``): ``certify_counts(counts_n0, counts_n, noise, *,
        alpha) -> list[Certificate]`` with (B, K) int64 vote counts (``counts_n0`` None where no selection pass
        was drawn), and the keywords ``labels``, ``looks`` and ``extra`` (one entry per image, see ``Counts``)
        passed where its signature names them. A certifier that needs fresh samples has no such method, or raises
        ``NeedsFreshSamplesError`` from it with the reason.
        """
        ...


@runtime_checkable
class Denoiser(Protocol):
    """An ``nn.Module`` that maps noisy inputs to clean-image estimates; built for one noise level sigma.

    The smoothed classifier becomes ``classifier(denoiser(x + delta))``: the composition is just another base
    classifier, so every certifier applies unchanged. ``settings()`` (optional) returns what the run depends on
    beyond the options, e.g. the diffusion timestep, for the results' sidecar. ``smoothing_noise(noise)`` (optional)
    returns the noise the run draws instead of ``noise``, whose radii it must keep (e.g. the diffusion model's own
    level under ``noise=authors``).
    """

    def __call__(self, x: Tensor) -> Tensor:
        """Denoise a batch.

        Shape:
            x: (B, C, H, W) noisy images in the smoothing's input space (x + delta; values outside [0, 1]).
            returns: the same shape, clean-image estimates in [0, 1], finite.
        """
        ...


@dataclass(frozen=True)
class ModelRequest:
    """What the user asked for with ``--model`` and its companion options.

    ``trust`` (``--trust-model-file``) allows files whose loading can run code they carry: torch.export
    archives (unpickled with ``weights_only=False``), TorchScript programs, and checkpoints that do not load
    with ``weights_only=True``. Leave it False for files you did not make.

    ``factory_weights`` (``--factory-weights``) allows a ``package.module:factory`` model without a ``checkpoint``:
    it then runs with the weights its factory builds (random initial weights, unless the factory sets its own).
    Without it such a model is refused, because results of an untrained model look plausible and mean nothing.
    """

    source: str
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "cifar10"
    threat_model: str = "L2"
    model_dir: str = "./models"
    trust: bool = False
    factory_weights: bool = False


@dataclass(frozen=True)
class DataRequest:
    """What the user asked for with ``--data``: the source string and the split."""

    source: str
    split: str = "test"
