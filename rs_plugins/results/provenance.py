"""Where a result came from: which plugin built each component, the versions, the model's weight hash.

Two kinds of record, kept apart on purpose. *Settings* change the rows (sigma, n, alpha, the weights' hash...):
a resumed run must have the same ones. *Provenance* describes the run (versions, device, date, host): it is
recorded and shown, and a resumed run may differ in it, e.g. after upgrading torch.
"""

from __future__ import annotations

import datetime
import hashlib
import platform
import socket
import weakref
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn

_DESCRIPTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SPECS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remember(obj: Any, description: str, spec: Any = None) -> Any:
    """Record what built ``obj`` (e.g. "noise sampler 'x' from plugin y 1.0"), for messages about it, and the
    ``ComponentSpec`` it was built from, so a pair of components can be checked where they meet."""
    try:
        _DESCRIPTIONS[obj] = description
        if spec is not None:
            _SPECS[obj] = spec
    except TypeError:  # not weak-referenceable or not hashable: messages fall back to the type name
        pass
    return obj


def built_from(obj: Any) -> Any:
    """The ``ComponentSpec`` a ``Host`` built ``obj`` from, or None."""
    try:
        return _SPECS.get(obj)
    except TypeError:
        return None


def describe(obj: Any, default: str) -> str:
    """What ``remember`` recorded for ``obj``, else ``default``."""
    try:
        return _DESCRIPTIONS.get(obj, default)
    except TypeError:
        return default


def package_version(name: str) -> str:
    """The installed version of distribution ``name``, or "unknown"."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the state dict: each tensor's name, dtype, shape and bytes, in sorted name order.

    It identifies the weights whatever file or format they came from (a checkpoint, TorchScript, torch.export).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def environment(device: str) -> dict[str, Any]:
    """Versions, device and time of this run: recorded, never compared on resume."""
    return {
        "rs_plugins": package_version("rs-plugins"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if str(device).startswith("cuda") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
    }


def component(host: Any, kind: str, name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A component's name, options and the plugin (distribution and version) that provides it."""
    plugin = host.component(kind, name).plugin
    return {
        "name": name,
        "options": options or {},
        "plugin": plugin.name,
        "distribution": plugin.distribution or None,
        "version": plugin.version or None,
    }
