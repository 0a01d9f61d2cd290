"""``rs-plugins report``: tables, plot and summary from certification TSVs; several files, a comparison."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import file_checks
from ..errors import ResultsFileError
from ..results.differences import denoiser_sigma_note
from ..results.metrics import ACR_CAVEAT, format_quantiles, p_lower_bounds, quantiles
from ..results.published import format_published, published_for
from ..results.report import format_provenance, format_table, write_summary
from ..sources import zoo
from ..sources.zoo.compare import format_comparison
from .shared import Host, positive_float, radius_arg


def add_report(sub) -> None:
    """Add ``report`` to the ``rs-plugins`` sub-parsers."""
    p = sub.add_parser("report", help="tables, plot and summary from certification TSVs; several files: a comparison")
    p.add_argument("results", nargs="+", help="TSV files written by certify (or the paper repos), radii in one norm; "
                   "or PREDICT files (accuracy and abstentions, no radii), not both")  # fmt: skip
    p.add_argument("--label", action="append", help="name of a run, once per file in order (default: noise and sigma, "
                   "else the shortest part of the paths that tells the files apart)")  # fmt: skip
    p.add_argument("--radii", type=radius_arg, nargs="+", help="table columns (default 0, 0.25, ... to the largest)")
    p.add_argument("--sigma", type=positive_float, help="the noise level of files without a settings sidecar")
    p.add_argument("--noise", help="the noise of files without a settings sidecar, for their radius norm "
                   "(default: taken as gaussian, l2, with a warning)")  # fmt: skip
    p.add_argument("--fractions", action="store_true", help="certified accuracy as fractions (0.6120), not percent")
    p.add_argument("--format", choices=["text", "markdown", "latex", "csv"], help="comparison table format")
    p.add_argument("--table", help="write the comparison table here; .txt .md .tex .csv pick the format")
    p.add_argument("--provenance", action="store_true", help="add each run's provenance to the comparison table as "
                   "columns: certifier, n0, N, alpha, seed, subset, model hash, recertified_from")  # fmt: skip
    p.add_argument("--plot", help="certified accuracy vs radius, a curve per file; .pdf/.svg: vector, .png: 200 dpi")
    p.add_argument("--summary", help="JSON summary (several files: one entry per label)")
    p.set_defaults(func=cmd_report)


def published_rows(settings: dict) -> list[dict]:
    """The zoo entries a results file was certified from, with their published rows: as its sidecar recorded them,
    else from the zoo's table."""
    recorded = (settings.get("provenance") or {}).get("zoo")
    if recorded:
        return [e for e in recorded if e.get("published")]
    models = settings.get("model") or []
    names = [m.removeprefix("zoo:") for m in ([models] if isinstance(models, str) else models) if m.startswith("zoo:")]
    found = [zoo.describe(e) for e in zoo.ENTRIES if e.name in names]
    return [e for e in found if e["published"]]


def cmd_report(args: argparse.Namespace) -> int:
    from ..results import compare

    for option in ("summary", "table"):
        file_checks.check_output_file(getattr(args, option), f"--{option}")
    file_checks.check_plot_path(args.plot)
    fmt = compare.table_format(args.table, args.format)
    runs = compare.load_runs(args.results, args.label, sigma=args.sigma, noise=args.noise,
                             build_noise=Host().noise)  # one norm only
    for run in runs:
        if not run.rows:
            raise ResultsFileError(f"{run.path} has its header but no rows yet (a run that has not finished an "
                                   "image, or an empty file): nothing to report")  # fmt: skip
    percent = not args.fractions
    if runs[0].kind == "predict":  # every run is: load_runs refuses a mixture
        return report_predictions(args, runs, fmt, percent)
    p_lower = {run.label: found for run in runs if (found := p_lower_bounds(run.path, run.settings))}  # counts logs
    for run in runs:
        claim = f"\n{run.settings['certifies']}" if "certifies" in run.settings else ""
        sigma = "" if run.settings or run.sigma is None else f", sigma={run.sigma:g} (--sigma)"
        title = f"{run.path} ({run.norm} radius{sigma}){claim}"
        notes = [note for note in (compare.shortfall(run), denoiser_sigma_note(run)) if note]
        spread = p_lower.get(run.label)
        print(format_table(run.rows, args.radii, title, percent=percent) + "".join(f"note: {n}\n" for n in notes)
              + (format_quantiles(spread) + "\n" if spread else ""))  # fmt: skip
        print(format_provenance(run.settings) if run.settings else f"provenance: none ({run.path}.json is missing)\n")
        for entry in published_rows(run.settings):  # a zoo entry's results: the authors' row as one more run
            print(format_comparison(run.rows, entry["published"], title=f"{run.label}: {entry['entry']} beside its "
                                    f"published row ({entry['paper']})"))  # fmt: skip
        published = published_for(run.settings)  # e.g. Carlini et al.'s row beside a run with their diffusion model
        if published is not None:
            print(format_published(published, run.rows, run.settings))
    notes = [*compare.comparison_notes(runs), ACR_CAVEAT]
    if len(runs) == 1 and not (args.table or args.format):
        print(f"note: {ACR_CAVEAT}")
    if len(runs) > 1 or args.table or args.format:
        options = dict(percent=percent, provenance=args.provenance)
        show_table(args, fmt, lambda form: compare.format_comparison(runs, form, args.radii, notes, **options))
    if args.plot:
        compare.plot_comparison(runs, args.plot, p_lower=p_lower)
        print(f"plot: {args.plot}")
    if args.summary and len(runs) == 1:
        (run,) = runs
        extra = {"norm": run.norm} | ({"certifies": run.settings["certifies"]} if "certifies" in run.settings else {})
        extra |= {"p_a_lower": quantiles(p_lower[run.label])} if run.label in p_lower else {}
        write_summary(run.rows, args.summary, radii=args.radii, record=run.settings or None, extra=extra)
    elif args.summary:
        compare.write_comparison_summary(runs, args.summary, args.radii)
        add_p_lower(args.summary, p_lower)
    if args.summary:
        print(f"summary: {args.summary}")
    return 0


def report_predictions(args: argparse.Namespace, runs, fmt: str, percent: bool) -> int:
    """``report`` of PREDICT files: accuracy, abstentions and wrong answers per run, never radii."""
    from ..results import compare, predictions

    for flag, given in (("--radii", args.radii), ("--plot", args.plot)):
        if given:
            raise ValueError(f"{flag}: {runs[0].path} is a PREDICT file (predictions and abstentions, no radii); "
                             f"{flag} is for CERTIFY files")  # fmt: skip
    for run in runs:
        sigma = "" if run.settings or run.sigma is None else f", sigma={run.sigma:g} (--sigma)"
        short = compare.shortfall(run)
        text = predictions.format_predictions(run.rows, f"{run.path} (predict{sigma})")
        print(text + (f"note: {short}\n" if short else ""))
        print(format_provenance(run.settings) if run.settings else f"provenance: none ({run.path}.json is missing)\n")
    notes = compare.comparison_notes(runs)
    if len(runs) > 1 or args.table or args.format:
        options = dict(percent=percent, provenance=args.provenance)
        show_table(args, fmt, lambda form: predictions.prediction_table(runs, form, notes, **options))
    if args.summary:
        about = {run.label: {"file": run.path, "run": run.settings or None} for run in runs}
        found = {run.label: predictions.summarize_predictions(run.rows) | about[run.label] for run in runs}
        out = next(iter(found.values())) if len(runs) == 1 else found
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"summary: {args.summary}")
    return 0


def show_table(args: argparse.Namespace, fmt: str, table_in) -> None:
    """Print the comparison table in ``fmt`` (as text when it also goes to ``--table``) and write ``--table``.
    ``table_in(form)`` formats it in one of ``compare.FORMATS``."""
    table = table_in(fmt)
    print((table if fmt == "text" else table_in("text")) if args.table else table)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table, encoding="utf-8")
        print(f"table ({fmt}): {args.table}")


def add_p_lower(path: str, p_lower: dict) -> None:
    """Add each run's p_A lower-bound quantiles (``p_a_lower``) to a comparison summary written at ``path``."""
    found = json.loads(Path(path).read_text(encoding="utf-8"))
    for label, values in p_lower.items():
        found[label]["p_a_lower"] = quantiles(values)
    Path(path).write_text(json.dumps(found, indent=2, default=str) + "\n", encoding="utf-8")
