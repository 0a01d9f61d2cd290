"""rs-plugins: randomized-smoothing training and certification techniques as pluggable components.

Public API::

    import rs_plugins as rs

    host = rs.Host()                                   # every installed plugin
    noise = host.noise("gaussian", sigma=0.25)
    smoothed = rs.SmoothedClassifier(model, noise, host.certifier("cohen"))
    cert = smoothed.certify(image, n0=100, n=100_000, alpha=0.001)
    result = rs.attack(model, images, labels, attack="PGDL2", eps=[0.25, 0.5], sigma=0.25)  # empirical robustness
    rows = rs.recertify("certify.tsv.counts", "cpm", alpha=0.01, out="cpm.tsv")  # from stored counts, no sampling
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pluggy

hookimpl = pluggy.HookimplMarker("rs_plugins")
"""Marks a plugin function as an implementation of the hook with the same name."""

from .attacks.engine import AttackResult, attack  # noqa: E402
from .certify.denoising import DenoisedClassifier  # noqa: E402
from .certify.recertify import recertify  # noqa: E402
from .certify.smoothing import SmoothedClassifier, cohen_certify, cohen_predict  # noqa: E402
from .errors import (  # noqa: E402  (hookimpl must exist before the built-in plugins import this package)
    ComponentConflictError,
    IncompatibleComponentsError,
    MissingDependencyError,
    NeedsFreshSamplesError,
    PluginBuildError,
    RsPluginError,
    SourceError,
    UnknownComponentError,
)
from .host import Host  # noqa: E402
from .types import (  # noqa: E402
    ABSTAIN,
    Certificate,
    Certifier,
    CertifierSpec,
    Counts,
    DataRequest,
    Denoiser,
    DenoiserSpec,
    LossOutput,
    LossSpec,
    MixerSpec,
    ModelRequest,
    NoiseSampler,
    NoiseSpec,
    TrainingLoss,
)

try:
    __version__ = version("rs-plugins")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "ABSTAIN",
    "AttackResult",
    "Certificate",
    "Certifier",
    "CertifierSpec",
    "ComponentConflictError",
    "Counts",
    "DataRequest",
    "DenoisedClassifier",
    "Denoiser",
    "DenoiserSpec",
    "Host",
    "IncompatibleComponentsError",
    "LossOutput",
    "LossSpec",
    "MissingDependencyError",
    "MixerSpec",
    "ModelRequest",
    "NeedsFreshSamplesError",
    "NoiseSampler",
    "NoiseSpec",
    "PluginBuildError",
    "RsPluginError",
    "SmoothedClassifier",
    "SourceError",
    "TrainingLoss",
    "UnknownComponentError",
    "__version__",
    "attack",
    "cohen_certify",
    "cohen_predict",
    "hookimpl",
    "recertify",
]
