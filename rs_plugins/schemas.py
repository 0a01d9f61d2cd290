"""One schema per kind of file rs-plugins writes and reads back, checked when the file is read.

Each is a ``TypedDict`` whose fields carry a ``Rule`` (``Annotated[..., Rule(...)]``): a hand-edited or foreign file
then gets one line naming the file, the field, what it holds and what was expected, instead of a traceback from the
reader that trips over it. Fields a schema does not name are left alone (commands store different settings); the
required ones come from a ``total=True`` base class. The schemas: results sidecars (``ResultsSidecar`` and its
``Provenance``), the p_b votes sidecar of ``predict-confidence`` (``ConfidenceSidecar``), DnCNN denoiser files
(``DnCNNFile``) and diffusers folders (``DiffusersUNetConfig``, ``DiffusersSchedulerConfig``).
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict, Union, get_args, get_origin, get_type_hints

from .errors import ResultsFileError


@dataclass(frozen=True)
class Rule:
    """What a field must hold: ``accepts(value)``, and the words that say it in the message."""

    expected: str
    accepts: Callable[[Any], bool]


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


PositiveInt = Annotated[int, Rule("an integer > 0", lambda v: _int(v) and v > 0)]
Count = Annotated[int, Rule("an integer >= 0", lambda v: _int(v) and v >= 0)]
PositiveNumber = Annotated[float, Rule("a finite number > 0", lambda v: _number(v) and v > 0)]
Probability = Annotated[float, Rule("a number in (0, 1)", lambda v: _number(v) and 0 < v < 1)]
Text = Annotated[str, Rule("a string", lambda v: isinstance(v, str))]
Sha256 = Annotated[str, Rule("64 hex digits (a SHA-256)", lambda v: isinstance(v, str) and bool(re.fullmatch(
    r"[0-9a-f]{64}", v)))]  # fmt: skip
Options = Annotated[dict, Rule("a JSON object of options", lambda v: isinstance(v, dict))]
Tensors = Annotated[dict, Rule("a state dict (parameter names to tensors)", lambda v: isinstance(v, dict))]
IntList = Annotated[list, Rule("a list of integers > 0", lambda v: isinstance(v, list) and all(
    _int(i) and i > 0 for i in v))]  # fmt: skip
TextList = Annotated[list, Rule("a list of strings", lambda v: isinstance(v, list) and all(
    isinstance(i, str) for i in v))]  # fmt: skip


class Provenance(TypedDict, total=False):
    """What describes the run that wrote a results file (recorded, never compared)."""

    num_classes: PositiveInt
    images: Count
    norm: Text
    noise_norm: Text
    radius: Text
    precision: Text
    subset: Options | None
    noise: Options | None
    certifier: Options | None
    mixer: Options | None
    denoiser: Options | None


class ResultsSidecar(TypedDict, total=False):
    """``<out>.json``: the settings that made the rows, and the provenance of each run that wrote them."""

    provenance: Provenance
    resumed: list[Provenance]
    sigma: PositiveNumber | None
    noise: Text
    noise_option: Options
    n: PositiveInt
    n0: PositiveInt
    alpha: Probability
    seed: Count
    certifier: Text
    certifier_option: Options
    mixer_option: Options
    certifies: Text
    model_sha256: Text
    denoiser: Options | None


class DataIdentity(TypedDict):
    """The size and labels of the data set per-image results belong to (``sources.data.data_identity``)."""

    images: Count
    labels_sha256: Sha256


class _Votes(TypedDict):
    n: PositiveInt
    num_classes: PositiveInt
    data_identity: DataIdentity


class ConfidenceSidecar(ResultsSidecar, _Votes, total=False):
    """The sidecar of a ``predict-confidence`` votes file (CAT-RS's p_b): what ties the votes to a data set; ``n``,
    ``num_classes`` and ``data_identity`` are required."""


class _DnCNNWeights(TypedDict):
    format: Text
    state_dict: Tensors


class DnCNNFile(_DnCNNWeights, total=False):
    """``denoiser.pt`` as ``rs-plugins train-denoiser`` writes it (``format: "rs-plugins dncnn"``; ``format`` and
    ``state_dict`` are required)."""

    sigma: PositiveNumber | None
    objective: Text | None
    channels: PositiveInt
    depth: PositiveInt
    width: PositiveInt
    epochs: PositiveInt | None


class DiffusersUNetConfig(TypedDict, total=False):
    """The fields of a diffusers ``UNet2DModel`` ``config.json`` the diffusion denoiser relies on."""

    in_channels: PositiveInt
    out_channels: PositiveInt
    block_out_channels: IntList
    layers_per_block: PositiveInt
    norm_num_groups: PositiveInt
    down_block_types: TextList
    up_block_types: TextList


class DiffusersSchedulerConfig(TypedDict, total=False):
    """The fields of a diffusers ``DDPMScheduler`` ``scheduler_config.json`` the diffusion denoiser relies on."""

    num_train_timesteps: PositiveInt
    beta_start: PositiveNumber
    beta_end: PositiveNumber
    beta_schedule: Text
    prediction_type: Text
    trained_betas: Annotated[list, Rule("a list of numbers", lambda v: isinstance(v, list) and all(
        _number(b) for b in v))] | None  # fmt: skip


def check_record(record: Any, schema: type, where: str, error: type[Exception] = ResultsFileError) -> dict:
    """``record`` if it fits ``schema``, else ``error`` with one line: ``where`` (the file), the field, what it
    holds and what was expected. Returns the record, so a reader can write ``check_record(json.load(f), ...)``."""
    _check(record, schema, "", where, error)
    return record


def _check(value: Any, hint: Any, field: str, where: str, error: type[Exception]) -> None:
    """Raise ``error`` unless ``value`` fits ``hint``: a TypedDict, a ``Rule``, ``X | None``, ``list[X]`` or a type."""
    if isinstance(hint, type) and issubclass(hint, dict) and hasattr(hint, "__required_keys__"):
        if not isinstance(value, dict):
            _fail(value, field, _expected(hint), where, error)
        hints = get_type_hints(hint, include_extras=True)
        for key, item in value.items():
            if key in hints:
                _check(item, hints[key], _name(field, key), where, error)
        for key in sorted(hint.__required_keys__ - value.keys()):
            raise error(f"{where}: field {_name(field, key)!r} is missing; expected {_expected(hints[key])}")
        return
    origin = get_origin(hint)
    if origin is Annotated:
        base, rule = get_args(hint)[0], next((a for a in get_args(hint)[1:] if isinstance(a, Rule)), None)
        if rule is not None and not rule.accepts(value):
            _fail(value, field, rule.expected, where, error)
        if rule is None:
            _check(value, base, field, where, error)
        return
    if origin is Union or type(hint).__name__ == "UnionType":
        options = get_args(hint)
        if value is None and type(None) in options:
            return
        fits = [o for o in options if o is not type(None)]
        for option in fits:
            try:
                _check(value, option, field, where, error)
                return
            except error:
                if len(fits) == 1 and get_origin(option) is not Annotated:  # a nested record: its own message
                    raise
        _fail(value, field, _expected(hint), where, error)
    if origin is list:
        if not isinstance(value, list):
            _fail(value, field, f"a list, each {_expected(get_args(hint)[0])}", where, error)
        for i, item in enumerate(value):
            _check(item, get_args(hint)[0], f"{field}[{i}]", where, error)
        return
    if isinstance(hint, type) and not isinstance(value, hint):
        _fail(value, field, hint.__name__, where, error)


def _name(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def _expected(hint: Any) -> str:
    """The words for what ``hint`` accepts."""
    origin = get_origin(hint)
    if origin is Annotated:
        rule = next((a for a in get_args(hint)[1:] if isinstance(a, Rule)), None)
        return rule.expected if rule else _expected(get_args(hint)[0])
    if origin is Union or type(hint).__name__ == "UnionType":
        words = [_expected(o) for o in get_args(hint) if o is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in get_args(hint) else "")
    if isinstance(hint, type) and hasattr(hint, "__required_keys__"):
        fields = ", ".join(sorted(hint.__required_keys__))
        return f"a JSON object with {fields}" if fields else "a JSON object"
    return getattr(hint, "__name__", str(hint))


def _fail(value: Any, field: str, expected: str, where: str, error: type[Exception]) -> None:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise error(f"{where}: field {field!r} is {shown}; expected {expected}" if field else
                f"{where} holds {shown}; expected {expected}")  # fmt: skip
