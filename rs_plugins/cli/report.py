"""``rs-plugins report``: tables, plot and summary from certification TSVs; several files, a comparison."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import file_checks
from ..results.differences import denoiser_sigma_note
from ..results.report import format_provenance, format_table, write_summary
from .shared import positive_float, radius_arg


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
    p.add_argument("--plot", help="certified accuracy vs radius, a curve per file; .pdf/.svg: vector, .png: 200 dpi")
    p.add_argument("--summary", help="JSON summary (several files: one entry per label)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..results import compare

    for option in ("summary", "table"):
        file_checks.check_output_file(getattr(args, option), f"--{option}")
    file_checks.check_plot_path(args.plot)
    fmt = compare.table_format(args.table, args.format)
    runs = compare.load_runs(args.results, args.label, sigma=args.sigma, noise=args.noise)  # one norm only
    percent = not args.fractions
    if runs[0].kind == "predict":  # every run is: load_runs refuses a mixture
        return report_predictions(args, runs, fmt, percent)
    for run in runs:
        claim = f"\n{run.settings['certifies']}" if "certifies" in run.settings else ""
        sigma = "" if run.settings or run.sigma is None else f", sigma={run.sigma:g} (--sigma)"
        title = f"{run.path} ({run.norm} radius{sigma}){claim}"
        notes = [note for note in (compare.shortfall(run), denoiser_sigma_note(run)) if note]
        print(format_table(run.rows, args.radii, title, percent=percent) + "".join(f"note: {n}\n" for n in notes))
        print(format_provenance(run.settings) if run.settings else f"provenance: none ({run.path}.json is missing)\n")
    notes = compare.comparison_notes(runs)
    if len(runs) > 1 or args.table or args.format:
        table = compare.format_comparison(runs, fmt, args.radii, notes, percent=percent)
        text = table if fmt == "text" else compare.format_comparison(runs, "text", args.radii, notes, percent=percent)
        print(text if args.table else table)
        if args.table:
            Path(args.table).parent.mkdir(parents=True, exist_ok=True)
            Path(args.table).write_text(table, encoding="utf-8")
            print(f"table ({fmt}): {args.table}")
    if args.plot:
        compare.plot_comparison(runs, args.plot)
        print(f"plot: {args.plot}")
    if args.summary and len(runs) == 1:
        (run,) = runs
        extra = {"norm": run.norm} | ({"certifies": run.settings["certifies"]} if "certifies" in run.settings else {})
        write_summary(run.rows, args.summary, radii=args.radii, record=run.settings or None, extra=extra)
    elif args.summary:
        compare.write_comparison_summary(runs, args.summary, args.radii)
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
        table = predictions.prediction_table(runs, fmt, notes, percent=percent)
        shown = table if fmt == "text" else predictions.prediction_table(runs, "text", notes, percent=percent)
        print(shown if args.table else table)
        if args.table:
            Path(args.table).parent.mkdir(parents=True, exist_ok=True)
            Path(args.table).write_text(table, encoding="utf-8")
            print(f"table ({fmt}): {args.table}")
    if args.summary:
        about = {run.label: {"file": run.path, "run": run.settings or None} for run in runs}
        found = {run.label: predictions.summarize_predictions(run.rows) | about[run.label] for run in runs}
        out = next(iter(found.values())) if len(runs) == 1 else found
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"summary: {args.summary}")
    return 0
