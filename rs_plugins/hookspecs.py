"""The hooks a plugin can implement.

A plugin is a module (or object) with functions marked ``@rs_plugins.hookimpl`` whose names are hooks below,
published under the entry-point group ``rs_plugins``::

    # pyproject.toml of your distribution
    [project.entry-points.rs_plugins]
    rs-mynoise = "rs_mynoise"          # use your distribution name: pluggy skips a repeated name

    # rs_mynoise.py
    import rs_plugins

    @rs_plugins.hookimpl
    def rs_noise_samplers():
        yield rs_plugins.NoiseSpec("mynoise", MyNoise, summary="...", reference="arXiv:...")

Five *registry* hooks contribute named components (every plugin's answer is collected; names must be unique
within a kind). Two *source* hooks resolve a ``--model`` or ``--data`` string; the first plugin that
recognises the string answers, and the built-in resolvers run last, so a plugin can take over a form.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from .types import CertifierSpec, DataRequest, DenoiserSpec, LossSpec, MixerSpec, ModelRequest, NoiseSpec

hookspec = pluggy.HookspecMarker("rs_plugins")


@hookspec
def rs_noise_samplers() -> Iterable[NoiseSpec]:
    """Contribute smoothing noise distributions.

    ``build(sigma=..., **config)`` must return a ``NoiseSampler``: ``sample(x, generator=)`` adds fresh
    noise to a (B, C, H, W) batch on its device and dtype, and ``radius(p_lower)`` turns a lower bound on the
    top-class probability into a certified radius in the norm named by its ``norm`` attribute.

    Example::

        @rs_plugins.hookimpl
        def rs_noise_samplers():
            yield NoiseSpec("gaussian", GaussianNoise, summary="N(0, sigma^2 I); l2", reference="arXiv:1902.02918")
    """


@hookspec
def rs_training_losses() -> Iterable[LossSpec]:
    """Contribute training objectives for base classifiers.

    ``build(**config)`` must return a callable ``loss(model, x, y, noise, *, progress) -> LossOutput`` that
    leaves ``model.training`` and every ``requires_grad`` flag as it found them. ``progress`` in [0, 1] is the
    fraction of training done, for warm-up schedules.

    Example::

        @rs_plugins.hookimpl
        def rs_training_losses():
            yield LossSpec("gaussian", GaussianAugmentation, summary="CE on noisy inputs")
    """


@hookspec
def rs_mixers() -> Iterable[MixerSpec]:
    """Contribute ways to combine several base classifiers into one.

    ``build(base_classifiers, **config)`` must return an ``nn.Module`` mapping (B, C, H, W) inputs in [0, 1]
    to (B, K) logits, differentiable in its input so that attacks can run through it.

    Example::

        @rs_plugins.hookimpl
        def rs_mixers():
            yield MixerSpec("ensemble", SoftmaxEnsemble, summary="average of the members' softmax")
    """


@hookspec
def rs_certifiers() -> Iterable[CertifierSpec]:
    """Contribute certification procedures.

    ``build(**config)`` must return an object with ``certify(model, x, noise, *, n0, n, alpha, batch_size,
    generator) -> list[Certificate]`` for a (B, C, H, W) batch. Set ``noises`` on the spec when the procedure
    is derived for particular noise samplers; the host refuses other pairs before any sampling. A ``certify``
    that names a ``labels`` parameter receives the data set's labels from the runner (evaluation only).
    Certificates may carry their votes (``Certificate.counts``) for the counts log; an optional
    ``certify_counts(counts_n0, counts_n, noise, *, alpha)`` certifies from stored votes (``rs-plugins recertify``).
    Run ``rs_plugins.testing.check_certifier_soundness`` on it.

    Example::

        @rs_plugins.hookimpl
        def rs_certifiers():
            yield CertifierSpec("cohen", CohenCertifier, summary="Clopper-Pearson CERTIFY")
    """


@hookspec
def rs_denoisers() -> Iterable[DenoiserSpec]:
    """Contribute denoisers for denoised smoothing (the base classifier becomes classifier o denoiser).

    ``build(sigma=..., **config)`` must return an ``nn.Module`` mapping a (B, C, H, W) batch of noisy inputs
    (x + delta, values outside [0, 1] allowed) to clean-image estimates of the same shape in [0, 1]. ``--denoiser
    NAME:PATH`` passes ``path=PATH``. An optional ``settings()`` method returns a JSON-ready dict recorded with
    the results (e.g. the diffusion timestep chosen for sigma).

    Example::

        @rs_plugins.hookimpl
        def rs_denoisers():
            yield DenoiserSpec("mydenoiser", MyDenoiser, summary="one-shot denoiser", reference="arXiv:...")
    """


@hookspec(firstresult=True)
def rs_load_model(request: ModelRequest) -> nn.Module | None:
    """Return the classifier named by ``request.source`` if the form is yours, else ``None``.

    The module must take (B, C, H, W) inputs in [0, 1], normalise them itself, and return (B, K) logits.
    Stops at the first non-None result.

    Example::

        @rs_plugins.hookimpl
        def rs_load_model(request):
            if request.source.startswith("hub:"):
                return load_from_my_hub(request.source[4:])
    """


@hookspec(firstresult=True)
def rs_load_data(request: DataRequest) -> Dataset | None:
    """Return the data set named by ``request.source`` (split ``request.split``) if the form is yours, else ``None``.

    Items must be ``(x, y)``: x a float (C, H, W) tensor in [0, 1], y an integer label. Stops at the first
    non-None result.

    Example::

        @rs_plugins.hookimpl
        def rs_load_data(request):
            if request.source == "mnist-local":
                return MyMnist(split=request.split)
    """
