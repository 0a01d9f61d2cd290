"""``rs-plugins recertify``: certify again from a counts log; ``rs-plugins check-certifier``: the soundness bench."""

from __future__ import annotations

import argparse

from .. import file_checks
from . import shared
from .shared import positive_int, probability_arg


def add_commands(sub) -> None:
    """Add ``recertify`` and ``check-certifier`` to the ``rs-plugins`` sub-parsers."""
    p = sub.add_parser("recertify", help="certify again from a counts log (another certifier or alpha), no sampling")
    p.add_argument("counts", help="a counts log (<results>.counts, written by certify and predict) or its results file")
    p.add_argument("--certifier", default="cohen", help="a certifier with certify_counts (cohen, feng, cpm, "
                   "sequential on a sequential run's log, mixed on a mixed run's); default cohen")  # fmt: skip
    p.add_argument("--certifier-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--alpha", type=probability_arg, help="failure probability (default: the run's)")
    p.add_argument("--out", required=True, help="results TSV; its sidecar records the counts it came from")
    p.add_argument("--plot", help="write certified accuracy vs radius (and the p_A histogram) as a PNG/PDF/SVG")
    p.add_argument("--summary", help="write the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_recertify)

    p = sub.add_parser("check-certifier", help="soundness bench: a certifier's failure rate on closed-form classifiers")
    p.add_argument("certifier", help="an installed certifier (rs-plugins plugins lists them)")
    p.add_argument("--certifier-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--trials", type=positive_int, default=400, help="certifications per case (default 400)")
    p.add_argument("--alpha", type=probability_arg, default=0.1, help="the certifier's alpha (default 0.1: failures "
                   "are frequent enough to count)")  # fmt: skip
    p.add_argument("--n0", type=positive_int, default=64, help="selection samples (default 64)")
    p.add_argument("--n", type=positive_int, default=512, help="estimation samples (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the trials' generators")
    p.set_defaults(func=cmd_check_certifier)


def cmd_recertify(args: argparse.Namespace) -> int:
    from ..certify.recertify import recertify
    from ..results.files import read_sidecar, recorded
    from ..results.report import largest_radius, radius_formula
    from .certify import finish_report

    for option in ("out", "summary"):
        file_checks.check_output_file(getattr(args, option), f"--{option}")
    file_checks.check_plot_path(args.plot)
    options = shared.parse_options(args.certifier_option, "--certifier-option")
    host = shared.Host()
    rows = recertify(args.counts, args.certifier, alpha=args.alpha, out=args.out, options=options, host=host,
                     progress=not args.no_progress)  # fmt: skip
    sidecar = read_sidecar(args.out) or {}
    noise = host.noise(sidecar["noise"], sigma=sidecar["sigma"], **(sidecar.get("noise_option") or {}))
    own = recorded(sidecar, "radius") != radius_formula(noise)  # e.g. mixed: not the noise's radius
    largest = None if own else largest_radius(noise, sidecar["n"], sidecar["alpha"])
    title = f"recertify {args.out} from {sidecar.get('recertified_from')}"
    finish_report(args, rows, sidecar, title=title, largest=largest)
    return 0


def cmd_check_certifier(args: argparse.Namespace) -> int:
    from ..certify.soundness import check_certifier_soundness

    options = shared.parse_options(args.certifier_option, "--certifier-option")
    host = shared.Host()
    spec = host.component("certifier", args.certifier).spec
    report = check_certifier_soundness(spec, options=options, trials=args.trials, alpha=args.alpha, n0=args.n0,
                                       n=args.n, seed=args.seed, host=host, strict=False)  # fmt: skip
    print(report.format())
    return 0 if report.sound else 1
