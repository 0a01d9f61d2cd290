"""The zoo of the papers' released smoothed models: ``--model zoo:NAME``, ``--denoiser dncnn:zoo:NAME``.

The table (``entries``) is data; ``load_entry`` turns an entry into a model, downloading the authors' archive once
(``files``) and renaming the authors' weights onto rs-plugins' networks (``layouts``). The built-in plugin
``rs_plugins.builtin.zoo`` answers ``rs_load_model`` for ``zoo:`` names with these; a third-party package adds
entries the same way, from its own ``rs_load_model``::

    from rs_plugins.sources.zoo import Published, ZooEntry, load_entry

    MINE = ZooEntry("mylab-cifar10-0.25", "Me et al., 2025", "cifar10", "cifar_resnet110", 0.25, "cohen",
                    ("standardize", MEAN, STD), None, None)

    @rs_plugins.hookimpl
    def rs_load_model(request):
        if request.source == f"zoo:{MINE.name}":
            return load_entry(MINE, request)
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import SourceError
from ...file_checks import PickledObjectsError, load_weights_only, untrusted
from .entries import ENTRIES
from .entry import Protocol, Published, ZooEntry
from .files import ZOO_DIR_ENV, cache_path, cached_entry, checkpoint, zoo_dir
from .layouts import build

if TYPE_CHECKING:
    from torch import nn

    from ...types import ModelRequest

__all__ = [
    "ENTRIES",
    "ZOO_DIR_ENV",
    "Protocol",
    "Published",
    "ZooEntry",
    "cache_path",
    "cached_entry",
    "checkpoint_file",
    "denoiser_file",
    "describe",
    "entry",
    "load_entry",
    "provenance",
    "zoo_dir",
]

PREFIX = "zoo:"
EXPECTED = "the authors' checkpoint (a dict of tensors, as their train.py saves it)"


def entry(name: str, *, kind: str | None = None, option: str = "--model") -> ZooEntry:
    """The entry called ``name``; a one-line refusal with the closest names if there is none (or not of ``kind``)."""
    found = next((e for e in ENTRIES if e.name == name), None)
    if found is None:
        names = [e.name for e in ENTRIES if kind is None or e.kind == kind]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SourceError(f"{option} zoo:{name}: no such zoo entry{hint} (rs-plugins zoo lists {len(names)})")
    if kind is not None and found.kind != kind:
        usage = "--model zoo:NAME" if found.kind == "classifier" else "--denoiser dncnn:zoo:NAME"
        raise SourceError(f"{option} zoo:{name} is a {found.kind}; use it as {usage}")
    return found


def checkpoint_file(found: ZooEntry, *, what: str, progress: bool = True) -> Path:
    """The entry's checkpoint on disk (--zoo-dir, the cache, or downloaded), refusing entries this version cannot
    run."""
    if found.needs:
        raise SourceError(f"{what}: this entry needs {found.needs}, which this rs-plugins does not have")
    return checkpoint(found, what=what, progress=progress, siblings=ENTRIES)


def load_entry(found: ZooEntry, request: ModelRequest | None = None) -> nn.Module:
    """The entry's classifier in eval mode on the CPU: (B, C, H, W) images in [0, 1] to logits.

    ``request.checkpoint`` (``--checkpoint FILE``) replaces the download with a file in the authors' layout (for
    entries published where no program can download them); ``request.trust`` allows a checkpoint that needs
    full unpickling.
    """
    what = f"--model zoo:{found.name}"
    if found.kind != "classifier":
        raise SourceError(f"{what} is a {found.kind}; use it as --denoiser dncnn:zoo:{found.name}")
    if request is not None and request.kwargs:
        raise SourceError("--model-kwargs is not used with --model zoo:NAME (the entry fixes the architecture)")
    path = request.checkpoint if request is not None and request.checkpoint else checkpoint_file(found, what=what)
    try:
        state = load_weights_only(path, what, EXPECTED)
    except PickledObjectsError as err:
        if request is None or not request.trust:
            raise untrusted(f"zoo:{found.name}", f"{err}; loading it fully would unpickle it") from err
        import torch

        state = torch.load(path, map_location="cpu", weights_only=False)  # --trust-model-file
    return build(found, state, what, str(path)).cpu()


def denoiser_file(name: str, architecture: str) -> Path:
    """The checkpoint of denoiser entry ``name`` (``--denoiser <architecture>:zoo:NAME``), fetched if need be."""
    what = f"--denoiser {architecture}:zoo:{name}"
    found = entry(name, kind="denoiser", option=f"--denoiser {architecture}:")
    if found.architecture != architecture:
        raise SourceError(f"{what}: the entry is a {found.architecture} denoiser; use --denoiser "
                          f"{found.architecture}:zoo:{name}")  # fmt: skip
    return checkpoint_file(found, what=what)


def describe(found: ZooEntry) -> dict:
    """The entry as recorded with results: paper, training, the authors' protocol and published row."""
    published = found.published
    return {
        "entry": found.name, "paper": found.paper, "dataset": found.dataset, "architecture": found.architecture,
        "sigma": found.sigma, "labels": found.labels, "protocol": dataclasses.asdict(found.protocol),
        "published": None if published is None else {"source": published.source, "images": published.images,
                                                     "accuracy": {f"{r:g}": a for r, a in published.accuracy.items()},
                                                     "acr": published.acr},
    }  # fmt: skip


def provenance(models: list[str] | str, denoiser: str | None = None) -> list[dict]:
    """For each zoo entry among ``--model`` (and ``--denoiser``): ``describe`` plus the files it was loaded from,
    with their SHA-256 and whether that was checked against a published one (``fetch.fetched``)."""
    from .. import fetch

    models = [models] if isinstance(models, str) else list(models or [])
    wanted = [(m.removeprefix(PREFIX), f"--model {m}") for m in models if m.startswith(PREFIX)]
    if denoiser and ":zoo:" in denoiser:
        wanted.append((denoiser.partition(":zoo:")[2], f"--denoiser {denoiser}"))
    found = []
    for name, what in wanted:
        known = next((e for e in ENTRIES if e.name == name), None)
        files = [r for r in fetch.fetched() if r.get("what") == what]
        found.append((describe(known) if known else {"entry": name}) | {"files": files})
    return found
