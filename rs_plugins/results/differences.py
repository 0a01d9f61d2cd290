"""What may and may not differ between compared runs: ``check_comparable`` refuses runs whose numbers measure
different things, ``setting_differences`` notes every recorded setting that differs.

Both take ``compare.Run``s (label, path, rows, settings, kind); ``compare.load_runs`` and
``compare.comparison_notes`` call them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .files import RECORD_KEYS, recorded

if TYPE_CHECKING:
    from .compare import Run


def check_comparable(runs: Sequence[Run]) -> None:
    """Refuse runs whose numbers measure different things: PREDICT files (accuracy, no radii) with CERTIFY files,
    and runs whose models have different numbers of classes (different tasks), as recorded by their sidecars."""
    kinds = {run.kind for run in runs}
    if len(kinds) > 1:
        found = ", ".join(f"{run.path}: {run.kind}" for run in runs)
        msg = (f"PREDICT and CERTIFY files cannot be compared: a PREDICT file holds the smoothed classifier's "
               f"predictions and abstentions, no radii; report takes files of one kind ({found})")  # fmt: skip
        raise ValueError(msg)
    classes = {run.label: recorded(run.settings, "num_classes") for run in runs}
    if len({c for c in classes.values() if c is not None}) > 1:
        found = ", ".join(f"{run.path}: {classes[run.label]} classes" for run in runs)
        raise ValueError(f"runs of models with different numbers of classes are of different tasks and cannot be "
                         f"compared; report takes runs on one data set ({found})")  # fmt: skip


DIFFERENCE_ORDER = ("n", "alpha", "n0", "data", "split", "certifier", "certifier_option", "noise", "noise_option",
                    "model", "model_kwargs", "mixer", "mixer_option", "precision", "channels_last", "compile",
                    "compile_mode", "seed")  # fmt: skip
"""The settings a comparison notes when they differ, in this order first; any other recorded setting follows."""
NOT_NOTED = ("checkpoint", "model_sha256", "sigma", "denoiser", "certifies")
"""Settings that differ without a plain note: the weights compared, σ (a column of its own), and two noted apart."""
SETTING_NAMES = {"n": "N", "noise_option": "noise options", "certifier_option": "certifier options",
                 "mixer_option": "mixer options", "model_kwargs": "model kwargs"}  # fmt: skip
DEFAULT_CLAIM = "g(x) and its robustness"  # what a certify run without a ``certifies`` setting certifies


def _shown(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " + ".join(value)
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def setting_differences(runs: Sequence[Run]) -> list[str]:
    """A note for every setting the runs' sidecars record differently (N, alpha, n0, data, certifier, noise,
    model, mixer, precision, seed, ... and the claim certified and the radius formula), each naming every run's
    value; not the weights (what is compared) or σ (its own column)."""
    known = [run for run in runs if run.settings]
    keys = {k for run in known for k in run.settings if k not in (*RECORD_KEYS, *NOT_NOTED)}
    ordered = [k for k in DIFFERENCE_ORDER if k in keys] + sorted(keys - set(DIFFERENCE_ORDER))
    notes = []
    for key in ordered:
        values = {run.label: run.settings.get(key) for run in known}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            name = SETTING_NAMES.get(key, key.replace("_", " "))
            notes.append(f"different {name}: " + ", ".join(f"{label} {_shown(v)}" for label, v in values.items()))
    claims = {run.label: run.settings.get("certifies", DEFAULT_CLAIM) for run in known if run.kind == "certify"}
    if len(set(claims.values())) > 1:
        notes.append("different claims certified: " + "; ".join(f"{label}: {c}" for label, c in claims.items()))
    formulas = {run.label: recorded(run.settings, "radius") for run in known}
    if len({f for f in formulas.values() if f}) > 1:
        notes.append("different radius formulas (the radii come from different certificates): "
                     + ", ".join(f"{label} {f}" for label, f in formulas.items() if f))  # fmt: skip
    return notes


def denoiser_sigma_note(run: Run) -> str | None:
    """A note when the run's denoiser was trained for another σ than the run smoothed with (its sidecar records
    both): the denoiser then removes noise of the wrong size, and the run says little about the technique."""
    denoiser, sigma = run.settings.get("denoiser"), run.settings.get("sigma")
    trained = denoiser.get("trained") if isinstance(denoiser, dict) else None
    trained_sigma = trained.get("sigma") if isinstance(trained, dict) else None
    if trained_sigma is None or sigma is None or abs(float(trained_sigma) - float(sigma)) <= 1e-12:
        return None
    return (f"{run.label}: its denoiser {denoiser.get('name')}"
            + (f":{denoiser['path']}" if denoiser.get("path") else "")
            + f" was trained for σ = {float(trained_sigma):g}, the run smoothed with σ = {float(sigma):g}")
