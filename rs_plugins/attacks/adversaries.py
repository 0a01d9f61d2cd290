"""The adversaries of ``rs-plugins attack``: any torchattacks class by name or AutoAttack's standard suite, with
their options checked against the class's signature and the norm and radius each one takes.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import io
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..train.smoothed_pgd import import_torchattacks

if TYPE_CHECKING:
    from torch import Tensor, nn


NORMS = ("Linf", "L2")
AUTOATTACK_STANDARD = "autoattack-standard"
"""The ``autoattack`` package's standard version, the protocol RobustBench's leaderboard reports."""

# The threat model of each torchattacks 3.5.1 class (ecosystem spec, section 3.2).
LINF_ATTACKS = frozenset(
    "FGSM BIM RFGSM PGD EOTPGD FFGSM TPGD MIFGSM UPGD DIFGSM TIFGSM Jitter NIFGSM PGDRS SINIFGSM VMIFGSM VNIFGSM "
    "SPSA PIFGSM PIFGSMPP".split()
)
L2_ATTACKS = frozenset("PGDL2 PGDRSL2 CW DeepFool".split())
NORM_OPTION_ATTACKS = frozenset("APGD APGDT FAB Square AutoAttack".split())
"""Attacks that take ``norm="Linf"`` or ``norm="L2"``; ``--norm`` is passed on."""
EOT_ATTACKS = frozenset("PGD PGDL2 FGSM BIM MIFGSM EOTPGD APGD APGDT".split())
"""Gradient attacks that stay meaningful on the soft smoothed classifier (``--sigma``)."""
WRAPPERS = frozenset({"MultiAttack", "LGV"})
EPS_PARAMETERS = ("eps", "max_epsilon")  # PIFGSM and PIFGSMPP call their radius max_epsilon


def _torchattacks():
    return import_torchattacks("attack", "rs-plugins attack runs its adversaries")


def attack_classes() -> dict[str, type]:
    """Every torchattacks attack class by its name (``PGD``, ``PGDL2``, ...), wrappers left out."""
    ta = _torchattacks()
    found = {}
    for name in dir(ta):
        cls = getattr(ta, name)
        if inspect.isclass(cls) and issubclass(cls, ta.attack.Attack) and cls is not ta.attack.Attack:
            if name not in WRAPPERS:
                found[name] = cls
    return found


def _signature(cls: type) -> dict[str, Any]:
    """Keyword parameters of ``cls(model, ...)`` and their defaults."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.name not in ("self", "model")}


@dataclass(frozen=True)
class Adversary:
    """A validated attack: which one, in which norm, with which options.

    Build it with ``make_adversary``. ``bounded`` is False for minimal-perturbation attacks (CW, DeepFool), which
    take no radius: they run once per image, and at each eps their point counts only if it is within eps (else
    the clean image is the point at that eps).
    """

    name: str
    norm: str
    options: dict[str, Any] = field(default_factory=dict)
    eps_parameter: str | None = "eps"

    @property
    def bounded(self) -> bool:
        return self.eps_parameter is not None

    def perturbation(self, adv: Tensor, x: Tensor) -> Tensor:
        """||adv - x|| per image in this adversary's norm. Shape: (B, ...) -> (B,)."""
        delta = (adv - x).flatten(1).double()
        return delta.abs().amax(dim=1) if self.norm == "Linf" else delta.norm(dim=1)

    def run(self, target: nn.Module, x: Tensor, y: Tensor, eps: float | None, *, num_classes: int, seed: int) -> Tensor:
        """The adversarial images for ``x`` (B, C, H, W) in [0, 1] with labels ``y``; ``eps`` None when unbounded."""
        if self.name == AUTOATTACK_STANDARD:
            if num_classes < 10:
                msg = f"--attack {AUTOATTACK_STANDARD} runs APGD-T and FAB-T on 9 target classes and needs a model "
                msg += f"with at least 10 classes; this one has {num_classes}. torchattacks' AutoAttack (--attack "
                raise ValueError(msg + "AutoAttack) takes its class count from the model")
            return _autoattack_standard(target, x, y, eps, norm=self.norm, seed=seed)
        cls = attack_classes()[self.name]
        signature = _signature(cls)
        kwargs = dict(self.options)
        if self.bounded:
            kwargs[self.eps_parameter] = eps
            default_eps = signature[self.eps_parameter]
            # A step size is a fraction of the radius: keep torchattacks' default ratio (PGD 2/255 at 8/255 -> eps/4,
            # PGDL2 0.2 at 1.0 -> eps/5) instead of its absolute default, which only fits its own default eps.
            if "alpha" in signature and "alpha" not in kwargs and default_eps:
                kwargs["alpha"] = signature["alpha"] * eps / default_eps
        if "norm" in signature:
            kwargs["norm"] = self.norm
        if "n_classes" in signature and "n_classes" not in kwargs:
            kwargs["n_classes"] = num_classes
        if "seed" in signature and "seed" not in kwargs:
            kwargs["seed"] = seed
        with contextlib.redirect_stdout(io.StringIO()):  # torchattacks prints when a model has no parameters
            attack = cls(target, **kwargs)
        attack.set_device(x.device)
        adv = attack(x, y)
        return (adv[0] if isinstance(adv, tuple) else adv).detach()


def _autoattack_standard(target: nn.Module, x: Tensor, y: Tensor, eps: float, *, norm: str, seed: int) -> Tensor:
    """``autoattack.AutoAttack(version="standard")``, as ``robustbench.eval.benchmark`` runs it (plus a seed).

    Written for pyautoattack 0.2 (the package robustbench 1.1.1 depends on), whose ``AutoAttack`` takes no
    ``log_path`` and whose ``run_standard_evaluation`` takes ``batch_size`` where the original took ``bs`` and
    returns (images, labels) where the original returned the images.
    """
    from ..sources.models import import_robustbench

    import_robustbench()  # makes pyautoattack importable as autoattack
    from autoattack import AutoAttack

    adversary = AutoAttack(target, norm=norm, eps=eps, version="standard", device=x.device, seed=seed)
    with contextlib.redirect_stdout(io.StringIO()):
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    return x_adv.detach()


def _suggest(name: str, choices: Sequence[str]) -> str:
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.5)
    return f" Did you mean {lower[close[0]]!r}?" if close else ""


def make_adversary(
    name: str, norm: str | None = None, options: dict[str, Any] | None = None, *, smoothed: bool = False
) -> Adversary:
    """Check an attack request before anything runs, and name what is wrong.

    Args:
        name: a torchattacks class, any case (``pgd``, ``PGDL2``, ``apgd``), or ``autoattack-standard``.
        norm: ``Linf`` or ``L2``; None takes the attack's only norm (an error for attacks that have two).
        options: keyword arguments for the class, checked against its signature (``eps`` comes from ``--eps``,
            ``norm`` from ``--norm``).
        smoothed: the target is a smoothed classifier (``--sigma``); only ``EOT_ATTACKS`` are allowed.

    Raises:
        ValueError: naming the option, the value and the accepted values.
    """
    options = dict(options or {})
    if norm is not None and norm not in NORMS:
        matches = [n for n in NORMS if n.lower() == str(norm).lower()]
        if not matches:
            raise ValueError(f"--norm must be one of {', '.join(NORMS)}; got {norm!r}")
        norm = matches[0]
    if name.lower() == AUTOATTACK_STANDARD:
        if options:
            raise ValueError(f"--attack-option: {AUTOATTACK_STANDARD} takes no options; got {', '.join(options)}")
        if smoothed:
            msg = f"--attack {AUTOATTACK_STANDARD} attacks deterministic models (RobustBench's rule) and cannot take "
            raise ValueError(msg + f"--sigma; use one of {', '.join(sorted(EOT_ATTACKS))}")
        if norm is None:
            raise ValueError(f"--attack {AUTOATTACK_STANDARD} needs --norm Linf or --norm L2")
        return Adversary(AUTOATTACK_STANDARD, norm)
    classes = attack_classes()
    by_lower = {key.lower(): key for key in classes}
    if name.lower() not in by_lower:
        hint = _suggest(name, [*classes, AUTOATTACK_STANDARD])
        accepted = ", ".join([*sorted(classes), AUTOATTACK_STANDARD])
        raise ValueError(f"--attack: torchattacks has no attack named {name!r}.{hint} Accepted: {accepted}")
    canonical = by_lower[name.lower()]
    norms = (
        ("Linf",)
        if canonical in LINF_ATTACKS
        else ("L2",)
        if canonical in L2_ATTACKS
        else NORMS
        if canonical in NORM_OPTION_ATTACKS
        else ()
    )
    if not norms:
        msg = f"--attack {canonical} is not an Linf or L2 attack (l0, l1 or no norm); rs-plugins attack measures "
        raise ValueError(msg + "Linf and L2 robustness")
    if norm is None:
        if len(norms) > 1:
            raise ValueError(f"--attack {canonical} needs --norm Linf or --norm L2")
        norm = norms[0]
    if norm not in norms:
        msg = f"--norm {norm} is not supported by --attack {canonical}, which attacks {' and '.join(norms)} only"
        others = sorted(a for a in (LINF_ATTACKS if norm == "Linf" else L2_ATTACKS) | NORM_OPTION_ATTACKS)
        raise ValueError(f"{msg}; {norm} attacks: {', '.join(others)}")
    if smoothed and canonical not in EOT_ATTACKS:
        msg = f"--attack {canonical} cannot attack a smoothed classifier (--sigma) by expectation over noise; "
        raise ValueError(msg + f"attacks that can: {', '.join(sorted(EOT_ATTACKS))}")
    signature = _signature(classes[canonical])
    eps_parameter = next((p for p in EPS_PARAMETERS if p in signature), None)
    reserved = {eps_parameter: "--eps", "norm": "--norm"}
    accepted = [k for k in signature if k not in reserved]
    for key in options:
        if key in reserved:
            raise ValueError(f"--attack-option {key}: set it with {reserved[key]}, not as an option")
        if key not in signature:
            hint = _suggest(key, accepted)
            msg = f"--attack-option {key}: {canonical} takes no option {key!r}.{hint} Accepted: "
            raise ValueError(msg + (", ".join(f"{k}={signature[k]!r}" for k in accepted) or "(none)"))
    return Adversary(canonical, norm, options, eps_parameter)


def check_eps(eps: Sequence[float]) -> list[float]:
    """``eps`` as a list of distinct finite numbers >= 0, in the order given, or a ValueError naming ``--eps``."""
    values = list(eps) if isinstance(eps, Sequence) else [eps]
    if not values:
        raise ValueError("--eps needs at least one radius")
    for value in values:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise ValueError(f"--eps must be finite numbers >= 0; got {value!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"--eps lists a radius twice: {values}")
    return [float(v) for v in values]
