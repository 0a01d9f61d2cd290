"""``rs-plugins``: list plugins, train, certify, predict, attack, report, and a demo of it all on built-in data."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import traceback
from pathlib import Path

from . import __version__, provenance, validation
from .data import select_indices
from .errors import RsPluginError
from .execution import add_execution_arguments, batch_size_arg, execution_from_args
from .host import Host
from .report import (
    ATTACK_COLUMNS,
    CERTIFY_COLUMNS,
    PREDICT_COLUMNS,
    format_provenance,
    format_table,
    plot_certified_accuracy,
    read_sidecar,
    write_summary,
)
from .training import AUGMENTATIONS, PRECISIONS, RECIPES, VAL_IMAGES, TrainConfig
from .types import ABSTAIN, DataRequest, ModelRequest

LABEL_CLAIM = (
    "class_selection=label: certifies g(x) = y and robust (evaluation only, no n0 pass; not a deployable prediction)"
)
SEED_HELP = "seed; each image's noise is seeded from (seed, index), so reruns and resumed runs agree"


_positive_int = validation.positive_int
_positive_float = validation.positive_float
_probability = validation.probability


def _radius(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text}")
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
    if several:  # one per --model, paired in order (a single one still serves a single --model)
        g.add_argument("--checkpoint", action="append", help="state dict for a package.module:factory model; repeat "
                       "once per --model, in order (none for a model without one)")  # fmt: skip
        g.add_argument("--model-kwargs", action="append", help="JSON keyword arguments for the factory; once for "
                       "all --model, or once per --model in order")  # fmt: skip
    else:
        g.add_argument(
            "--checkpoint", help="state dict (loaded with weights_only=True) for a package.module:factory model"
        )
        g.add_argument("--model-kwargs", default="{}", help="JSON keyword arguments for the factory")
    g.add_argument("--dataset", default="cifar10", help="RobustBench data set (default cifar10)")
    g.add_argument("--threat-model", default="L2", help="RobustBench threat model (default L2)")
    g.add_argument("--model-dir", default="./models", help="RobustBench checkpoint folder (default ./models)")
    g.add_argument(
        validation.TRUST_FLAG,
        action="store_true",
        help="allow model files whose loading can run code they carry: .pt2, torchscript:, and checkpoints "
        "that need full unpickling; only for files you made or whose author you trust",
    )


def _add_data(p: argparse.ArgumentParser, split: str) -> None:
    g = p.add_argument_group("data")
    forms = "digits | mnist:<root> | cifar10:<root> | cifar100:<root> | imagenet:<root> | <file>.pt | <file>.npz"
    g.add_argument("--data", required=True, help=forms)
    g.add_argument("--split", default=split, choices=["train", "test"], help=f"default {split}")


def _add_subset(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("subset (as in the paper repos)")
    g.add_argument("--start", type=validation.nonnegative_int, default=0, help="first data-set index")
    g.add_argument("--max", type=_positive_int, default=None, help="stop before this data-set index")
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
    p.add_argument("--seed", type=validation.seed, default=0, help=SEED_HELP)
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

    p = sub.add_parser("attack", help="robust accuracy under a torchattacks or AutoAttack adversary")
    _add_model(p, several=True)
    _add_data(p, "test")
    _add_subset(p)
    g = p.add_argument_group("adversary")
    g.add_argument("--attack", required=True, help="torchattacks class, any case (PGD, APGD, ...), autoattack-standard")
    g.add_argument("--norm", help="Linf | L2 (default: the attack's only norm)")
    g.add_argument("--eps", type=_radius, nargs="+", required=True, help="radii in [0, 1] pixel units; each is run")
    g.add_argument("--attack-option", action="append", default=[], metavar="KEY=VALUE", help="attack class option")
    g = p.add_argument_group("smoothed classifier (with --sigma)")
    g.add_argument("--sigma", type=_positive_float, help="attack the smoothed classifier with this noise level")
    g.add_argument("--noise", default="gaussian", help="noise sampler (default gaussian)")
    g.add_argument("--noise-option", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--m", type=_positive_int, default=16, help="noise draws per image for the attack (default 16)")
    g.add_argument("--n", type=_positive_int, default=10_000, help="PREDICT samples (default 10000)")
    g.add_argument("--alpha", type=_probability, default=0.001, help="PREDICT failure probability (default 0.001)")
    g.add_argument("--certified", help="certify TSV: attack its certified images below their radius, list breaks")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="samples per forward pass (default 256)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=validation.seed, default=0, help=SEED_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--out", default="attack.tsv", help="results TSV, one row per image and eps; rerunning resumes it")
    p.add_argument("--plot", help="write robust accuracy vs eps as a PNG")
    p.add_argument("--summary", help="write the summary as JSON")
    add_execution_arguments(p)
    p.set_defaults(func=cmd_attack)

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
    g.add_argument("--momentum", type=validation.nonnegative_float, help="default 0.9")
    g.add_argument("--weight-decay", type=validation.nonnegative_float, help="default 1e-4")
    g.add_argument("--lr-step", type=_positive_int, help="decay the learning rate every this many epochs (default 50)")
    g.add_argument("--lr-milestones", type=_epochs, help="comma-separated epochs to decay at, instead of --lr-step")
    g.add_argument("--lr-gamma", type=_positive_float, help="decay factor (default 0.1)")
    g = p.add_argument_group("execution")
    g.add_argument("--augment", default="none", choices=list(AUGMENTATIONS), help="per-batch augmentation")
    g.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="autocast dtype (default fp32)")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and inputs")
    g.add_argument("--deterministic", action="store_true", help="only deterministic kernels (slower on GPU)")
    g.add_argument("--checkpoint-dir", default="checkpoints", help="checkpoint every epoch; rerunning resumes")
    g = p.add_argument_group("held-out accuracy after each epoch (clean_acc, noisy_acc in train_log.csv)")
    g.add_argument("--val-split", type=_positive_float, help="hold out this fraction of the training data instead")
    g.add_argument("--val-data", help="--data source to evaluate on (default: --data's test split)")
    g.add_argument(
        "--val-images", type=validation.nonnegative_int, default=VAL_IMAGES,
        help=f"held-out images per evaluation, spread over the split (default {VAL_IMAGES}; 0: none)",
    )  # fmt: skip
    p.set_defaults(func=cmd_train)

    from .cli_mixing import add_commands  # train-mixer and tradeoff (adaptive smoothing)

    add_commands(sub)

    p = sub.add_parser("report", help="tables, plot and summary from certification TSVs; several files: a comparison")
    p.add_argument("results", nargs="+", help="TSV files written by certify (or the paper repos), radii in one norm")
    p.add_argument("--label", action="append", help="name of a run, once per file in order (default: noise and sigma)")
    p.add_argument("--radii", type=_radius, nargs="+", help="table columns (default 0, 0.25, ... to the largest)")
    p.add_argument("--format", choices=["text", "markdown", "latex", "csv"], help="comparison table format")
    p.add_argument("--table", help="write the comparison table here; .txt .md .tex .csv pick the format")
    p.add_argument("--plot", help="certified accuracy vs radius, a curve per file; .pdf/.svg: vector, .png: 200 dpi")
    p.add_argument("--summary", help="JSON summary (several files: one entry per label)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="train a small CNN on digits with Gaussian noise, certify, report")
    p.add_argument("--out-dir", default="results/demo")
    p.add_argument("--sigma", type=_positive_float, default=0.25)
    p.add_argument("--epochs", type=_positive_int, default=60)
    p.add_argument("--n", type=_positive_int, default=10_000)
    p.add_argument("--every", type=_positive_int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=validation.seed, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def _parse_kwargs(text: str) -> dict:
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--model-kwargs must be a JSON object; {err}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model-kwargs must be a JSON object; got {text!r}")
    return kwargs


def _model_kwargs(args: argparse.Namespace) -> dict | list[dict]:
    """The --model-kwargs as stored with results: one dict, or one per --model when they differ per model."""
    if args.model_kwargs is None:  # a repeatable --model-kwargs not given
        return {}
    if not isinstance(args.model_kwargs, list):
        return _parse_kwargs(args.model_kwargs)
    parsed = [_parse_kwargs(text) for text in args.model_kwargs]
    return parsed[0] if len(parsed) == 1 else parsed or {}


def _checkpoints(args: argparse.Namespace) -> list[str | None]:
    """One --checkpoint per --model ("none" for a model without one); none given means none for each."""
    models = args.model if isinstance(args.model, list) else [args.model]
    given = args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint] * len(models)
    if not given:
        return [None] * len(models)
    if len(given) != len(models):
        msg = f"--checkpoint given {len(given)} times for {len(models)} --model; give one per --model, in the same "
        raise ValueError(msg + "order (--checkpoint none for a model without one)")
    return [None if c in (None, "", "none") else c for c in given]


def _checkpoint_setting(args: argparse.Namespace) -> str | list[str] | None:
    """--checkpoint as stored with results: the one file (or None), or the list when there are several."""
    given = args.checkpoint
    return given[0] if isinstance(given, list) and len(given) == 1 else given or None


def _kwargs_per_model(args: argparse.Namespace) -> list[dict]:
    kwargs, count = _model_kwargs(args), len(args.model) if isinstance(args.model, list) else 1
    if not isinstance(kwargs, list):
        return [kwargs] * count
    if len(kwargs) != count:
        msg = f"--model-kwargs given {len(kwargs)} times for {count} --model; give it once for all, or once per "
        raise ValueError(msg + "--model in the same order")
    return kwargs


def _load_model(host: Host, args: argparse.Namespace, source: str, position: int = 0):
    request = ModelRequest(
        source,
        _checkpoints(args)[position],
        _kwargs_per_model(args)[position],
        args.dataset,
        args.threat_model,
        args.model_dir,
        trust=args.trust_model_file,
    )
    return host.load_model(request)


def _noise_options(args: argparse.Namespace) -> dict:
    options = _options(args.noise_option, "--noise-option")
    if "sigma" in options:
        raise ValueError(f"--noise-option sigma={options['sigma']}: give the noise level with --sigma")
    return options


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


def _classifier(host: Host, args: argparse.Namespace, mixer_options: dict):
    """The --model classifier, or the --mixer combination of several."""
    _checkpoints(args), _kwargs_per_model(args)  # counts checked before any model is loaded
    models = [_load_model(host, args, source, i) for i, source in enumerate(args.model)]
    if args.mixer:
        return host.mixer(args.mixer, models, **mixer_options)
    if len(models) > 1:
        mixers = ", ".join(host.names("mixer")) or "none installed"
        raise ValueError(f"{len(models)} --model given; combine them with --mixer (available: {mixers})")
    return models[0]


def _record(
    host: Host, args: argparse.Namespace, settings: dict, model, dataset, indices, device, precision: str
) -> dict:
    """Check the data against the model (as it will run, on ``device``) and return the run's provenance."""
    from .runner import check_dataset

    num_classes = check_dataset(model, dataset, indices, device)
    record = provenance.environment(device) | {
        "models": args.model,
        "num_classes": num_classes,
        "subset": {"start": args.start, "max": args.max, "every": args.every, "limit": args.limit},
        "images": len(indices),
        "precision": precision,
    }
    if settings.get("noise_option") is not None:
        record["noise"] = provenance.component(host, "noise", args.noise, settings["noise_option"])
    if args.mixer:
        record["mixer"] = provenance.component(host, "mixer", args.mixer, settings["mixer_option"])
    return record


def cmd_certify(args: argparse.Namespace) -> int:
    import datetime

    import torch

    from .distributed import init_world, leave_world
    from .execution import auto_batch_size, prepare_model
    from .runner import certify_dataset, predict_dataset, resolve_device, run_sharded

    certify = args.command == "certify"
    if certify and args.n0 > args.n:
        raise ValueError(f"--n0 ({args.n0}) must not exceed --n ({args.n})")
    for option in ("out", "summary"):  # before any work: a bad path must not cost a finished run
        validation.check_output_file(getattr(args, option), f"--{option}")
    validation.check_plot_path(args.plot)
    # Everything that changes the rows is stored with --out, so a resumed file never mixes configurations.
    settings = {
        k: getattr(args, k)
        for k in ("model", "mixer", "checkpoint", "data", "split", "sigma", "noise", "n", "alpha", "seed")
    }
    settings["checkpoint"] = _checkpoint_setting(args)
    settings |= {
        "model_kwargs": _model_kwargs(args),
        "noise_option": _noise_options(args),
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
    if certify:  # an unsupported pair or option fails before any model is loaded or any sample drawn
        host.check_compatible(args.certifier, args.noise)
        certifier = host.certifier(args.certifier, **settings["certifier_option"])
        if getattr(certifier, "class_selection", "n0") == "label":
            settings["certifies"] = LABEL_CLAIM
    device = resolve_device(args.device)
    # torchrun: each process takes its share of the images. Processes only wait for each other at two barriers,
    # so gloo (CPU) suffices, and a process done early may wait at the last one for as long as the run lasts.
    world = init_world("cpu", timeout=datetime.timedelta(days=365))
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)  # else every process would also open a context on GPU 0
    noise = host.noise(args.noise, sigma=args.sigma, **settings["noise_option"])
    model = _classifier(host, args, settings["mixer_option"])
    dataset = host.load_data(DataRequest(args.data, args.split))
    indices = select_indices(len(dataset), start=args.start, stop=args.max, every=args.every, limit=args.limit)
    settings["model_sha256"] = provenance.weights_sha256(model)  # the weights as loaded; others change the rows
    model = prepare_model(model, device, execution)
    batch_size = args.batch_size
    if batch_size == "auto":
        batch_size = auto_batch_size(model, dataset[indices[0]][0].shape, device, limit=args.n)
        if world.main:
            print(f"--batch-size auto: {batch_size}", flush=True)
    record = _record(host, args, settings, model, dataset, indices, device, execution.precision)
    if certify and hasattr(certifier, "check_model"):  # e.g. mixed: refuse a classifier it cannot certify, now
        certifier.check_model(model)
    if certify:
        record["certifier"] = provenance.component(host, "certifier", args.certifier, settings["certifier_option"])
    common = dict(
        n=args.n,
        alpha=args.alpha,
        batch_size=batch_size,
        seed=args.seed,
        device=device,
        progress=not args.no_progress and world.main,
    )
    if certify:
        columns = CERTIFY_COLUMNS

        def work(results, share):
            certify_dataset(model, dataset, noise, certifier, results, indices=share, n0=args.n0, **common)
    else:
        columns = PREDICT_COLUMNS

        def work(results, share):
            predict_dataset(model, dataset, noise, results, indices=share, **common)

    rows = run_sharded(work, args.out, columns, settings, indices, world, provenance=record)
    leave_world(world)
    if not world.main:
        return 0  # the main process merged the shares into --out and reports them
    norm = noise.norm
    extra = {"norm": norm}
    if certify:
        extra |= {"certifier": args.certifier, "certifies": settings.get("certifies", "g(x) and its robustness")}
        title = f"certify {args.out} ({args.certifier}, {norm} radius, sigma={args.sigma}, n={args.n})"
        if "certifies" in settings:
            title += f"\n{LABEL_CLAIM}"
        print(format_table(rows, title=title))
    else:
        abstained = sum(row.predict == ABSTAIN for row in rows)
        accuracy = sum(row.correct for row in rows) / len(rows)
        print(f"predict {args.out} (sigma={args.sigma}, n={args.n}, alpha={args.alpha})")
        print(f"accuracy {100 * accuracy:.1f}%, abstained {abstained} of {len(rows)}")
    if certify and args.plot:
        title = f"{args.certifier}, N = {args.n:,}, α = {args.alpha:g}, {len(rows)} images"
        plot_certified_accuracy({f"{args.noise} σ = {args.sigma:g}": rows}, args.plot, title=title, norm=norm)
        print(f"plot: {args.plot}")
    if args.summary:
        write_summary(rows, args.summary, record=read_sidecar(args.out), extra=extra)
        print(f"summary: {args.summary}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    import datetime

    import torch

    from . import evaluation as ev
    from .distributed import init_world, leave_world
    from .execution import prepare_model
    from .runner import resolve_device, run_sharded

    options = _options(args.attack_option, "--attack-option")
    adversary = ev.make_adversary(args.attack, args.norm, options, smoothed=args.sigma is not None)
    eps = ev.check_eps(args.eps)
    if args.certified and args.sigma is None:
        raise ValueError("--certified cross-checks a smoothed classifier: give the --sigma it was certified with")
    for option in ("out", "summary"):  # before any work: a bad path must not cost a finished run
        validation.check_output_file(getattr(args, option), f"--{option}")
    validation.check_plot_path(args.plot)
    # Everything that changes a row is stored with --out; more --eps values on a rerun only add rows.
    settings = {k: getattr(args, k) for k in ("model", "mixer", "checkpoint", "data", "split", "seed", "batch_size")}
    settings["checkpoint"] = _checkpoint_setting(args)
    settings |= {"attack": adversary.name, "norm": adversary.norm, "attack_option": options}
    settings |= {"model_kwargs": _model_kwargs(args), "mixer_option": _options(args.mixer_option, "--mixer-option")}
    if args.sigma is not None:
        settings |= {k: getattr(args, k) for k in ("sigma", "noise", "m", "n", "alpha", "certified")}
        settings["noise_option"] = _noise_options(args)
    execution = execution_from_args(args)
    settings |= execution.settings()  # the robustness measured is that of the model as run
    host = Host()
    device = resolve_device(args.device)
    world = init_world("cpu", timeout=datetime.timedelta(days=365))  # torchrun: as certify, whole attack groups
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    noise = None if args.sigma is None else host.noise(args.noise, sigma=args.sigma, **settings["noise_option"])
    model = _classifier(host, args, settings["mixer_option"])
    dataset = host.load_data(DataRequest(args.data, args.split))
    indices = select_indices(len(dataset), start=args.start, stop=args.max, every=args.every, limit=args.limit)
    settings["model_sha256"] = provenance.weights_sha256(model)  # the weights as loaded; others change the rows
    model = prepare_model(model, device, execution)
    record = _record(host, args, settings, model, dataset, indices, device, execution.precision)
    targets = below = certified = certify_alpha = None
    if args.certified:
        chosen = set(indices)
        certified, certify_alpha = ev.read_certified(args.certified, args.sigma, args.noise)
        certified = [row for row in certified if row.idx in chosen]
        ev.check_certified(dataset, certified, adversary, noise)
        targets, below = ev.certified_targets(certified)
        indices = [i for i in indices if i in targets]
    smoothing = None if noise is None else ev.Smoothing(noise, m=args.m, n=args.n, alpha=args.alpha)

    def work(results, share):
        ev.attack_dataset(
            model, dataset, adversary, results, indices=share, eps=eps, smoothing=smoothing,
            batch_size=args.batch_size, seed=args.seed, device=device, progress=not args.no_progress and world.main,
            targets=targets, below=below,
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
    print(ev.report_attack(rows, adversary, title=title, certified=certified, certified_path=args.certified,
                           alphas=alphas, plot=args.plot, summary=args.summary,
                           record=read_sidecar(args.out)))  # fmt: skip
    return 0


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The --recipe's schedule, overridden by every schedule flag given explicitly."""
    schedule = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_step", "lr_milestones", "lr_gamma")
    chosen = {k: getattr(args, k) for k in schedule if getattr(args, k) is not None}
    execution = {k: getattr(args, k) for k in ("seed", "augment", "precision", "channels_last", "deterministic")}
    return TrainConfig(**(RECIPES[args.recipe] | chosen | execution))


def _held_out(host: Host, args: argparse.Namespace, dataset):
    """(training data, held-out data or None) for cmd_train: --val-split, --val-data, or --data's test split."""
    from .training import hold_out

    if args.val_split is not None and args.val_data is not None:
        raise ValueError("give --val-split or --val-data, not both")
    if args.val_images == 0:
        return dataset, None
    if args.val_split is not None:
        return hold_out(dataset, args.val_split, args.seed)
    if args.val_data is not None:
        return dataset, host.load_data(DataRequest(args.val_data, "test"))
    if args.split == "train" and not args.data.lower().endswith((".pt", ".npz")):
        return dataset, host.load_data(DataRequest(args.data, "test"))
    print(f"rs-plugins: --data {args.data} has no other split: no held-out accuracy (give --val-split or --val-data)")
    return dataset, None


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .distributed import init_world, leave_world
    from .runner import resolve_device
    from .training import train

    config = train_config(args)
    validation.check_output_dir(args.checkpoint_dir, "--checkpoint-dir")
    device = resolve_device(args.device)
    world = init_world(device.type)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    host = Host()
    loss_options = _options(args.loss_option, "--loss-option")
    noise_options = _noise_options(args)
    noise = host.noise(args.noise, sigma=args.sigma, **noise_options)
    loss = host.loss(args.loss, **loss_options)
    torch.manual_seed(args.seed)  # the initial weights too depend on --seed alone, not on what ran before
    model = _load_model(host, args, args.model)
    dataset = host.load_data(DataRequest(args.data, args.split))
    settings = {"loss": args.loss, "loss_option": loss_options, "noise": args.noise, "noise_option": noise_options}
    settings |= {"sigma": args.sigma, "model": args.model, "data": args.data, "split": args.split}
    settings["processes"] = world.size  # noise is seeded per process: another count would not resume exactly
    dataset, val_data = _held_out(host, args, dataset)
    settings |= {"val_split": args.val_split, "val_data": args.val_data, "val_images": args.val_images}
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
        val_data=val_data,
        val_images=args.val_images,
    )
    leave_world(world)
    if world.main:
        print(f"model state dict: {Path(args.checkpoint_dir) / 'model.pt'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from . import compare

    for option in ("summary", "table"):
        validation.check_output_file(getattr(args, option), f"--{option}")
    validation.check_plot_path(args.plot)
    fmt = compare.table_format(args.table, args.format)
    runs = compare.load_runs(args.results, args.label)  # refuses radii in different norms
    for run in runs:
        claim = f"\n{run.settings['certifies']}" if "certifies" in run.settings else ""
        print(format_table(run.rows, title=f"{run.path} ({run.norm} radius){claim}"))
        print(format_provenance(run.settings) if run.settings else f"provenance: none ({run.path}.json is missing)\n")
    notes = compare.comparison_notes(runs)
    if len(runs) > 1 or args.table or args.format:
        table = compare.format_comparison(runs, fmt, args.radii, notes)
        print(table if fmt == "text" or not args.table else compare.format_comparison(runs, "text", args.radii, notes))
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the two real commands a user would type, and show them."""
    validation.check_output_dir(args.out_dir, "--out-dir")
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
    """Run a command. Mistakes in the input (RsPluginError, ValueError, OSError such as a missing or unwritable
    file) print one line and exit 2; Ctrl-C exits 130 (finished rows and checkpoints are kept); anything else is
    a bug, shown with its traceback and exit 3."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m rs_plugins -- certify --n ...`: the `--` keeps torchrun off our flags
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RsPluginError, ValueError, OSError) as err:
        print(f"rs-plugins: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rs-plugins: interrupted; finished results are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(
            "rs-plugins: internal error: the traceback above is a bug in rs-plugins or in a plugin it names, not a "
            "mistake in your input; please report it with the command line",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
