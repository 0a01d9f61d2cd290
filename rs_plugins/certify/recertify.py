"""Certify again from a counts log, without sampling: another certifier, another alpha, on the CPU in seconds.

The counts log (``results.counts``) holds every image's votes; a certifier with ``certify_counts`` turns them into
certificates. Recertifying with the certifier and alpha of the run reproduces its rows. The new results file is
a normal one whose sidecar keeps the run's settings (model, data, noise, n0, n, seed...), with the new certifier and
alpha, and records which counts it was recertified from.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..errors import NeedsFreshSamplesError, ResultsFileError
from ..results import provenance
from ..results.counts import COUNTS_SUFFIX, CountsRow, counts_path, read_counts, results_path
from ..results.files import CERTIFY_COLUMNS, RECORD_KEYS, ResultsFile, Row, read_sidecar, recorded, sidecar_path
from ..results.report import radius_formula
from ..validation import accepts_keyword, check_certificates, check_labels, check_number
from .smoothing import LABEL_CLAIM

if TYPE_CHECKING:
    from ..host import Host
    from ..types import Certifier, NoiseSampler

BATCH = 1024
"""Images per ``certify_counts`` call."""
KEPT_PROVENANCE = ("models", "num_classes", "subset", "images", "precision", "noise", "mixer", "denoiser")
"""What the recertified file's provenance keeps of the run that sampled the counts."""


def locate(counts: str | os.PathLike) -> tuple[Path, Path]:
    """(counts log, results file) for a counts log or the results file it sits beside."""
    path = Path(counts)
    if not path.name.endswith(COUNTS_SUFFIX):
        path = counts_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no counts log {path}: certify (or predict) writes it beside --out unless given "
                                "--counts-log none")  # fmt: skip
    return path, results_path(path)


def run_settings(results: Path) -> dict[str, Any]:
    """The sidecar of the results file the counts log sits beside: the noise, sigma, alpha and K it needs."""
    sidecar = read_sidecar(results)
    if not sidecar or not {"noise", "sigma", "alpha"} <= sidecar.keys():
        raise ResultsFileError(
            f"{sidecar_path(results)} is missing or records no noise, sigma and alpha, which recertify needs; keep "
            "the counts log beside its results file and that file's .json"
        )
    return sidecar



def check_totals(path: Path, rows: Sequence[CountsRow], settings: dict[str, Any]) -> None:
    """Each image's votes add up to the run's draws: n in the estimation pass (at most n, and equal to its last
    look, for a certifier that stopped early) and n0 in the selection pass. An edited log, or one beside another
    run's results, would otherwise be certified from draws never made."""
    n, n0 = settings.get("n"), settings.get("n0")
    for row in rows:
        counts, total = row.counts, sum(row.counts.estimation)
        if counts.looks:
            fits = counts.looks[-1] == (total, counts.estimation) and (n is None or total <= n)
        else:
            fits = n is None or total == n
        if counts.selection is not None and n0 is not None:
            fits = fits and sum(counts.selection) == n0
        if not fits:
            raise ResultsFileError(
                f"{path}: the votes of image {row.idx} do not add up to the run's draws (n = {n}, n0 = {n0} in its "
                "settings file): the log was edited, or sits beside another run's results"
            )


def check_can_recertify(certifier: Any, rows: Sequence[CountsRow], name: str) -> None:
    """Refuse, before any work, a certifier that needs fresh samples or cannot take what the counts carry."""
    method = getattr(certifier, "certify_counts", None)
    if not callable(method):
        raise NeedsFreshSamplesError(
            f"{name} has no certify_counts(): it needs fresh samples and cannot be recertified from counts; "
            "certify anew with it (rs-plugins plugins lists each certifier)"
        )
    if any(row.counts.looks for row in rows) and not accepts_keyword(method, "looks"):
        raise NeedsFreshSamplesError(
            f"these counts were drawn by a sequential certifier that stopped each image on its votes; {name}'s bound "
            "assumes a fixed number of samples and would not be valid on them (optional stopping): recertify them "
            "with sequential"
        )
    if any(row.counts.extra.get("member") for row in rows) and not accepts_keyword(method, "extra"):
        member = next(row.counts.extra["member"] for row in rows if row.counts.extra.get("member"))
        raise NeedsFreshSamplesError(
            f"these counts are the votes of the mixture's {member} member alone (a --certifier mixed run); {name} "
            f"would certify that member's smoothing, not the mixture: recertify them with mixed"
        )


def certify_rows(
    certifier: Certifier,
    rows: Sequence[CountsRow],
    noise: NoiseSampler,
    alpha: float,
    num_classes: int,
    name: str = "certifier",
) -> list[Row]:
    """Certificates from counts, as results rows (``samples``: what the certificate rests on, unless it says)."""
    method = certifier.certify_counts
    out = []
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        estimation = torch.tensor([row.counts.estimation for row in batch], dtype=torch.int64)
        has_selection = [row.counts.selection is not None for row in batch]
        selection = None
        if all(has_selection):
            selection = torch.tensor([row.counts.selection for row in batch], dtype=torch.int64)
        labels = torch.tensor([row.label for row in batch], dtype=torch.int64)
        keywords = {"labels": labels, "looks": [row.counts.looks for row in batch]}
        keywords["extra"] = [row.counts.extra for row in batch]
        keywords = {k: v for k, v in keywords.items() if accepts_keyword(method, k)}
        begin = time.perf_counter()
        certificates = method(selection, estimation, noise, alpha=alpha, **keywords)
        seconds = (time.perf_counter() - begin) / len(batch)
        check_certificates(certificates, len(batch), num_classes, certifier)
        for row, cert in zip(batch, certificates):
            samples = cert.samples
            if samples is None:
                samples = sum(row.counts.estimation) + sum(row.counts.selection or ())
            correct = cert.prediction == row.label
            out.append(Row(row.idx, row.label, int(cert.prediction), float(cert.radius), correct, seconds, samples))
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recertify(
    counts: str | os.PathLike,
    certifier: str | Certifier = "cohen",
    *,
    alpha: float | None = None,
    out: str | os.PathLike | None = None,
    options: dict[str, Any] | None = None,
    host: Host | None = None,
    progress: bool = False,
) -> list[Row]:
    """Certify the images of a counts log again with ``certifier`` (a name, built with ``options``, or a built one
    that has ``certify_counts``) at ``alpha`` (default: the run's), without sampling.

    ``counts`` is the log (``<results>.counts``) or the results file it sits beside, whose sidecar gives the noise,
    sigma, alpha and classes. With ``out`` the rows go to a results file (resumed if it exists with the same
    settings) whose sidecar records where they came from; the rows are returned either way.

    Raises:
        NeedsFreshSamplesError: the certifier cannot work from these counts (the message says why).
    """
    from ..host import Host

    host = host or Host()
    options = dict(options or {})
    path, results = locate(counts)
    sidecar = run_settings(results)
    settings = {k: v for k, v in sidecar.items() if k not in RECORD_KEYS}
    alpha = sidecar["alpha"] if alpha is None else check_number("alpha", alpha, above=0, below=1)
    if isinstance(certifier, str):
        name = certifier
        host.check_compatible(name, settings["noise"])
        built = host.certifier(name, **options)
        label = provenance.describe(built, f"certifier {name!r}")
    else:
        if options:
            raise ValueError("options are for a certifier given by name; build the certifier with them instead")
        built, name = certifier, getattr(certifier, "name", type(certifier).__name__)
        label = provenance.describe(built, type(built).__name__)
    num_classes = recorded(sidecar, "num_classes")
    rows = read_counts(path, num_classes if isinstance(num_classes, int) else None)
    if not rows:
        raise ResultsFileError(f"{path} holds no image yet")
    check_totals(path, rows, settings)
    num_classes = num_classes if isinstance(num_classes, int) else len(rows[0].counts.estimation)
    check_labels([row.label for row in rows], num_classes, str(path), indices=[row.idx for row in rows])
    check_can_recertify(built, rows, label)
    noise = host.noise(settings["noise"], sigma=settings["sigma"], **(settings.get("noise_option") or {}))
    if out is None:
        return certify_rows(built, rows, noise, alpha, num_classes, label)
    certify_rows(built, rows[:1], noise, alpha, num_classes, label)  # a refusal comes before --out is written
    settings |= {"certifier": name, "certifier_option": options, "alpha": alpha}
    settings.pop("certifies", None)
    if getattr(built, "class_selection", "n0") == "label":
        settings["certifies"] = LABEL_CLAIM
    relative = os.path.relpath(path.resolve(), Path(out).resolve().parent)
    settings["recertified_from"] = relative
    record = provenance.environment("cpu") | {k: v for k, v in sidecar.get("provenance", {}).items()
                                              if k in KEPT_PROVENANCE}  # fmt: skip
    record |= {"norm": noise.norm, "counts_sha256": _sha256(path), "counts_images": len(rows)}
    record["radius"] = radius_formula(noise, built)
    if isinstance(certifier, str):
        record["certifier"] = provenance.component(host, "certifier", name, options)
    with ResultsFile(out, CERTIFY_COLUMNS, settings, record) as target:
        pending = [row for row in rows if row.idx not in target.done]
        done = len(rows) - len(pending)
        with tqdm(total=len(rows), initial=done, desc="recertify", unit="img", disable=not progress) as bar:
            for start in range(0, len(pending), BATCH):
                for row in certify_rows(built, pending[start : start + BATCH], noise, alpha, num_classes, label):
                    target.append(row)
                bar.update(min(BATCH, len(pending) - start))
        return sorted(target.rows, key=lambda row: row.idx)
