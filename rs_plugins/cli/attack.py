"""``rs-plugins attack``: robust accuracy under a torchattacks or AutoAttack adversary."""

from __future__ import annotations

import argparse

from .. import file_checks, validation
from ..certify.denoising import smoothing_noise
from ..certify.execution import add_execution_arguments, execution_from_args
from ..results import provenance
from ..results.figures import describe_classifier
from ..results.files import ATTACK_COLUMNS, read_sidecar
from ..sources.data import select_indices
from ..types import DataRequest
from . import shared
from .shared import positive_float, positive_int, probability_arg, radius_arg


def add_attack(sub) -> None:
    """Add ``attack`` to the ``rs-plugins`` sub-parsers."""
    p = sub.add_parser("attack", help="robust accuracy under a torchattacks or AutoAttack adversary")
    shared.add_model(p, several=True)
    shared.add_denoiser(p)
    shared.add_data(p, "test")
    shared.add_subset(p)
    g = p.add_argument_group("adversary")
    g.add_argument("--attack", required=True, help="torchattacks class, any case (PGD, APGD, ...), autoattack-standard")
    g.add_argument("--norm", help="Linf | L2 (default: the attack's only norm)")
    g.add_argument("--eps", type=radius_arg, nargs="+", required=True, help="radii in [0, 1] pixel units; each is run")
    g.add_argument("--attack-option", action="append", default=[], metavar="KEY=VALUE", help="attack class option")
    g = p.add_argument_group("smoothed classifier (with --sigma)")
    g.add_argument("--sigma", type=positive_float, help="attack the smoothed classifier with this noise level")
    g.add_argument("--noise", default="gaussian", help="noise sampler (default gaussian)")
    g.add_argument("--noise-option", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--m", type=positive_int, default=16, help="noise draws per image for the attack (default 16)")
    g.add_argument("--n", type=positive_int, default=10_000, help="PREDICT samples (default 10000)")
    g.add_argument("--alpha", type=probability_arg, default=0.001, help="PREDICT failure probability (default 0.001)")
    g.add_argument("--certified", help="certify TSV: attack its certified images below their radius, list breaks")
    p.add_argument("--batch-size", type=positive_int, default=256, help="samples per forward pass (default 256)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=validation.seed, default=0, help=shared.SEED_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--out", default="attack.tsv", help="results TSV, one row per image and eps; rerunning resumes it")
    p.add_argument("--plot", help="write robust accuracy vs eps as a PNG")
    p.add_argument("--summary", help="write the summary as JSON")
    add_execution_arguments(p)
    p.set_defaults(func=cmd_attack)


@shared.writes("out")
def cmd_attack(args: argparse.Namespace) -> int:
    import datetime

    import torch

    from ..attacks import adversaries, summary
    from ..attacks import engine as ev
    from ..certify.distributed import init_world, leave_world
    from ..certify.execution import execution_record, prepare_model
    from ..certify.runner import resolve_device
    from ..certify.sharding import run_sharded

    options = shared.parse_options(args.attack_option, "--attack-option")
    adversary = adversaries.make_adversary(args.attack, args.norm, options, smoothed=args.sigma is not None)
    eps = adversaries.check_eps(args.eps)
    if args.certified and args.sigma is None:
        raise ValueError("--certified cross-checks a smoothed classifier: give the --sigma it was certified with")
    file_checks.check_output_file(args.summary, "--summary")  # before any work (--out: shared.writes)
    file_checks.check_plot_path(args.plot)
    # Everything that changes a row is stored with --out; more --eps values on a rerun only add rows.
    settings = {k: getattr(args, k) for k in ("model", "mixer", "checkpoint", "data", "split", "seed", "batch_size")}
    settings["checkpoint"] = shared.checkpoint_setting(args)
    settings |= {"attack": adversary.name, "norm": adversary.norm, "attack_option": options}
    settings |= {
        "model_kwargs": shared.model_kwargs_setting(args),
        "mixer_option": shared.parse_options(args.mixer_option, "--mixer-option"),
    }
    if args.sigma is not None:
        settings |= {k: getattr(args, k) for k in ("sigma", "noise", "m", "n", "alpha", "certified")}
        settings["noise_option"] = shared.noise_options_of(args)
    device = resolve_device(args.device)
    execution = execution_from_args(args, device)
    settings |= execution.settings()  # the robustness measured is that of the model as run
    host = shared.Host()
    world = init_world("cpu", timeout=datetime.timedelta(days=365))  # torchrun: as certify, whole attack groups
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    noise = None if args.sigma is None else host.noise(args.noise, sigma=args.sigma, **settings["noise_option"])
    model = shared.build_classifier(host, args, settings["mixer_option"])
    dataset = host.load_data(DataRequest(args.data, args.split))
    indices = select_indices(len(dataset), start=args.start, stop=args.max, every=args.every, limit=args.limit)
    settings["model_sha256"] = provenance.weights_sha256(model)  # the weights as loaded; others change the rows
    model = shared.with_denoiser(host, args, model, settings)  # after the hash: the classifier's weights alone
    noise = smoothing_noise(noise, model)  # noise=authors: drawn at the diffusion's own level
    model = prepare_model(model, device, execution)
    record = shared.record_run(host, args, settings, model, dataset, indices, device, execution.precision)
    record["norm"] = adversary.norm  # of eps and the perturbations; the smoothing noise's is noise_norm
    if noise is not None:
        record["noise_norm"] = noise.norm
    record |= execution_record(model, args.precision)
    targets = below = certified = certify_alpha = None
    if args.certified:
        chosen = set(indices)
        certified, certify_alpha = summary.read_certified(args.certified, args.sigma, args.noise)
        certified = [row for row in certified if row.idx in chosen]
        summary.check_certified(dataset, certified, adversary, noise)
        targets, below = summary.certified_targets(certified)
        indices = [i for i in indices if i in targets]
    smoothing = None if noise is None else ev.Smoothing(noise, m=args.m, n=args.n, alpha=args.alpha)

    def work(results, share):
        ev.attack_dataset(
            model, dataset, adversary, results, indices=share, eps=eps, smoothing=smoothing,
            batch_size=args.batch_size, seed=args.seed, device=device, progress=not args.no_progress and world.main,
            targets=targets, below=below, announce=(lambda line: print(line, flush=True)) if world.main else None,
        )  # fmt: skip

    group = ev.attack_group_size(args.batch_size, smoothing)
    rows = run_sharded(work, args.out, ATTACK_COLUMNS, settings, indices, world, provenance=record, group=group)
    leave_world(world)
    if not world.main:
        return 0  # the main process merged the shares into --out and reports them
    wanted = ev.attack_keys(indices, eps, below)
    rows = [row for row in rows if row.key in wanted]  # --out may hold other radii from earlier runs
    target = "base classifier" if noise is None else f"smoothed classifier, sigma={args.sigma}, n={args.n}"
    title = f"attack {args.out} ({adversary.name}, {adversary.norm}; {target})"
    alphas = (0.001 if certify_alpha is None else certify_alpha, args.alpha)  # 0.001: certify's default
    images = len({row.idx for row in rows})
    plot_title = (f"{args.data} {args.split}, {describe_classifier(settings)}\n{adversary.name} ({adversary.norm}) "
                  f"on the {target}, {images} images")  # fmt: skip
    print(summary.report_attack(rows, adversary, title=title, certified=certified, certified_path=args.certified,
                           alphas=alphas, plot=args.plot, summary=args.summary,
                           record=read_sidecar(args.out), plot_title=plot_title))  # fmt: skip
    return 0
