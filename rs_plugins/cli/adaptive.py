"""``rs-plugins train-mixer`` and ``rs-plugins tradeoff``: the adaptive-smoothing commands (parsers and thin calls).

The work lives in ``rs_plugins.train.mixer`` and ``rs_plugins.attacks.tradeoff``; this module turns flags into
their arguments and builds the components through the Host.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import file_checks, validation
from ..sources.data import select_indices
from ..train.mixer import MIXING_WEIGHTS, NORMS, MixerTrainConfig
from ..types import DataRequest
from . import shared

SCALE_OPTIONS = ("std_scale", "rob_scale")  # the --mixer-option keys the fixed-alpha mixtures of tradeoff share


def add_commands(sub) -> None:
    """Add ``train-mixer`` and ``tradeoff`` to the ``rs-plugins`` sub-parsers."""
    defaults = MixerTrainConfig()
    p = sub.add_parser("train-mixer", help="adversarially train the adaptive mixer's mixing network (bases frozen)")
    shared.add_model(p, several=True)
    p.set_defaults(mixer="adaptive")
    shared.add_data(p, "train")
    shared.add_subset(p)
    g = p.add_argument_group("schedule (AdamW, exponential warm-up, cosine; the authors' CIFAR-10 values)")
    g.add_argument("--epochs", type=shared.positive_int, default=defaults.epochs, help="default 3")
    g.add_argument("--batch-size", type=shared.positive_int, default=defaults.batch_size,
                   help="clean images per batch (each is also attacked; default 50)")  # fmt: skip
    g.add_argument("--lr", type=shared.positive_float, default=defaults.lr, help="default 5e-5")
    g.add_argument("--weight-decay", type=validation.nonnegative_float, default=defaults.weight_decay)
    g.add_argument("--accumulate", type=shared.positive_int, default=defaults.accumulate,
                   help="mini-batches of the buffer per optimizer step (4)")  # fmt: skip
    g.add_argument("--clip", type=shared.positive_float, default=defaults.clip, help="gradient-norm clip (10)")
    g.add_argument("--warmup", type=shared.probability_arg, default=defaults.warmup, help="warm-up share (1/25)")
    g = p.add_argument_group("training attack (APGD-CE / targeted APGD-DLR through the mixture)")
    g.add_argument("--norm", default=defaults.norm, choices=NORMS, help="default Linf")
    g.add_argument("--eps", type=shared.positive_float, default=defaults.eps, help="radius (default 8/255)")
    g.add_argument("--eps-range", type=validation.nonnegative_float, nargs=2, default=(defaults.eps_low,
                   defaults.eps_high), metavar=("LOW", "HIGH"), help="eps factor ~ U(LOW, HIGH) (0.4 1.1)")  # fmt: skip
    g.add_argument("--attack-steps", type=shared.positive_int, default=defaults.attack_steps,
                   help="steps ~ chi2(this)")  # fmt: skip
    g.add_argument("--attack-weight", type=validation.nonnegative_float, default=defaults.attack_weight,
                   help="the attacker's BCE weight w ~ U(0, this) (0.4)")  # fmt: skip
    g.add_argument("--targets", type=validation.nonnegative_int, default=defaults.targets,
                   help="targeted APGD-DLR runs per batch besides the APGD-CE one (ranks 2..; default 9)")  # fmt: skip
    g.add_argument("--extra-clean", type=validation.nonnegative_int, default=defaults.extra_clean,
                   help="other clean images per batch in the buffer, in batches (default 9)")  # fmt: skip
    g = p.add_argument_group("loss: bce·BCE(gamma, s) + ce·CE + prod·BCE·CE")
    g.add_argument("--bce-weight", type=validation.nonnegative_float, default=defaults.bce_weight, help="1.5")
    g.add_argument("--ce-weight", type=validation.nonnegative_float, default=defaults.ce_weight, help="0")
    g.add_argument("--prod-weight", type=validation.nonnegative_float, default=defaults.prod_weight, help="0.3")
    g = p.add_argument_group("execution")
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype")
    g.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    g.add_argument("--seed", type=validation.seed, default=0, help="seed of the mixing network, shuffling, attacks")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--checkpoint-dir", default="checkpoints", help="checkpoint every epoch; rerunning resumes")
    p.set_defaults(func=cmd_train_mixer)

    p = sub.add_parser("tradeoff", help="clean, attacked and certified accuracy of mixtures over alpha (CSV + PNG)")
    shared.add_model(p, several=True)
    shared.add_data(p, "test")
    shared.add_subset(p)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                   help="fixed alphas of --mixer mix (default 0 .25 .5 .6 .7 .8 .9 1)")  # fmt: skip
    p.add_argument("--adaptive", action="append", default=[], metavar="MIXING_PT",
                   help="add the adaptive mixer with this mixing network (from train-mixer; repeatable); "
                   "--mixer-option configures it; its std_scale/rob_scale also apply to the fixed alphas")  # fmt: skip
    g = p.add_argument_group("adversary (through the whole mixture)")
    g.add_argument("--attack", default="APGD", help="torchattacks class (default APGD)")
    g.add_argument("--norm", help="Linf | L2 (default: the attack's only norm)")
    g.add_argument("--eps", type=shared.radius_arg, required=True, help="radius in [0, 1] pixel units")
    g.add_argument("--attack-option", action="append", default=[], metavar="KEY=VALUE")
    g = p.add_argument_group("mixed certificate (with --sigma: the robust member Gaussian-smoothed)")
    g.add_argument("--sigma", type=shared.positive_float, help="noise level of the robust member's smoothing")
    g.add_argument("--radii", type=shared.radius_arg, nargs="+", default=[0.0, 0.25, 0.5], help="certified accuracy at")
    g.add_argument("--n0", type=shared.positive_int, default=100, help="selection samples (default 100)")
    g.add_argument("--n", type=shared.positive_int, default=1000, help="estimation samples (default 1000)")
    g.add_argument("--alpha", type=shared.probability_arg, default=0.001, help="failure probability (default 0.001)")
    p.add_argument("--batch-size", type=shared.positive_int, default=256, help="samples per forward pass")
    p.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=validation.seed, default=0, help=shared.SEED_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--out", default="tradeoff.csv", help="the table (CSV)")
    p.add_argument("--plot", help="clean vs robust accuracy as a PNG")
    p.set_defaults(func=cmd_tradeoff, mixer=None)


def _bases(host, args) -> list:
    if len(args.model) != 2:
        raise ValueError(f"{args.command} takes two --model, the accurate one first, the robust one second; "
                         f"got {len(args.model)}")  # fmt: skip
    shared.checkpoint_list(args), shared.kwargs_per_model(args)  # counts checked before any model is loaded
    return [shared.load_model(host, args, source, i) for i, source in enumerate(args.model)]


@shared.writes("checkpoint_dir", folder=True)
def cmd_train_mixer(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import Subset

    from ..certify.runner import resolve_device
    from ..host import Host
    from ..results.provenance import weights_sha256
    from ..train.mixer import train_mixer

    low, high = args.eps_range
    schedule = ("epochs", "batch_size", "lr", "weight_decay", "accumulate", "clip", "warmup", "norm", "eps")
    schedule += ("attack_steps", "attack_weight", "targets", "extra_clean", "bce_weight", "ce_weight", "prod_weight")
    config = MixerTrainConfig(**{k: getattr(args, k) for k in schedule}, eps_low=low, eps_high=high,
                              precision=args.precision, seed=args.seed)  # fmt: skip
    device = resolve_device(args.device)
    host = Host()
    options = shared.parse_options(args.mixer_option, "--mixer-option")
    bases = _bases(host, args)
    torch.manual_seed(args.seed)  # the mixing network's initial weights depend on --seed alone
    mixer = host.mixer(args.mixer, bases, **options)
    if not hasattr(mixer, "trainable"):
        raise ValueError(f"--mixer {args.mixer} has nothing to train; train-mixer trains --mixer adaptive")
    dataset = host.load_data(DataRequest(args.data, args.split))
    indices = select_indices(len(dataset), start=args.start, stop=args.max, every=args.every, limit=args.limit)
    settings = {k: getattr(args, k) for k in ("model", "mixer", "data", "split", "start", "max", "every", "limit")}
    settings |= {"checkpoint": shared.checkpoint_setting(args), "model_kwargs": shared.model_kwargs_setting(args)}
    settings |= {"mixer_option": options, "bases_sha256": weights_sha256(torch.nn.ModuleList(bases))}
    train_mixer(mixer, Subset(dataset, indices), config=config, checkpoint_dir=args.checkpoint_dir, device=device,
                progress=not args.no_progress, settings=settings)  # fmt: skip
    path = Path(args.checkpoint_dir) / MIXING_WEIGHTS
    print(f"mixing network: {path}  (use: --mixer adaptive --mixer-option checkpoint={path})")
    return 0


def cmd_tradeoff(args: argparse.Namespace) -> int:
    import torch

    from ..attacks.tradeoff import tradeoff, write_tradeoff
    from ..certify.runner import resolve_device
    from ..host import Host

    for alpha in args.alphas:
        if not 0 <= alpha <= 1:
            raise ValueError(f"--alphas must lie in [0, 1]; got {alpha}")
    file_checks.check_output_file(args.out, "--out")
    file_checks.check_plot_path(args.plot)
    host = Host()
    device = resolve_device(args.device)
    options = shared.parse_options(args.mixer_option, "--mixer-option")
    attack_options = shared.parse_options(args.attack_option, "--attack-option")
    bases = _bases(host, args)
    scales = {k: v for k, v in options.items() if k in SCALE_OPTIONS}
    mixers = {f"alpha={a:g}": (host.mixer("mix", bases, alpha=a, **scales), a) for a in args.alphas}
    for i, path in enumerate(args.adaptive):
        label = "adaptive" if len(args.adaptive) == 1 else f"adaptive {i + 1}"
        mixers[label] = (host.mixer("adaptive", bases, **(options | {"checkpoint": path})), None)
    dataset = host.load_data(DataRequest(args.data, args.split))
    indices = select_indices(len(dataset), start=args.start, stop=args.max, every=args.every, limit=args.limit)
    images = torch.stack([torch.as_tensor(dataset[i][0]) for i in indices])
    labels = torch.tensor([int(dataset[i][1]) for i in indices])
    rows = tradeoff(mixers, images, labels, attack=args.attack, norm=args.norm, eps=args.eps, options=attack_options,
                    sigma=args.sigma, radii=args.radii, n0=args.n0, n=args.n, alpha=args.alpha,
                    batch_size=args.batch_size, seed=args.seed, device=device,
                    progress=not args.no_progress, host=host)  # fmt: skip
    title = f"{args.attack} eps={args.eps:g} on {len(indices)} images" + (f", sigma={args.sigma}" if args.sigma else "")
    write_tradeoff(rows, args.out, args.plot, title=title)
    columns = list(rows[0])
    print(f"tradeoff {args.out} ({title})")
    print("  ".join(f"{c:>14}" for c in columns))
    for row in rows:
        print("  ".join(f"{v:>14.3f}" if isinstance(v, float) else f"{v!s:>14}" for v in row.values()))
    if args.plot:
        print(f"plot: {args.plot}")
    return 0
