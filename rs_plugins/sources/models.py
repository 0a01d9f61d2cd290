"""Built-in model sources for ``--model``: RobustBench, a factory in an importable module, TorchScript, torch.export.

Every source returns an ``nn.Module`` in eval mode on the CPU that takes (B, C, H, W) images in [0, 1] and
returns logits (B, K); any input normalization is inside the model, after the smoothing noise.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.resources
import importlib.util
import os
import pickle
import re
import sys
import types
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rs_plugins.errors import MissingDependencyError, SourceError
from rs_plugins.file_checks import STATE_DICT_HINT, load_weights_only, state_dict_diff, untrusted
from rs_plugins.sources import downloads, fetch
from rs_plugins.validation import check_option_keys

if TYPE_CHECKING:
    from torch import Tensor

    from rs_plugins.types import ModelRequest

MODEL_FORMS = ("zoo:<name>", "robustbench:<name>", "package.module:factory", "torchscript:<file>", "<file>.pt2",
               "timm:<name>", "hf:<owner>/<name>")
"""The ``--model`` forms the built-in sources accept (``zoo:`` through ``rs_plugins.builtin.zoo``), for messages."""

FACTORY_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
LOAD_ERRORS = (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


def _resource_filename(package: str, resource: str) -> str:
    """The one ``pkg_resources`` function robustbench uses; it passes a module name, so fall back to its package."""
    if importlib.util.find_spec(package).submodule_search_locations is None:
        package = package.rpartition(".")[0]
    return str(importlib.resources.files(package) / resource)


def import_robustbench() -> types.ModuleType:
    """Import ``robustbench.utils``, working around two packaging bugs of robustbench 1.1.1 on PyPI.

    1. It imports ``autoattack``, but its dependency pyautoattack installs that module as ``pyautoattack``.
    2. It imports ``pkg_resources``, which setuptools >= 81 no longer ships.

    Raises:
        MissingDependencyError: robustbench or one of its dependencies is not installed.
    """
    try:
        if "autoattack" not in sys.modules and importlib.util.find_spec("autoattack") is None:
            import pyautoattack  # noqa: F401  (imports all its submodules, state included)

            for name, module in list(sys.modules.items()):
                if name == "pyautoattack" or name.startswith("pyautoattack."):
                    sys.modules["autoattack" + name.removeprefix("pyautoattack")] = module
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # their deprecation warnings (pkg_resources, timm) are not the user's
            shim = None
            try:
                import pkg_resources  # noqa: F401
            except ImportError:
                shim = types.ModuleType("pkg_resources")
                shim.resource_filename = _resource_filename  # type: ignore[attr-defined]
                sys.modules["pkg_resources"] = shim
            try:
                import robustbench.utils
            finally:
                # robustbench keeps its own reference; a shim left in sys.modules would fool code that probes
                # for the real pkg_resources (pytest's monkeypatch.syspath_prepend does).
                if shim is not None and sys.modules.get("pkg_resources") is shim:
                    del sys.modules["pkg_resources"]
    except ImportError as err:
        msg = f"robustbench models need robustbench and pyautoattack: pip install 'rs-plugins[robustbench]' ({err})"
        raise MissingDependencyError(msg) from err
    return robustbench.utils


def load_robustbench(name: str, *, dataset: str, threat_model: str, model_dir: str, trust: bool = False) -> nn.Module:
    """A RobustBench model-zoo model from its checkpoint in ``model_dir``, downloaded there first if missing.

    Args:
        name: the model-zoo name, e.g. ``"Sehwag2021Proxy_R18"``.
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        threat_model: ``"L2"``, ``"Linf"`` or ``"corruptions"``.
        model_dir: holds ``<dataset>/<threat_model>/<name>.pt``, RobustBench's own layout.
        trust: let robustbench unpickle a checkpoint that does not load with ``weights_only=True``.

    robustbench calls ``torch.load`` without ``weights_only``; every checkpoint file is therefore first read
    here with ``weights_only=True``, and one that needs full unpickling is refused unless ``trust``. A missing
    file is fetched by RobustBench's Google Drive id through ``fetch`` (complete and in place, or nothing; a
    Drive quota page reported as such), unless offline, which keeps the message that says how to copy it.
    """
    utils = import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    datasets = [d.value for d in BenchmarkDataset]
    if dataset not in datasets:
        msg = f"--dataset must be one of {', '.join(datasets)} for robustbench models; got {dataset!r}"
        raise SourceError(msg)
    zoo = model_dicts[BenchmarkDataset(dataset)]
    threat = threat_model.replace("_3d", "")  # robustbench keeps corruptions_3d models under corruptions
    threats = [t.value for t in zoo]
    if threat not in threats:
        msg = f"--threat-model must be one of {', '.join(threats)} for robustbench {dataset}; got {threat_model!r}"
        raise SourceError(msg)
    models = zoo[ThreatModel(threat)]
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        msg = f"robustbench has no {dataset} {threat} model named {name!r}.{hint} ({len(models)} models available)"
        raise SourceError(msg)
    path = Path(model_dir) / dataset / threat / f"{name}.pt"
    gdrive_id = models[name]["gdrive_id"]
    files = [Path(f"{path}_m{i}.pt") for i in range(len(gdrive_id))] if isinstance(gdrive_id, list) else [path]
    # without a gdrive_id, robustbench takes the weights from timm's Hugging Face hub cache instead
    missing = [str(f) for f in files if not f.is_file()] if gdrive_id is not None else []
    ids = gdrive_id if isinstance(gdrive_id, list) else [gdrive_id]
    if missing and all(ids) and not fetch.offline():  # RobustBench's own Drive ids, each file complete or absent
        downloads.download_robustbench(ids, files, what=f"--model robustbench:{name}")
        missing = []
    if missing:
        msg = (
            f"robustbench model {name!r}: no checkpoint at {', '.join(missing)}, and this environment cannot "
            "download it (robustbench would try Google Drive). On a machine with internet, run robustbench.utils."
            f"load_model({name!r}, model_dir='models', dataset={dataset!r}, threat_model={threat!r}) and copy "
            f"models/{dataset}/{threat}/ into {model_dir}/{dataset}/{threat}/."
        )
        raise SourceError(msg)
    if not trust:
        for file in files if gdrive_id is not None else []:
            try:
                load_weights_only(file, f"--model robustbench:{name}", "a RobustBench checkpoint of tensors")
            except SourceError as err:
                raise untrusted(f"robustbench:{name}", f"{err}; loading it fully would unpickle it") from err
    try:
        with _torch_load_default(weights_only=not trust):
            model = utils.load_model(model_name=name, model_dir=model_dir, dataset=dataset, threat_model=threat_model)
    except LOAD_ERRORS as err:
        msg = f"robustbench model {name!r}: cannot load {', '.join(map(str, files))}: {err}"
        raise SourceError(msg) from err
    return model.eval()


@contextlib.contextmanager
def _torch_load_default(*, weights_only: bool):
    """Make ``torch.load`` calls that do not pass ``weights_only`` (robustbench's) use this value."""
    names = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {name: os.environ.pop(name, None) for name in names}
    os.environ[names[0] if weights_only else names[1]] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
            yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def note_training_checkpoint(path: str, found: Any) -> None:
    """Warn, saying which epoch it holds, when ``--checkpoint`` is a trainer's ``checkpoint.pt`` (weights, optimiser
    and epoch) rather than its final ``model.pt``: an unfinished run's weights are not the trained model."""
    if not (isinstance(found, dict) and {"epoch", "model", "config"} <= found.keys()):
        return
    epoch, config = found["epoch"], found["config"] if isinstance(found["config"], dict) else {}
    planned = config.get("epochs")
    if planned is not None and epoch < planned:
        state = f"after epoch {epoch} of {planned}: its run is unfinished (interrupted, or still running)"
    else:
        state = f"after epoch {epoch}, its run's last (the same weights as the model.pt beside it)"
    warnings.warn(f"--checkpoint {path} is a training checkpoint; it holds the weights {state}", stacklevel=2)


def load_state_dict_file(path: str) -> dict[str, Tensor]:
    """A state dict from a checkpoint: bare, or under ``"model"`` (our training checkpoints) or ``"state_dict"``.

    Read with ``weights_only=True``: a whole pickled ``nn.Module`` is refused, with how to save a state dict.
    A leading ``"module."`` (left by DistributedDataParallel) is removed from every key.
    """
    expected = f"a state dict written by rs-plugins train (model.pt) or torch.save; {STATE_DICT_HINT}"
    found = load_weights_only(path, "--checkpoint", expected)
    note_training_checkpoint(path, found)
    for key in ("model", "state_dict"):
        if isinstance(found, dict) and isinstance(found.get(key), dict):
            found = found[key]
            break
    if not isinstance(found, dict) or not all(isinstance(k, str) for k in found):
        msg = (
            f"--checkpoint: {path} holds a {type(found).__name__}; expected a state dict (parameter names to "
            f"tensors), bare or under 'model' or 'state_dict'; {STATE_DICT_HINT}"
        )
        raise SourceError(msg)
    return {key.removeprefix("module."): value for key, value in found.items()}


def load_factory(target: str, *, checkpoint: str | None, kwargs: dict[str, Any]) -> nn.Module:
    """Build a model with ``factory(**kwargs)`` from ``"package.module:factory"``, then load ``checkpoint`` strictly."""
    if not FACTORY_PATTERN.match(target):
        msg = f"--model {target!r} is not of the form package.module:factory (e.g. rs_plugins.nets:SmallCNN)"
        raise SourceError(msg)
    module_name, _, attr = target.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
    except ImportError as err:
        msg = f"--model {target}: cannot import module {module_name!r}: {err}"
        raise SourceError(msg) from err
    for part in attr.split("."):
        if not hasattr(factory, part):
            msg = f"--model {target}: module {module_name!r} has no attribute {attr!r}"
            raise SourceError(msg)
        factory = getattr(factory, part)
    check_option_keys(factory, kwargs, what=f"--model {target}", flag="--model-kwargs", error=SourceError)
    try:
        model = factory(**kwargs)
    except TypeError as err:
        msg = f"--model {target}: calling it with --model-kwargs {kwargs} failed: {err}"
        raise SourceError(msg) from err
    if not isinstance(model, nn.Module):
        msg = f"--model {target} returned a {type(model).__name__}; expected a torch.nn.Module"
        raise SourceError(msg)
    if checkpoint is not None:
        state = load_state_dict_file(checkpoint)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            given = f" --model-kwargs {kwargs}" if kwargs else ""
            msg = f"--checkpoint {checkpoint} does not fit --model {target}{given}: {_state_dict_diff(model, state)}"
            raise SourceError(msg) from err
    return model


def _state_dict_diff(model: nn.Module, state: dict[str, Tensor]) -> str:
    """``file_checks.state_dict_diff`` and what to do about it."""
    return (
        f"{state_dict_diff(model, state)}. The checkpoint was probably saved from another architecture or other "
        "--model-kwargs; give the --model and --model-kwargs it was trained with"
    )


def _check_file(path: str, form: str) -> None:
    if not Path(path).is_file():
        msg = f"--model {form}: no such file: {path}"
        raise FileNotFoundError(msg)


def load_torchscript(path: str, *, trust: bool = False) -> nn.Module:
    """A TorchScript model saved with ``torch.jit.save``; only with ``trust``.

    The archive is a program: its code runs when the model is called, with TorchScript ops that can read files
    (``torch.from_file``), and torch.jit.load's C++ deserializer is not hardened against crafted archives.
    """
    _check_file(path, f"torchscript:{path}")
    if not trust:
        raise untrusted(f"torchscript:{path}", "a TorchScript archive is a program that runs when the model is called")
    try:
        return torch.jit.load(path, map_location="cpu")
    except LOAD_ERRORS as err:
        msg = f"--model torchscript:{path}: cannot load it: {err}"
        raise SourceError(msg) from err


class ExportedModule(nn.Module):
    """A program saved with ``torch.export.save``, usable like any model.

    An exported graph's train/eval behaviour was fixed at export time and its ``eval()`` raises
    NotImplementedError, so ``train()`` here only sets the flag, letting callers use ``model.eval()`` as usual.
    """

    def __init__(self, path: str, *, trust: bool = False) -> None:
        super().__init__()
        _check_file(path, path)
        if not trust:
            raise untrusted(path, "torch.export.load unpickles parts of the archive with weights_only=False")
        try:
            self.exported = torch.export.load(path).module()
        except Exception as err:  # torch.export raises many kinds (SpecViolationError...) on a damaged archive
            msg = f"--model {path}: cannot load it with torch.export.load: {err}"
            raise SourceError(msg) from err

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.exported(*args, **kwargs)


def refuse_untrained(request: ModelRequest) -> None:
    """A factory model needs a checkpoint, or ``factory_weights`` saying its factory's weights are meant: evaluated
    untrained, a model gives results that look plausible and mean nothing (the CLI and the Python API alike)."""
    if request.checkpoint is None and not request.factory_weights:
        raise SourceError(
            f"--model {request.source} has no --checkpoint, so it would run with the weights its factory builds: "
            "random initial weights, unless the factory sets its own. Give --checkpoint FILE (e.g. model.pt from "
            "rs-plugins train), or --factory-weights to use the factory's weights as they are (a factory that "
            "loads or sets its own; an untrained model for a benchmark). Python: ModelRequest(source, "
            "checkpoint=FILE) or host.load_model(source, factory_weights=True)"
        )


def load_model(request: ModelRequest) -> nn.Module | None:
    """Load ``request.source`` if it has a built-in form (see ``MODEL_FORMS``), else return None for other plugins."""
    source = request.source
    prefixed = source.startswith(("robustbench:", "torchscript:"))
    if not prefixed and FACTORY_PATTERN.match(source):
        refuse_untrained(request)
        return load_factory(source, checkpoint=request.checkpoint, kwargs=request.kwargs).eval().cpu()
    if not prefixed and not source.lower().endswith(".pt2"):
        return None
    for flag, given in (("--checkpoint", request.checkpoint is not None), ("--model-kwargs", bool(request.kwargs))):
        if given:  # weights and architecture come with these sources; silently ignoring the flag would mislead
            msg = f"{flag} is only used with --model package.module:factory; got --model {source}"
            raise SourceError(msg)
    if source.startswith("robustbench:"):
        model = load_robustbench(
            source.removeprefix("robustbench:"),
            dataset=request.dataset,
            threat_model=request.threat_model,
            model_dir=request.model_dir,
            trust=request.trust,
        )
    elif source.startswith("torchscript:"):
        model = load_torchscript(source.removeprefix("torchscript:"), trust=request.trust)
    else:
        model = ExportedModule(source, trust=request.trust)
    return model.eval().cpu()
