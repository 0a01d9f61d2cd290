"""Empirical robustness: torchattacks or AutoAttack against a base, smoothed or mixed classifier, per (image, eps).

``attack_dataset`` is the resumable runner behind ``rs-plugins attack`` (one ``AttackRow`` per image and eps,
on disk before the next group starts); ``attack`` does the same for tensors in a notebook. With a noise sampler
the target is the smoothed classifier: the attack runs on its soft version with m noise draws per image
(SmoothAdv-PGD's expectation over transformation, Salman et al. 2019), and both the clean image and the
adversarial point are judged by Cohen et al.'s PREDICT, so robust accuracy is the smoothed classifier's.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import io
import json
import math
import numbers
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from .attacks import EOTSoftClassifier, attack_mode, import_torchattacks
from .report import ATTACK_COLUMNS, AttackRow, ResultsFile, Row
from .runner import duration, image_generator, passes_per_image
from .smoothing import check_images, check_sampling, cohen_predict
from .types import ABSTAIN
from .validation import check_finite_logits, check_labels, check_logits

if TYPE_CHECKING:
    from torch import Tensor, nn
    from torch.utils.data import Dataset

    from .types import NoiseSampler

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
    from .models import import_robustbench

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


def _generator(seed: int, idx: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator for one image and one purpose (1: the attack's noise draws, 2: PREDICT at the adversary);
    stream 0 is ``runner.image_generator``, so clean PREDICT equals ``rs-plugins predict``."""
    if stream == 0:
        return image_generator(seed, idx, device)
    state = np.random.SeedSequence([seed, idx, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def _group_seed(seed: int, first: int, eps: float | None) -> int:
    """The global RNG seed for one attack call: torchattacks draws random starts from it."""
    bits = 0 if eps is None else int.from_bytes(struct.pack("<d", eps), "little")
    return int(np.random.SeedSequence([seed, first, bits]).generate_state(1, np.uint32)[0])


@dataclass
class Smoothing:
    """What turns the base model into the smoothed target: the noise, m draws for the attack, PREDICT's n, alpha."""

    noise: NoiseSampler
    m: int = 16
    n: int = 10_000
    alpha: float = 0.001


class _Judge:
    """Predictions and attacks on one group of images, for the base or the smoothed classifier."""

    def __init__(self, model, smoothing: Smoothing | None, *, batch_size: int, seed: int, device) -> None:
        self.model, self.smoothing, self.batch_size, self.seed, self.device = model, smoothing, batch_size, seed, device

    def predict(self, x: Tensor, chunk: Sequence[int], stream: int) -> list[int]:
        if self.smoothing is None:
            with torch.no_grad():
                logits = self.model(x)
            check_logits(logits, self.model, len(x))
            check_finite_logits(torch.isfinite(logits).all(), self.model)  # argmax of NaN would be class 0
            return logits.argmax(1).tolist()
        s = self.smoothing
        generators = [_generator(self.seed, i, stream, self.device) for i in chunk]
        return cohen_predict(
            self.model, x, s.noise, n=s.n, alpha=s.alpha, batch_size=self.batch_size, generator=generators
        )

    def target(self, x: Tensor, chunk: Sequence[int]) -> nn.Module:
        if self.smoothing is None:
            return self.model
        s = self.smoothing
        draws = []
        for i in chunk:
            zeros = torch.zeros((s.m, *x.shape[1:]), device=x.device, dtype=x.dtype)
            draws.append(s.noise.sample(zeros, generator=_generator(self.seed, i, 1, self.device)))
        return EOTSoftClassifier(self.model, torch.stack(draws, dim=1), s.noise).eval()  # (m, B, C, H, W)


def attack_group_size(batch_size: int, smoothing: Smoothing | None) -> int:
    """Images per attack call: ``batch_size``, or ``batch_size // m`` for a smoothed target (m draws per image)."""
    return max(1, batch_size // (smoothing.m if smoothing else 1))


def attack_keys(
    indices: Sequence[int], eps: Sequence[float], below: dict[int, float] | None = None
) -> set[tuple[int, float]]:
    """The (index, eps) pairs a run attacks: every pair, or with ``below`` only radii under each image's."""
    return {(i, float(e)) for i in indices for e in eps if below is None or e < below.get(i, 0.0)}


def _num_classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        logits = model(x[:1])
    check_logits(logits, model, 1)
    return int(logits.shape[1])


def attack_dataset(
    model: nn.Module,
    dataset: Dataset,
    adversary: Adversary,
    results: ResultsFile,
    *,
    indices: Sequence[int],
    eps: Sequence[float],
    smoothing: Smoothing | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    targets: dict[int, int] | None = None,
    below: dict[int, float] | None = None,
    announce: Callable[[str], None] | None = None,
) -> list[AttackRow]:
    """Attack ``dataset[i]`` at every radius in ``eps`` for each i in ``indices``; returns all finished rows.

    Images are attacked in fixed groups of ``indices`` (``attack_group_size``: ``batch_size`` images, or
    ``batch_size // m`` when smoothed), each group and radius under its own seed drawn from (seed, first index,
    eps), so a resumed run recomputes an unfinished group exactly as an uninterrupted run did and appends only the
    rows it lacks. Per-image seeds cannot replace them: torchattacks draws a whole batch's random starts from the
    global generator at once. A sharded run (``runner.run_sharded`` with ``group=attack_group_size(...)``)
    therefore gives each process whole groups of the full index list, all their images included, and its share
    cut here again yields the same groups (only the list's last group may be short): each group has the same
    images, batch and seed whatever the process count, so the rows equal a one-process run's.

    Args:
        targets: the class to attack per index instead of the label (the certified class in a cross-check).
        below: attack index i only at radii strictly below ``below[i]`` (its certified radius); others are skipped.
        announce: gets one line once the first group is done (an attack's cost is known only by running it): the
            rows to do, what each costs when smoothed, and the time per row and for the run from that group.
    """
    device = torch.device(device)
    model = model.to(device).eval()  # the CLI has already wrapped it for --precision etc. (execution.prepare_model)
    eps = check_eps(eps)
    if smoothing is not None:
        check_sampling(n=smoothing.n, alpha=smoothing.alpha, batch_size=batch_size)
    judge = _Judge(model, smoothing, batch_size=batch_size, seed=seed, device=device)
    group = attack_group_size(batch_size, smoothing)
    wanted = attack_keys(indices, eps, below)
    groups = [indices[start : start + group] for start in range(0, len(indices), group)]
    pending = len(wanted - results.done)
    with tqdm(total=len(wanted), desc=f"attack {adversary.name}", unit="row", disable=not progress) as bar:
        bar.update(len(wanted & results.done))
        for chunk in groups:
            todo = [e for e in eps if any((i, e) in wanted and (i, e) not in results.done for i in chunk)]
            if todo:
                start, before = time.perf_counter(), len(results.done)
                _attack_group(judge, dataset, adversary, results, chunk, todo, wanted, targets, bar)
                if announce is not None:
                    per_row = (time.perf_counter() - start) / max(1, len(results.done) - before)
                    announce(attack_plan(adversary, smoothing, pending, len(eps), group, batch_size, per_row, device))
                    announce = None
    return [row for row in results.rows if row.key in wanted]


def attack_plan(
    adversary, smoothing, rows: int, radii: int, group: int, batch_size: int, per_row: float, device
) -> str:
    """The line ``attack_dataset`` announces: rows, what a smoothed row samples, and the time from the first group."""
    per_image = f"{radii} radius" if radii == 1 else f"{radii} radii"
    line = f"attack {adversary.name}: {rows} rows to do ({per_image} per image) in groups of up to {group} images"
    if smoothing is not None:
        passes = passes_per_image([smoothing.n], batch_size)
        line += (
            f"; smoothed: {smoothing.m} noise draws per image in each attack step, PREDICT n = {smoothing.n} on the "
            f"clean image and on each attacked one ({passes:.3g} passes of {batch_size} each)"
        )
    return line + (
        f"; the first group took {duration(per_row)} per row: about {duration(per_row * rows)} for the {rows} rows "
        f"on {torch.device(device).type}"
    )


def _attack_group(judge, dataset, adversary, results, chunk, todo, wanted, targets, bar) -> None:
    items = [dataset[i] for i in chunk]
    x = torch.stack([torch.as_tensor(item[0]) for item in items]).to(judge.device)
    check_images(x, "--data images")
    labels = [int(item[1]) for item in items]
    num_classes = _num_classes(judge.model, x)
    check_labels(labels, num_classes, "--data", indices=chunk)
    attacked = [label if targets is None else targets.get(i, label) for i, label in zip(chunk, labels)]
    check_labels(attacked, num_classes, "--certified predictions", indices=chunk)
    clean = judge.predict(x, chunk, stream=0)
    unbounded: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}  # a minimal-perturbation attack runs once
    for e in todo:
        rows = [j for j, i in enumerate(chunk) if (i, e) in wanted]  # the same set on every run: a fixed batch
        start = time.perf_counter()
        if e == 0:
            adv = x[rows]
        else:
            sub = [chunk[j] for j in rows]
            y = torch.tensor([attacked[j] for j in rows], device=x.device)
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(_group_seed(judge.seed, chunk[0], e if adversary.bounded else None))
                target = judge.target(x[rows], sub)
                with attack_mode(judge.model), torch.enable_grad():
                    if adversary.bounded:
                        adv = adversary.run(target, x[rows], y, e, num_classes=num_classes, seed=judge.seed)
                    else:
                        if tuple(rows) not in unbounded:
                            found = adversary.run(target, x[rows], y, None, num_classes=num_classes, seed=judge.seed)
                            unbounded[tuple(rows)] = (found, adversary.perturbation(found, x[rows]))
                        found, size = unbounded[tuple(rows)]
                        inside = (size <= e).view(-1, *[1] * (x.dim() - 1))
                        adv = torch.where(inside, found, x[rows])
        sizes = adversary.perturbation(adv, x[rows]).tolist()
        adv_predictions = judge.predict(adv, [chunk[j] for j in rows], stream=2)
        seconds = (time.perf_counter() - start) / max(1, len(rows))
        for j, size, adv_prediction in zip(rows, sizes, adv_predictions):
            i = chunk[j]
            if (i, e) not in results.done:
                results.append(AttackRow(i, labels[j], e, clean[j], adv_prediction, size, seconds))
                bar.update(1)


# -- tables, plots and the cross-check ------------------------------------------------------------------------


def summarize_attack(rows: Sequence[AttackRow]) -> dict[str, Any]:
    """Per eps: images, clean and robust accuracy, abstentions and the mean perturbation; JSON-ready.

    Robust means correct on the clean image and at the adversarial point, so robust accuracy never exceeds clean
    accuracy; an abstention (-1) is never correct.
    """
    per_eps: dict[str, Any] = {}
    for e in sorted({row.eps for row in rows}):
        at = [row for row in rows if row.eps == e]
        per_eps[f"{e:g}"] = {
            "eps": e,
            "images": len(at),
            "clean_accuracy": sum(row.correct for row in at) / len(at),
            "robust_accuracy": sum(row.robust for row in at) / len(at),
            "clean_abstained": sum(row.predict == ABSTAIN for row in at),
            "adv_abstained": sum(row.adv_predict == ABSTAIN for row in at),
            "mean_perturbation": sum(row.perturbation for row in at) / len(at),
        }
    seconds = sum(row.seconds for row in rows) / len(rows) if rows else 0.0
    return {"rows": len(rows), "per_eps": per_eps, "mean_seconds": seconds}


def format_attack_table(rows: Sequence[AttackRow], title: str = "") -> str:
    """Plain-ASCII table of clean and robust accuracy (percent) per eps, for a terminal."""
    per_eps = summarize_attack(rows)["per_eps"]
    if not per_eps:
        return (f"{title}\n" if title else "") + "no (image, eps) pair to attack\n"
    cells = list(per_eps.items())
    widths = [max(len(k), 6) + 2 for k, _ in cells]
    lines = [title] if title else []
    lines.append("eps            " + "".join(k.rjust(w) for (k, _), w in zip(cells, widths)))
    for label, key in (("clean acc %   ", "clean_accuracy"), ("robust acc %  ", "robust_accuracy")):
        lines.append(label + " " + "".join(f"{100 * v[key]:.1f}".rjust(w) for (_, v), w in zip(cells, widths)))
    lines.append("images         " + "".join(str(v["images"]).rjust(w) for (_, v), w in zip(cells, widths)))
    abstained = sum(v["adv_abstained"] for _, v in cells)
    if abstained:
        lines.append(f"abstentions at the adversarial points: {abstained}")
    return "\n".join(lines) + "\n"


def plot_robust_accuracy(curves: dict[str, Sequence[AttackRow]], path, *, title: str = "", norm: str = "") -> None:
    """Write a PNG of robust accuracy against eps, one line per label (eps = 0 is clean accuracy)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: leave global state alone
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("plot_robust_accuracy() needs at least one curve in `curves`; got none")
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, rows in curves.items():
        per_eps = summarize_attack(rows)["per_eps"].values()
        xs = [v["eps"] for v in per_eps]
        ax.plot(xs, [v["robust_accuracy"] for v in per_eps], marker="o", label=label)
    ax.set(ylim=(0, 1.02), xlabel=f"eps ({norm})" if norm else "eps", ylabel="robust accuracy", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def allowed_breaks(rows: Sequence[AttackRow], certify_alpha: float, predict_alpha: float) -> float:
    """The expected number of breaks if both tests are correct, at most: each attacked image's certificate fails
    with probability <= certify_alpha (one event for all its radii), and each PREDICT at an adversarial point
    errs with probability <= predict_alpha."""
    return len({row.idx for row in rows}) * certify_alpha + len(rows) * predict_alpha


def certified_breaks(rows: Sequence[AttackRow], certified: Sequence[Row]) -> list[dict[str, Any]]:
    """Every attacked (image, eps) with eps below the image's certified radius where PREDICT at the adversarial
    point returned a class other than the certified one; an abstention is not a break.

    With certification at level alpha_c and PREDICT at level alpha_p, each listed pair has probability at most
    alpha_c + alpha_p when both sides are correct, so more breaks than that rate allows point to a bug.
    """
    by_idx = {row.idx: row for row in certified if row.predict != ABSTAIN}
    breaks = []
    for row in rows:
        cert = by_idx.get(row.idx)
        if cert is None or not row.eps < cert.radius:
            continue
        if row.adv_predict not in (cert.predict, ABSTAIN):
            breaks.append(
                {"idx": row.idx, "eps": row.eps, "radius": cert.radius, "certified": cert.predict,
                 "adv_predict": row.adv_predict, "perturbation": row.perturbation}
            )  # fmt: skip
    return breaks


def certified_targets(certified: Sequence[Row]) -> tuple[dict[int, int], dict[int, float]]:
    """(class to attack, radius to stay below) per index, for the images a certify run did not abstain on."""
    kept = [row for row in certified if row.predict != ABSTAIN and row.radius > 0]
    return {row.idx: row.predict for row in kept}, {row.idx: row.radius for row in kept}


def read_certified(path: str | Path, sigma: float, noise: str) -> tuple[list[Row], float | None]:
    """The rows of a certify TSV and its alpha (None if unknown); refused if its settings sidecar (``<path>.json``,
    written by ``rs-plugins certify``) has another sigma or noise."""
    from .report import read_results

    rows = read_results(path)
    sidecar = Path(f"{path}.json")
    stored = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
    for key, value in (("sigma", sigma), ("noise", noise)):
        if key in stored and stored[key] != value:
            raise ValueError(f"--certified {path} was certified with --{key} {stored[key]}; this run has {value}")
    return rows, stored.get("alpha")


def check_certified(dataset: Dataset, certified: Sequence[Row], adversary: Adversary, noise: NoiseSampler) -> None:
    """Refuse a cross-check that cannot hold: another norm than the certificate's, or another data set (a
    certified index beyond the data, or a label that differs)."""
    if adversary.norm.lower() != str(getattr(noise, "norm", "l2")).lower():
        msg = f"--certified radii are {noise.norm} radii of the noise; the attack must use --norm {noise.norm.upper()}"
        raise ValueError(msg + f", not {adversary.norm}")
    for row in certified:
        if not 0 <= row.idx < len(dataset):
            raise ValueError(f"--certified has image {row.idx}, but --data has {len(dataset)} images")
        label = int(dataset[row.idx][1])
        if label != row.label:
            msg = f"--certified says image {row.idx} has label {row.label}, --data says {label}: not the same data"
            raise ValueError(msg)


def report_attack(
    rows: Sequence[AttackRow],
    adversary: Adversary,
    *,
    title: str = "",
    certified: Sequence[Row] | None = None,
    certified_path: str | None = None,
    alphas: tuple[float, float] = (0.001, 0.001),
    plot: str | Path | None = None,
    summary: str | Path | None = None,
    record: dict | None = None,
) -> str:
    """The table (and cross-check) text for a terminal; writes the plot and the JSON summary when given paths.

    ``alphas`` are the certify run's and PREDICT's levels, for the number of breaks chance allows; ``record``
    (the results file's sidecar: settings and provenance) goes into the summary under ``"run"``.
    """
    lines = [format_attack_table(rows, title=title)]
    data = summarize_attack(rows) | {"attack": adversary.name, "norm": adversary.norm}
    if certified is not None:
        breaks = certified_breaks(rows, certified)
        allowed = allowed_breaks(rows, *alphas)
        data["cross_check"] = {"certified": certified_path, "pairs": len(rows), "breaks": breaks}
        data["cross_check"] |= {"certify_alpha": alphas[0], "predict_alpha": alphas[1]}
        data["cross_check"]["expected_breaks_at_most"] = allowed
        lines.append(
            f"cross-check with {certified_path}: {len(rows)} (image, eps < radius) pairs, {len(breaks)} breaks "
            f"(chance allows {allowed:.2g} on average at certify alpha {alphas[0]:g}, PREDICT alpha {alphas[1]:g})"
        )
        lines += [
            f"  BREAK image {b['idx']}: certified {b['certified']} at radius {b['radius']:.4f}, "
            f"PREDICT {b['adv_predict']} at eps {b['eps']:g}"
            for b in breaks
        ]
    if plot and rows:
        plot_robust_accuracy({adversary.name: rows}, plot, title=title, norm=adversary.norm)
        lines.append(f"plot: {plot}")
    if summary:
        if record is not None:
            data["run"] = record
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        Path(summary).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        lines.append(f"summary: {summary}")
    return "\n".join(lines)


# -- Python API -----------------------------------------------------------------------------------------------


class _Rows:
    """In-memory stand-in for ``ResultsFile``: the same ``done``/``append``/``rows``, nothing on disk."""

    def __init__(self) -> None:
        self.rows: list[AttackRow] = []
        self.done: set = set()

    def append(self, row: AttackRow) -> None:
        self.rows.append(row)
        self.done.add(row.key)


@dataclass
class AttackResult:
    """What ``attack`` returns: one row per (image, eps), their summary, and the cross-check's breaks."""

    rows: list[AttackRow]
    summary: dict[str, Any]
    breaks: list[dict[str, Any]] | None = None

    def robust_accuracy(self, eps: float) -> float:
        """Robust accuracy at one of the radii that were run."""
        return self.summary["per_eps"][f"{eps:g}"]["robust_accuracy"]

    def __str__(self) -> str:
        return format_attack_table(self.rows)


def attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | Sequence[int],
    *,
    attack: str = "PGD",
    norm: str | None = None,
    eps: Sequence[float] | float = (8 / 255,),
    options: dict[str, Any] | None = None,
    sigma: float | None = None,
    noise: NoiseSampler | None = None,
    m: int = 16,
    n: int = 10_000,
    alpha: float = 0.001,
    certified: Sequence[Row] | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    out: str | Path | None = None,
    progress: bool = False,
) -> AttackResult:
    """Attack a classifier (base, mixed, or smoothed with ``sigma``/``noise``) on a batch of images; see the
    ``rs-plugins attack`` command, which this mirrors option for option.

    Example::

        result = rs_plugins.attack(model, x, y, attack="PGDL2", eps=[0.25, 0.5], sigma=0.25, n=1000)
        print(result)                       # clean and robust accuracy per eps
        result.robust_accuracy(0.5)

    Args:
        model: (B, C, H, W) in [0, 1] -> (B, K) logits.
        images: (N, C, H, W) float in [0, 1]; ``labels``: N integers in [0, K).
        attack, norm, options: see ``make_adversary``.
        eps: one radius or several, each run on every image.
        sigma, noise: smooth the model with ``noise`` (default Gaussian with ``sigma``); m EOT draws per image
            for the attack, and PREDICT with ``n`` samples at level ``alpha`` to judge.
        certified: rows of a certify run on the same images (row ``idx`` = position in ``images``): attack each
            certified image at the radii below its radius, towards its certified class, and list the breaks.
        out: also write the rows to this TSV (resumable, as the CLI does).

    Shape:
        images: (N, C, H, W); labels: (N,).
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a tensor (N, C, H, W); got {type(images).__name__}")
    check_images(images, "images")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or len(labels) != len(images) or labels.dtype.is_floating_point:
        got = f"shape {tuple(labels.shape)}, dtype {labels.dtype}"
        raise ValueError(f"labels must be {len(images)} integers, one per image; got {got}")
    if sigma is not None and noise is None:
        from .builtin.gaussian import GaussianNoise

        noise = GaussianNoise(sigma)
    if certified is not None and noise is None:
        raise ValueError("certified needs the smoothed classifier: give sigma (or noise)")
    adversary = make_adversary(attack, norm, options, smoothed=noise is not None)
    smoothing = None if noise is None else Smoothing(noise, m=m, n=n, alpha=alpha)
    targets = below = None
    if certified is not None:
        targets, below = certified_targets(certified)
    dataset = TensorDataset(images.detach().cpu(), labels.long().cpu())
    common = dict(
        indices=[i for i in range(len(images)) if targets is None or i in targets],
        eps=[eps] if isinstance(eps, (int, float)) else eps,
        smoothing=smoothing,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        targets=targets,
        below=below,
    )
    if out is None:
        rows = attack_dataset(model, dataset, adversary, _Rows(), **common)
    else:
        settings = {"attack": adversary.name, "norm": adversary.norm, "options": adversary.options, "seed": seed}
        settings |= {"sigma": sigma, "m": m, "n": n, "alpha": alpha, "batch_size": batch_size}
        with ResultsFile(out, ATTACK_COLUMNS, json.loads(json.dumps(settings, default=str))) as results:
            rows = attack_dataset(model, dataset, adversary, results, **common)
    breaks = None if certified is None else certified_breaks(rows, certified)
    return AttackResult(rows, summarize_attack(rows), breaks)
