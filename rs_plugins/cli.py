"""``rs-plugins``: list plugins, train, certify, predict, report, and a demo that does it all on built-in data."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from . import __version__
from .data import select_indices
from .errors import RsPluginError
from .execution import add_execution_arguments, batch_size_arg, execution_from_args
from .host import Host
from .report import (
    CERTIFY_COLUMNS,
    PREDICT_COLUMNS,
    format_table,
    plot_certified_accuracy,
    read_results,
    write_summary,
)
from .training import AUGMENTATIONS, PRECISIONS, RECIPES, TrainConfig
from .types import ABSTAIN, DataRequest, ModelRequest

SEED_HELP = "seed; each image's noise is seeded from (seed, index), so reruns and resumed runs agree"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0; got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1); got {text}")
    return value


def _epochs(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated epochs like 200,400; got {text}") from None


def _options(pairs: list[str], flag: str) -> dict:
    """KEY=VALUE pairs to a dict; values are parsed as JSON when they can be (numbers, booleans, lists)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE; got {pair!r}")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


def _add_model(p: argparse.ArgumentParser, *, several: bool) -> None:
    g = p.add_argument_group("model")
    help_ = "robustbench:<name> | package.module:factory | torchscript:<file> | <file>.pt2"
    if several:
        g.add_argument("--model", action="append", required=True, help=help_ + " (repeat to combine with --mixer)")
        g.add_argument("--mixer", help="mixer that combines several --model classifiers")
        g.add_argument("--mixer-option", action="append", default=[], metavar="KEY=VALUE")
    else:
        g.add_argument("--model", required=True, help=help_)
    g.add_argument("--checkpoint", help="state dict (loaded with weights_only=True) for a package.module:factory model")
    g.add_argument("--model-kwargs", default="{}", help="JSON keyword arguments for the factory")
    g.add_argument("--dataset", default="cifar10", help="RobustBench data set (default cifar10)")
    g.add_argument("--threat-model", default="L2", help="RobustBench threat model (default L2)")
    g.add_argument("--model-dir", default="./models", help="RobustBench checkpoint folder (default ./models)")


def _add_data(p: argparse.ArgumentParser, split: str) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="digits | cifar10:<root> | <file>.pt | <file>.npz")
    g.add_argument("--split", default=split, choices=["train", "test"], help=f"default {split}")


def _add_subset(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("subset (as in the paper repos)")
    g.add_argument("--start", type=int, default=0, help="first data-set index")
    g.add_argument("--max", type=int, default=None, help="stop before this data-set index")
    g.add_argument("--every", "--skip", dest="every", type=_positive_int, default=1, help="every k-th index (--skip k)")
    g.add_argument("--limit", type=_positive_int, default=None, help="at most this many images")


def _add_run(p: argparse.ArgumentParser, *, batch_size: int | None) -> None:
    p.add_argument("--sigma", type=_positive_float, required=True, help="noise level in [0, 1] pixel units")
    p.add_argument("--noise", default="gaussian", help="noise sampler (default gaussian)")
    p.add_argument("--noise-option", action="append", default=[], metavar="KEY=VALUE")
    default = f"default {batch_size}" if batch_size else "default from --recipe (256; macer 64)"
    if batch_size:  # certify, predict: samples per forward pass; auto measures the GPU's memory
        default += "; auto: fill ~60%% of the GPU's free memory (CPU: 400)"
    batch_type = batch_size_arg if batch_size else _positive_int
    p.add_argument("--batch-size", type=batch_type, default=batch_size, help=default)
    p.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rs-plugins", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rs-plugins {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list plugins, their hooks and components")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    for name, help_ in (
        ("certify", "Cohen et al.'s CERTIFY over a data set"),
        ("predict", "Cohen et al.'s PREDICT over a data set"),
    ):
        p = sub.add_parser(name, help=help_)
        _add_model(p, several=True)
        _add_data(p, "test")
        _add_subset(p)
        _add_run(p, batch_size=1000)
        add_execution_arguments(p)
        if name == "certify":
            p.add_argument("--certifier", default="cohen", help="certifier (default cohen)")
            p.add_argument("--certifier-option", action="append", default=[], metavar="KEY=VALUE")
            p.add_argument("--n0", type=_positive_int, default=100, help="selection samples (default 100)")
        p.add_argument("--n", type=_positive_int, default=100_000, help="estimation samples (default 100000)")
        p.add_argument("--alpha", type=_probability, default=0.001, help="failure probability (default 0.001)")
        p.add_argument("--out", default=f"{name}.tsv", help="results TSV; rerunning resumes it")
        p.add_argument(
            "--plot", help="write certified accuracy vs radius as a PNG" if name == "certify" else argparse.SUPPRESS
        )
        p.add_argument("--summary", help="write the summary as JSON")
        p.set_defaults(func=cmd_certify)

    p = sub.add_parser("train", help="train a base classifier with a loss plugin")
    _add_model(p, several=False)
    _add_data(p, "train")
    _add_run(p, batch_size=None)
    p.add_argument("--loss", default="gaussian", help="training loss (default gaussian); see `rs-plugins plugins`")
    p.add_argument("--loss-option", action="append", default=[], metavar="KEY=VALUE", help="technique option")
    g = p.add_argument_group("schedule (SGD; explicit flags override the recipe)")
    g.add_argument("--recipe", default="cifar10", choices=sorted(RECIPES), help="papers' schedule (default cifar10)")
    g.add_argument("--epochs", type=_positive_int, help="default 150")
    g.add_argument("--lr", type=_positive_float, help="default 0.1")
    g.add_argument("--momentum", type=float, help="default 0.9")
    g.add_argument("--weight-decay", type=float, help="default 1e-4")
    g.add_argument("--lr-step", type=_positive_int, help="decay the learning rate every this many epochs (default 50)")
    g.add_argument("--lr-milestones", type=_epochs, help="comma-separated epochs to decay at, instead of --lr-step")
    g.add_argument("--lr-gamma", type=_positive_float, help="decay factor (default 0.1)")
    g = p.add_argument_group("execution")
    g.add_argument("--augment", default="none", choices=list(AUGMENTATIONS), help="per-batch augmentation")
    g.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="autocast dtype (default fp32)")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and inputs")
    g.add_argument("--deterministic", action="store_true", help="only deterministic kernels (slower on GPU)")
    g.add_argument("--checkpoint-dir", default="checkpoints", help="checkpoint every epoch; rerunning resumes")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("report", help="tables, plot and summary from certification TSVs")
    p.add_argument("results", nargs="+", help="TSV files written by certify (or the paper repos)")
    p.add_argument("--plot", help="PNG with one curve per file")
    p.add_argument("--summary", help="JSON summary (one file only)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="train a small CNN on digits with Gaussian noise, certify, report")
    p.add_argument("--out-dir", default="results/demo")
    p.add_argument("--sigma", type=_positive_float, default=0.25)
    p.add_argument("--epochs", type=_positive_int, default=60)
    p.add_argument("--n", type=_positive_int, default=10_000)
    p.add_argument("--every", type=_positive_int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def _model_kwargs(args: argparse.Namespace) -> dict:
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as err:
        raise ValueError(f"--model-kwargs must be a JSON object; {err}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model-kwargs must be a JSON object; got {args.model_kwargs!r}")
    return kwargs


def _load_model(host: Host, args: argparse.Namespace, source: str):
    request = ModelRequest(
        source, args.checkpoint, _model_kwargs(args), args.dataset, args.threat_model, args.model_dir
    )
    return host.load_model(request)


def cmd_plugins(args: argparse.Namespace) -> int:
    plugins = Host().describe()
    if args.json:
        components = [c | {"plugin": p["name"]} for p in plugins for c in p["components"]]
        print(json.dumps({"plugins": plugins, "components": components}, indent=2, default=repr))
        return 0
    for p in plugins:
        origin = f"{p['distribution']} {p['version']}".strip() or "(registered directly)"
        print(f"{p['name']}  [{origin}]  {p['status']}")
        if p["error"]:
            print(f"    error: {p['error']}")
        if p["hooks"]:
            print(f"    hooks: {', '.join(p['hooks'])}")
        for c in p["components"]:
            state = "" if c["available"] else f"  (unavailable: {c['install']})"
            print(f"    {c['kind']:<10} {c['name']:<14} {c['summary']}{state}")
            if c["reference"]:
                print(f"    {'':<10} {'':<14} {c['reference']}")
            if c["options"]:
                options = ", ".join(f"{k}={v!r}" for k, v in c["options"].items())
                print(f"    {'':<10} {'':<14} options: {options}")
    return 0


def cmd_certify(args: argparse.Namespace) -> int:
    import datetime

    import torch

    from .distributed import init_world, leave_world
    from .execution import auto_batch_size, prepare_model
    from .runner import certify_dataset, predict_dataset, resolve_device, run_sharded

    certify = args.command == "certify"
    if certify and args.n0 > args.n:
        raise ValueError(f"--n0 ({args.n0}) must not exceed --n ({args.n})")
    # Everything that changes the rows is stored with --out, so a resumed file never mixes configurations.
    settings = {
        k: getattr(args, k)
        for k in ("model", "mixer", "checkpoint", "data", "split", "sigma", "noise", "n", "alpha", "seed")
    }
    settings |= {
        "model_kwargs": _model_kwargs(args),
        "noise_option": _options(args.noise_option, "--noise-option"),
        "mixer_option": _options(args.mixer_option, "--mixer-option"),
    }
    if certify:
        settings |= {
            "certifier": args.certifier,
            "certifier_option": _options(args.certifier_option, "--certifier-option"),
            "n0": args.n0,
        }
    execution = execution_from_args(args)
    settings |= execution.settings()  # the certificate is of the model as run: another precision, other rows
    host = Host()
    device = resolve_device(args.device)
    # torchrun: each process takes its share of the images. Processes only wait for each other at two barriers,
    # so gloo (CPU) suffices, and a process done early may wait at the last one for as long as the run lasts.
    world = init_world("cpu", timeout=datetime.timedelta(days=365))
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)  # else every process would also open a context on GPU 0
    noise = host.noise(args.noise, sigma=args.sigma, **settings["noise_option"])
    models = [_load_model(host, args, source) for source in args.model]
    if args.mixer:
        model = host.mixer(args.mixer, models, **settings["mixer_option"])
    elif len(models) > 1:
        mixers = ", ".join(host.names("mixer")) or "none installed"
        raise ValueError(f"{len(models)} --model given; combine them with --mixer (available: {mixers})")
    else:
        model = models[0]
    dataset = host.load_data(DataRequest(args.data, args.split))
    indices = select_indices(len(dataset), start=args.start, stop=args.max, every=args.every, limit=args.limit)
    model = prepare_model(model, device, execution)
    batch_size = args.batch_size
    if batch_size == "auto":
        batch_size = auto_batch_size(model, dataset[indices[0]][0].shape, device, limit=args.n)
        if world.main:
            print(f"--batch-size auto: {batch_size}", flush=True)
    common = dict(
        n=args.n,
        alpha=args.alpha,
        batch_size=batch_size,
        seed=args.seed,
        device=device,
        progress=not args.no_progress and world.main,
    )
    if certify:
        host.check_compatible(args.certifier, args.noise)
        certifier = host.certifier(args.certifier, **settings["certifier_option"])
        columns = CERTIFY_COLUMNS

        def work(results, share):
            certify_dataset(model, dataset, noise, certifier, results, indices=share, n0=args.n0, **common)
    else:
        columns = PREDICT_COLUMNS

        def work(results, share):
            predict_dataset(model, dataset, noise, results, indices=share, **common)

    rows = run_sharded(work, args.out, columns, settings, indices, world)
    leave_world(world)
    if not world.main:
        return 0  # the main process merged the shares into --out and reports them
    norm = noise.norm
    if certify:
        print(format_table(rows, title=f"certify {args.out} ({norm} radius, sigma={args.sigma}, n={args.n})"))
    else:
        abstained = sum(row.predict == ABSTAIN for row in rows)
        accuracy = sum(row.correct for row in rows) / len(rows)
        print(f"predict {args.out} (sigma={args.sigma}, n={args.n}, alpha={args.alpha})")
        print(f"accuracy {100 * accuracy:.1f}%, abstained {abstained} of {len(rows)}")
    if certify and args.plot:
        plot_certified_accuracy({f"{args.noise} sigma={args.sigma}": rows}, args.plot, title=str(args.out), norm=norm)
        print(f"plot: {args.plot}")
    if args.summary:
        write_summary(rows, args.summary)
        print(f"summary: {args.summary}")
    return 0


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The --recipe's schedule, overridden by every schedule flag given explicitly."""
    schedule = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_step", "lr_milestones", "lr_gamma")
    chosen = {k: getattr(args, k) for k in schedule if getattr(args, k) is not None}
    execution = {k: getattr(args, k) for k in ("seed", "augment", "precision", "channels_last", "deterministic")}
    return TrainConfig(**(RECIPES[args.recipe] | chosen | execution))


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .distributed import init_world, leave_world
    from .runner import resolve_device
    from .training import train

    config = train_config(args)
    device = resolve_device(args.device)
    world = init_world(device.type)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    host = Host()
    loss_options = _options(args.loss_option, "--loss-option")
    noise_options = _options(args.noise_option, "--noise-option")
    noise = host.noise(args.noise, sigma=args.sigma, **noise_options)
    loss = host.loss(args.loss, **loss_options)
    torch.manual_seed(args.seed)  # the initial weights too depend on --seed alone, not on what ran before
    model = _load_model(host, args, args.model)
    dataset = host.load_data(DataRequest(args.data, args.split))
    settings = {"loss": args.loss, "loss_option": loss_options, "noise": args.noise, "noise_option": noise_options}
    settings |= {"sigma": args.sigma, "model": args.model, "data": args.data, "split": args.split}
    settings["processes"] = world.size  # noise is seeded per process: another count would not resume exactly
    train(
        model,
        dataset,
        loss,
        noise,
        config=config,
        checkpoint_dir=args.checkpoint_dir,
        device=device,
        progress=not args.no_progress,
        world=world,
        settings=settings,
    )
    leave_world(world)
    if world.main:
        print(f"model state dict: {Path(args.checkpoint_dir) / 'model.pt'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    curves = {path: read_results(path) for path in args.results}
    for path, rows in curves.items():
        print(format_table(rows, title=path))
    if args.plot:
        plot_certified_accuracy(curves, args.plot)
        print(f"plot: {args.plot}")
    if args.summary:
        if len(curves) != 1:
            raise ValueError("--summary takes exactly one results file")
        write_summary(next(iter(curves.values())), args.summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the two real commands a user would type, and show them."""
    out = Path(args.out_dir)
    common = [
        "--model",
        "rs_plugins.nets:SmallCNN",
        "--data",
        "digits",
        "--sigma",
        str(args.sigma),
        "--device",
        args.device,
        "--seed",
        str(args.seed),
    ]
    steps = [
        [
            "train",
            *common,
            "--loss",
            "gaussian",
            "--epochs",
            str(args.epochs),
            "--lr-step",
            str(max(1, args.epochs // 3)),
            "--checkpoint-dir",
            str(out / "checkpoints"),
        ],
        [
            "certify",
            *common,
            "--checkpoint",
            str(out / "checkpoints" / "model.pt"),
            "--n",
            str(args.n),
            *(["--n0", str(args.n)] if args.n < 100 else []),  # certify's --n0 (default 100) must not exceed --n
            "--every",
            str(args.every),
            "--out",
            str(out / "certify.tsv"),
            "--plot",
            str(out / "certified_accuracy.png"),
            "--summary",
            str(out / "summary.json"),
        ],
    ]
    for step in steps:
        print("$ rs-plugins " + shlex.join(step), flush=True)
        code = main(step)
        if code:
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m rs_plugins -- certify --n ...`: the `--` keeps torchrun off our flags
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RsPluginError, ValueError, FileNotFoundError) as err:
        print(f"rs-plugins: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
