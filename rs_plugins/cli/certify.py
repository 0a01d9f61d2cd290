"""``rs-plugins certify`` and ``rs-plugins predict``: Cohen et al.'s CERTIFY and PREDICT over a data set."""

from __future__ import annotations

import argparse

from .. import file_checks
from ..certify.denoising import smoothing_noise
from ..certify.execution import add_execution_arguments, execution_from_args
from ..certify.smoothing import LABEL_CLAIM
from ..results import provenance
from ..results.counts import COUNTS_LOG_CHOICES
from ..results.figures import describe_classifier
from ..results.files import CERTIFY_COLUMNS, PREDICT_COLUMNS, RECORD_KEYS, read_sidecar, recorded
from ..results.metrics import format_quantiles, p_lower_bounds, quantiles
from ..results.report import format_table, largest_radius, plot_certified_accuracy, radius_formula, write_summary
from ..sources.data import select_indices
from ..types import ABSTAIN, DataRequest
from . import shared
from .shared import positive_int, probability_arg


def add_certify(sub) -> None:
    """Add ``certify`` and ``predict`` to the ``rs-plugins`` sub-parsers."""
    for name, help_ in (
        ("certify", "Cohen et al.'s CERTIFY over a data set"),
        ("predict", "Cohen et al.'s PREDICT over a data set"),
    ):
        p = sub.add_parser(name, help=help_)
        shared.add_model(p, several=True)
        shared.add_denoiser(p)
        shared.add_data(p, "test")
        shared.add_subset(p)
        shared.add_run(p, batch_size=1000)
        add_execution_arguments(p)
        if name == "certify":
            certifier_help = "certifier (default cohen); sequential stops each image once its table radii are "
            certifier_help += "decided: the cheap path for certified-accuracy tables on any device (docs/certifiers.md)"
            p.add_argument("--certifier", default="cohen", help=certifier_help)
            p.add_argument("--certifier-option", action="append", default=[], metavar="KEY=VALUE")
            p.add_argument("--n0", type=positive_int, default=100, help="selection samples (default 100)")
        p.add_argument("--n", type=positive_int, default=100_000, help="estimation samples (default 100000)")
        p.add_argument("--alpha", type=probability_arg, default=0.001, help="failure probability (default 0.001)")
        p.add_argument("--out", default=f"{name}.tsv", help="results TSV; rerunning resumes it")
        p.add_argument("--counts-log", choices=COUNTS_LOG_CHOICES, default="counts", help="counts (default): write "
                       "every image's votes beside --out as <out>.counts, for rs-plugins recertify and report's "
                       "p_A; none: do not")  # fmt: skip
        p.add_argument(
            "--plot", help="write certified accuracy vs radius as a PNG" if name == "certify" else argparse.SUPPRESS
        )
        p.add_argument("--summary", help="write the summary as JSON")
        p.set_defaults(func=cmd_certify)


@shared.writes("out")
def cmd_certify(args: argparse.Namespace) -> int:
    import datetime

    import torch

    from ..certify.distributed import init_world, leave_world
    from ..certify.execution import auto_batch_size, execution_record, prepare_model
    from ..certify.runner import certify_dataset, predict_dataset, resolve_device
    from ..certify.sharding import run_sharded

    certify = args.command == "certify"
    if certify and args.n0 > args.n:
        raise ValueError(f"--n0 ({args.n0}) must not exceed --n ({args.n})")
    file_checks.check_output_file(args.summary, "--summary")  # before any work (--out: shared.writes)
    file_checks.check_plot_path(args.plot)
    # Everything that changes the rows is stored with --out, so a resumed file never mixes configurations.
    settings = {
        k: getattr(args, k)
        for k in ("model", "mixer", "checkpoint", "data", "split", "sigma", "noise", "n", "alpha", "seed")
    }
    settings["checkpoint"] = shared.checkpoint_setting(args)
    settings |= {
        "model_kwargs": shared.model_kwargs_setting(args),
        "noise_option": shared.noise_options_of(args),
        "mixer_option": shared.parse_options(args.mixer_option, "--mixer-option"),
    }
    if certify:
        settings |= {
            "certifier": args.certifier,
            "certifier_option": shared.parse_options(args.certifier_option, "--certifier-option"),
            "n0": args.n0,
        }
    device = resolve_device(args.device)
    execution = execution_from_args(args, device)  # --precision auto resolved: the rows depend on what runs
    settings |= execution.settings()  # the certificate is of the model as run: another precision, other rows
    host = shared.Host()
    if certify:  # an unsupported pair or option fails before any model is loaded or any sample drawn
        host.check_compatible(args.certifier, args.noise)
        certifier = host.certifier(args.certifier, **settings["certifier_option"])
        if getattr(certifier, "class_selection", "n0") == "label":
            settings["certifies"] = LABEL_CLAIM
    # torchrun: each process takes its share of the images. Processes only wait for each other at two barriers,
    # so gloo (CPU) suffices, and a process done early may wait at the last one for as long as the run lasts.
    world = init_world("cpu", timeout=datetime.timedelta(days=365))
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)  # else every process would also open a context on GPU 0
    noise = host.noise(args.noise, sigma=args.sigma, **settings["noise_option"])
    model = shared.build_classifier(host, args, settings["mixer_option"])
    dataset = host.load_data(DataRequest(args.data, args.split))
    indices = select_indices(len(dataset), start=args.start, stop=args.max, every=args.every, limit=args.limit)
    settings["model_sha256"] = provenance.weights_sha256(model)  # the weights as loaded; others change the rows
    model = shared.with_denoiser(host, args, model, settings)  # after the hash: the classifier's weights alone
    noise = smoothing_noise(noise, model)  # noise=authors: drawn at the diffusion's own level
    model = prepare_model(model, device, execution)
    batch_size = args.batch_size
    if batch_size == "auto":
        batch_size = auto_batch_size(model, dataset[indices[0]][0].shape, device, limit=args.n)
        if world.main:
            print(f"--batch-size auto: {batch_size}", flush=True)
    record = shared.record_run(host, args, settings, model, dataset, indices, device, execution.precision)
    record |= execution_record(model, args.precision)
    if certify and hasattr(certifier, "check_model"):  # e.g. mixed: refuse a classifier it cannot certify, now
        certifier.check_model(model)
    record["norm"] = noise.norm  # so that report knows the radii's norm even where the noise's plugin is missing
    if certify:
        record["certifier"] = provenance.component(host, "certifier", args.certifier, settings["certifier_option"])
        record["radius"] = radius_formula(noise, certifier)
    common = dict(
        n=args.n,
        alpha=args.alpha,
        batch_size=batch_size,
        seed=args.seed,
        device=device,
        progress=not args.no_progress and world.main,
        announce=(lambda line: print(line, flush=True)) if world.main else None,  # cost of its share, before sampling
    )
    if certify:
        columns = CERTIFY_COLUMNS

        def work(results, share, counts_log=None):
            certify_dataset(model, dataset, noise, certifier, results, indices=share, n0=args.n0,
                            counts_log=counts_log, **common)  # fmt: skip
    else:
        columns = PREDICT_COLUMNS

        def work(results, share, counts_log=None):
            predict_dataset(model, dataset, noise, results, indices=share, counts_log=counts_log, **common)

    logged = args.counts_log != "none"
    rows = run_sharded(work, args.out, columns, settings, indices, world, provenance=record, counts=logged)
    leave_world(world)
    if not world.main:
        return 0  # the main process merged the shares into --out and reports them
    norm = noise.norm
    extra = {"norm": norm}
    if not certify:
        abstained = sum(row.predict == ABSTAIN for row in rows)
        accuracy = sum(row.correct for row in rows) / len(rows)
        print(f"predict {args.out} (sigma={args.sigma}, n={args.n}, alpha={args.alpha})")
        print(f"accuracy {100 * accuracy:.1f}%, abstained {abstained} of {len(rows)}")
        if args.summary:
            write_summary(rows, args.summary, record=read_sidecar(args.out), extra=extra)
            print(f"summary: {args.summary}")
        return 0
    extra |= {"certifier": args.certifier, "certifies": settings.get("certifies", "g(x) and its robustness")}
    if hasattr(certifier, "stopping"):  # e.g. sequential: when images stop sampling, and its cost
        extra["stopping"] = certifier.stopping
    own = radius_formula(noise, certifier) != radius_formula(noise)  # e.g. mixed: not the noise's radius
    finish_report(args, rows, read_sidecar(args.out) or {}, title=f"certify {args.out}", extra=extra,
                  largest=None if own else largest_radius(noise, args.n, args.alpha))  # fmt: skip
    return 0


def finish_report(args, rows, sidecar: dict, *, title: str, extra: dict | None = None, largest=None) -> None:
    """What certify and recertify print and write after a run: the table (certified accuracy at the table radii,
    ACR, the p_A lower bounds' quantiles from the counts log), then ``--plot`` (with the p_A histogram) and
    ``--summary``. ``largest``: the largest radius the run's N can certify, a dotted line in the plot."""
    settings = {k: v for k, v in sidecar.items() if k not in RECORD_KEYS}
    extra = {"norm": recorded(sidecar, "norm") or "l2"} | (extra or {})
    if "certifies" in settings:
        extra["certifies"] = settings["certifies"]
    extra.setdefault("certifier", settings.get("certifier"))
    sigma, n, alpha = settings.get("sigma"), settings.get("n"), settings.get("alpha")
    heading = f"{title} ({extra['certifier']}, {extra['norm']} radius, sigma={sigma}, n={n}, alpha={alpha})"
    if "certifies" in settings:
        heading += f"\n{LABEL_CLAIM}"
    if "stopping" in extra:
        heading += f"\nstopping: {extra['stopping']}"
    p_lower = p_lower_bounds(args.out, sidecar)
    print(format_table(rows, title=heading) + (format_quantiles(p_lower) + "\n" if p_lower else ""))
    if p_lower:
        extra["p_a_lower"] = quantiles(p_lower)
    if args.plot:  # the title says what was certified: the model, a mixture (and its alpha), a denoiser
        plot_title = f"{settings.get('data')} {settings.get('split')}, {describe_classifier(settings)}\n"
        plot_title += f"{extra['certifier']}, N = {n:,}, α = {alpha:g}, {len(rows)} images"
        denoiser = settings.get("denoiser")
        label = f"{settings.get('noise')} σ = {sigma:g}"
        label += f" + {denoiser['name']}" if isinstance(denoiser, dict) else ""  # what the legend names: the run
        plot_certified_accuracy({label: rows}, args.plot, title=plot_title, norm=extra["norm"],
                                largest={label: largest} if largest else {},
                                p_lower={label: p_lower} if p_lower else None)  # fmt: skip
        print(f"plot: {args.plot}")
    if args.summary:
        write_summary(rows, args.summary, record=sidecar or None, extra=extra)
        print(f"summary: {args.summary}")
