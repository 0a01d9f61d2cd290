"""Checks at the boundary, shared by every command and public function: numbers, labels, logits, noise and
option keys (files and paths: ``file_checks``).

Each check raises ``ValueError`` (or an ``RsPluginError``) whose message names the option or argument, the
value, and what is accepted, so the CLI can print it as one line. The argparse types here name their option
through argparse itself ("argument --sigma: must be a finite number > 0; got inf").
"""

from __future__ import annotations

import argparse
import inspect
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .errors import PluginBuildError
from .results.provenance import describe

if TYPE_CHECKING:
    from torch import Tensor, nn

MAX_SEED = 2**63 - 1
# -- numbers -------------------------------------------------------------------------------------------------


def check_number(
    name: str,
    value: object,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
) -> float:
    """``value`` as a finite float within the bounds, or a ValueError naming ``name``.

    Strings, booleans, None, arrays and tensors with more than one element are refused, so ``alpha='0.01'``
    fails here and not deep inside a comparison.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    bounds = [f"> {above:g}" if above is not None else "", f">= {at_least:g}" if at_least is not None else ""]
    bounds.append(f"< {below:g}" if below is not None else "")
    wanted = "a finite number" + (" " + " and ".join(b for b in bounds if b) if any(bounds) else "")
    if above is not None and below is not None:
        wanted = f"a finite number in ({above:g}, {below:g})"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {wanted}; got {value!r} ({type(value).__name__})")
    number = float(value)
    if (
        not math.isfinite(number)
        or (above is not None and not number > above)
        or (at_least is not None and not number >= at_least)
        or (below is not None and not number < below)
    ):
        raise ValueError(f"{name} must be {wanted}; got {value!r}")
    return number


def check_integer(name: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum], or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {wanted}; got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}; got {value!r}")
    return int(value)


def _argparse_type(check, **bounds):
    """An argparse ``type=`` that parses the text and applies ``check``; argparse prefixes the option's name."""

    def parse(text: str):
        try:
            value = int(text) if check is check_integer else float(text)
        except ValueError:
            kind = "an integer" if check is check_integer else "a number"
            raise argparse.ArgumentTypeError(f"must be {kind}; got {text!r}") from None
        try:
            return check("value", value, **bounds)
        except ValueError as err:
            wanted = str(err).removeprefix("value ").rpartition("; got ")[0]
            raise argparse.ArgumentTypeError(f"{wanted}; got {text}") from None

    return parse


positive_int = _argparse_type(check_integer, minimum=1)
nonnegative_int = _argparse_type(check_integer, minimum=0)
seed = _argparse_type(check_integer, minimum=0, maximum=MAX_SEED)
positive_float = _argparse_type(check_number, above=0)
nonnegative_float = _argparse_type(check_number, at_least=0)
probability = _argparse_type(check_number, above=0, below=1)


# -- tensors -------------------------------------------------------------------------------------------------


def check_tensor(name: str, value: object) -> Tensor:
    """``value`` if it is a torch.Tensor; numpy arrays and lists get the conversion to use."""
    if isinstance(value, torch.Tensor):
        return value
    hint = " (convert with torch.from_numpy(x).float())" if type(value).__module__ == "numpy" else ""
    raise ValueError(f"{name} must be a torch.Tensor; got {type(value).__name__}{hint}")


def check_labels(
    labels: Tensor | list[int], num_classes: int, where: str, indices: Sequence[int] | None = None
) -> None:
    """Refuse labels outside [0, num_classes): scoring them would silently count wrong results.

    Args:
        labels: integer labels.
        num_classes: the number of logits the model returns.
        where: how the message names their origin, e.g. ``"--data"``.
        indices: the data-set index of each label, for the message; else its position is given.
    """
    labels = torch.as_tensor(labels).flatten()
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        label = int(labels[first])
        which = f"of image {indices[first]}" if indices is not None else f"(position {first})"
        note = " (-1 is the abstention value, never a class)" if label == -1 else ""
        raise ValueError(
            f"{where}: label {label} {which} is outside 0..{num_classes - 1}, the classes of a model "
            f"with {num_classes} logits{note}; labels must be integers in 0..{num_classes - 1} for this "
            f"{num_classes}-class model"
        )


def check_input_shape(model: nn.Module, shape: Sequence[int], where: str = "--data images") -> None:
    """Refuse images whose (C, H, W) differ from what a network in ``model`` declares as its ``input_shape``.

    The built-in nets declare theirs (None for any size); a model declaring none is not checked here.
    """
    for module in model.modules():
        declared = getattr(module, "input_shape", None)
        if not isinstance(declared, tuple) or len(declared) != len(shape):
            continue
        if any(want is not None and want != got for want, got in zip(declared, shape)):
            name = describe(model, describe(module, type(module).__name__))
            text = "x".join("any" if d is None else str(d) for d in declared)
            found = "x".join(map(str, shape))
            raise ValueError(
                f"{where} have shape {found} (CxHxW), but model {name} takes {text}; use data of that shape, or a "
                f"network made for {found} images (SmallCNN: --model-kwargs '{{\"in_channels\": {shape[0]}}}')"
            )


def check_logits(logits: Tensor, model: object, count: int) -> None:
    """Refuse a model output that is not logits of shape (count, K >= 2); see ``check_finite_logits``."""
    name = describe(model, type(model).__name__)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != count:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        msg = f"model {name} must return logits of shape (batch, num_classes); for {count} inputs got {got}"
        raise ValueError(msg)
    if logits.shape[1] < 2:
        raise ValueError(f"model {name} must return at least 2 class scores; got {logits.shape[1]}")


def check_finite_logits(all_finite: Tensor | bool, model: object) -> None:
    """Refuse NaN or infinite logits: argmax would count them as class 0 and certify a meaningless answer.

    ``all_finite`` is ``torch.isfinite(logits).all()``, possibly and-ed over several passes on the device so
    that checking costs one synchronisation per call, not one per pass.
    """
    if not bool(all_finite):
        name = describe(model, type(model).__name__)
        raise ValueError(
            f"model {name} returned non-finite logits (NaN or inf) on noisy inputs; its predictions would be "
            "meaningless, so nothing is certified. A model must return finite logits for images in [0, 1] (check "
            "the weights, e.g. a diverged checkpoint)"
        )


def check_certificates(certificates: object, count: int, num_classes: int, certifier: object) -> None:
    """A certifier's answer for ``count`` images: one Certificate each, a class of the model or -1 (abstain),
    a finite radius >= 0 that is 0 when abstaining, and a sample count (or None). The message names the plugin that
    built the certifier."""
    name = describe(certifier, type(certifier).__name__)
    items = list(certificates) if isinstance(certificates, (list, tuple)) else None
    problem = ""
    if items is None or len(items) != count:
        got = len(items) if items is not None else type(certificates).__name__
        problem = f"returned {got} certificates for {count} images"
    else:
        for c in items:
            prediction, radius = getattr(c, "prediction", None), getattr(c, "radius", None)
            if not isinstance(prediction, numbers.Integral) or not -1 <= prediction < num_classes:
                problem = f"returned prediction {prediction!r}, not -1 or a class 0..{num_classes - 1}"
            elif not isinstance(radius, numbers.Real) or not math.isfinite(radius) or radius < 0:
                problem = f"returned radius {radius!r}, not a finite number >= 0"
            elif prediction == -1 and radius != 0:
                problem = f"returned radius {radius!r} for an abstention (must be 0)"
            elif getattr(c, "samples", None) is not None and not (
                isinstance(c.samples, numbers.Integral) and c.samples >= 0
            ):
                problem = f"returned samples {c.samples!r}, not None or a count >= 0"
            elif not _counts_fit(getattr(c, "counts", None), num_classes):
                problem = f"returned counts that are not a Counts of {num_classes} votes per pass"
            if problem:
                break
    if problem:
        raise PluginBuildError(f"{name} broke the certifier contract: certify() {problem}")


def _counts_fit(counts: object, num_classes: int) -> bool:
    """None, or a ``Counts`` whose vote vectors have one whole count >= 0 per class and whose looks are
    (samples, votes) pairs: what the counts log can write and read back."""
    from .types import Counts

    if counts is None:
        return True
    if not isinstance(counts, Counts):
        return False
    try:
        vectors = [counts.estimation, *([counts.selection] if counts.selection is not None else [])]
        vectors += [votes for _, votes in counts.looks]
        return all(
            len(v) == num_classes and all(isinstance(k, numbers.Integral) and k >= 0 for k in v) for v in vectors
        )
    except (TypeError, ValueError):  # a look that is not a (samples, votes) pair, votes that are not a sequence
        return False


def check_noise_output(noisy: object, x: Tensor, noise: object, *, values: bool) -> None:
    """The noise sampler contract: ``sample(x)`` keeps shape, dtype and device, and (``values``) is finite.

    The message names the plugin that built the sampler, since the fault is the plugin's, not the user's.
    """
    name = describe(noise, type(noise).__name__)
    if not isinstance(noisy, torch.Tensor):
        problem = f"returned a {type(noisy).__name__}"
    elif noisy.shape != x.shape:
        problem = f"returned shape {tuple(noisy.shape)} for input shape {tuple(x.shape)}"
    elif noisy.dtype != x.dtype:
        problem = f"returned dtype {noisy.dtype} for input dtype {x.dtype}"
    elif noisy.device != x.device:
        problem = f"returned a tensor on {noisy.device} for an input on {x.device}"
    elif values and not bool(torch.isfinite(noisy).all()):
        problem = "returned NaN or infinite values"
    else:
        return
    msg = f"{name} broke the noise sampler contract: sample() {problem}; it must return x plus noise, same "
    raise PluginBuildError(msg + "shape, dtype and device, finite")


class CheckedNoise:
    """A noise sampler whose every ``sample`` is checked against the contract (shape, dtype, device: free) and
    whose first ``sample`` is also checked for finite values, for the places where plugin code (a training loss)
    calls the sampler; everything else is the wrapped sampler's."""

    def __init__(self, noise: object) -> None:
        self._noise = noise
        self._values_checked = False

    def sample(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        noisy = self._noise.sample(x, generator=generator)
        check_noise_output(noisy, x, self._noise, values=not self._values_checked)
        self._values_checked = True
        return noisy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._noise, name)

    def __repr__(self) -> str:
        return repr(self._noise)


def check_images(x: Tensor, what: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` is a batch of float images in [0, 1], the range noise is added in.

    Args:
        x: the images to check.
        what: how the message names their origin, e.g. ``"--data"`` or ``"x"``.
    """
    expected = "expected float images (N, C, H, W) with values in [0, 1]; scale uint8 images by 1/255"
    check_tensor(what, x)
    if not x.dtype.is_floating_point or x.dim() != 4:
        msg = f"{what}: got images of shape {tuple(x.shape)} and dtype {x.dtype}; {expected}"
        raise ValueError(msg)
    if x.numel() == 0:
        msg = f"{what}: got no images (shape {tuple(x.shape)}); {expected}"
        raise ValueError(msg)
    lo, hi = x.min().item(), x.max().item()
    if not (lo >= 0 and hi <= 1):  # also rejects NaN
        msg = f"{what}: got values in [{lo:g}, {hi:g}] (shape {tuple(x.shape)}, dtype {x.dtype}); {expected}"
        raise ValueError(msg)


# -- options -------------------------------------------------------------------------------------------------


def accepts_keyword(function: Any, keyword: str) -> bool:
    """Whether ``function`` names ``keyword`` as a parameter (``**kwargs`` alone does not count: it may forward), so
    an optional argument of a hook's method (e.g. a certifier's ``labels``) is passed only where it is taken."""
    try:
        return keyword in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def accepted_options(build: Any, skip: tuple[str, ...] = ()) -> list[str] | None:
    """The keyword options a factory takes, or None when it takes ``**kwargs`` (anything) or has no signature."""
    try:
        parameters = inspect.signature(build).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in keyword and p.name not in ("self", *skip)]


def check_option_keys(
    build: Any, options: Mapping[str, Any], *, what: str, flag: str, skip=(), error: type[ValueError] = ValueError
) -> None:
    """Refuse option keys ``build`` does not take, listing the ones it does.

    Args:
        build: the factory (a component spec's ``build`` or a model factory).
        options: the given options.
        what: the component, e.g. ``"noise sampler 'gaussian'"``.
        flag: the option that carried them, e.g. ``"--noise-option"``.
        skip: parameters set by the host, not by the user (e.g. ``sigma``).
        error: the ValueError subclass to raise.
    """
    accepted = accepted_options(build, skip)
    if accepted is None:
        return
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        listed = ", ".join(accepted) or "none"
        raise error(f"{flag} {', '.join(unknown)}: not an option of {what}; accepted: {listed}")
