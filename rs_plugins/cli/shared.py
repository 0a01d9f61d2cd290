"""Argument groups, option parsing and model loading shared by the ``rs-plugins`` commands."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os

from .. import file_checks, validation
from ..certify.execution import batch_size_arg
from ..host import Host  # the commands call shared.Host(): one place a test swaps in its own host
from ..results import provenance
from ..results.writer_lock import one_writer
from ..types import ModelRequest

SEED_HELP = "seed; each image's noise is seeded from (seed, index), so reruns and resumed runs agree"


positive_int = validation.positive_int
positive_float = validation.positive_float
probability_arg = validation.probability


def writes(dest: str, *, folder: bool = False):
    """Decorator for a command that appends to or resumes the file (or folder) of option ``dest``: before anything
    else, check the path and take its writer lock in the main process (torchrun's rank 0), held until the command
    returns, so a second process on the same output is refused before it loads a model."""

    def decorate(command):
        @functools.wraps(command)
        def run(args: argparse.Namespace) -> int:
            path, flag = getattr(args, dest), "--" + dest.replace("_", "-")
            (file_checks.check_output_dir if folder else file_checks.check_output_file)(path, flag)
            main = int(os.environ.get("RANK", "0")) == 0  # the other processes lock their part files only
            with one_writer(path, flag, folder=folder) if main else contextlib.nullcontext():
                return command(args)

        return run

    return decorate


def radius_arg(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text}")
    return value


def epoch_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated epochs like 200,400; got {text}") from None


def parse_options(pairs: list[str], flag: str) -> dict:
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


FACTORY_WEIGHTS_HELP = (
    "use a package.module:factory --model without --checkpoint, with the weights its factory builds: its own (a "
    "factory that loads or sets them) or random initial ones (an untrained model, e.g. for benchmarks); without it "
    "such a model is refused. Also spelled --random-weights (its former name)"
)


def add_model(
    p: argparse.ArgumentParser, *, several: bool, required: bool = True, role: str = "", evaluates: bool = True
) -> None:
    """The --model options; ``evaluates``: the command runs the model as given (not training it from scratch), so a
    factory without --checkpoint needs --factory-weights."""
    g = p.add_argument_group("model")
    help_ = role + "zoo:<name> | robustbench:<name> | package.module:factory | torchscript:<file> | <file>.pt2 | "
    help_ += "timm:<name> | hf:<owner>/<name>"
    if several:
        g.add_argument("--model", action="append", required=True, help=help_ + " (repeat to combine with --mixer)")
        g.add_argument("--mixer", help="mixer that combines several --model classifiers")
        g.add_argument("--mixer-option", action="append", default=[], metavar="KEY=VALUE")
    else:
        g.add_argument("--model", required=required, help=help_)
    if several:  # one per --model, paired in order (a single one still serves a single --model)
        g.add_argument("--checkpoint", action="append", help="state dict for a package.module:factory model; repeat "
                       "once per --model, in order (none for a model without one)")  # fmt: skip
        g.add_argument("--model-kwargs", action="append", help="JSON keyword arguments for the factory; once for "
                       "all --model, or once per --model in order")  # fmt: skip
    else:
        g.add_argument(
            "--checkpoint", help="state dict (loaded with weights_only=True) for a package.module:factory model, "
            "or a zoo: entry's file in its authors' layout"
        )
        g.add_argument("--model-kwargs", default="{}", help="JSON keyword arguments for the factory")
    if evaluates:  # a factory without --checkpoint would be evaluated with the weights it builds
        g.add_argument("--factory-weights", "--random-weights", dest="factory_weights", action="store_true",
                       help=FACTORY_WEIGHTS_HELP)  # fmt: skip
    else:  # train: the factory's initial weights are where training starts
        p.set_defaults(factory_weights=True)
    g.add_argument("--dataset", default="cifar10", help="RobustBench data set (default cifar10)")
    g.add_argument("--threat-model", default="L2", help="RobustBench threat model (default L2)")
    g.add_argument("--model-dir", default="./models", help="RobustBench checkpoint folder, downloaded into when a "
                   "checkpoint is missing (default ./models)")  # fmt: skip
    g.add_argument("--zoo-dir", help="the authors' archive, unpacked, for --model zoo:NAME: nothing is downloaded")
    g.add_argument(
        file_checks.TRUST_FLAG,
        action="store_true",
        help="allow model files whose loading can run code they carry: .pt2, torchscript:, and checkpoints "
        "that need full unpickling; only for files you made or whose author you trust",
    )


def add_denoiser(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("denoised smoothing")
    g.add_argument("--denoiser", metavar="NAME[:PATH]", help="classify denoiser(x + delta): e.g. diffusion:DIR "
                   "(a diffusers UNet2DModel + DDPMScheduler folder, or a hub id such as google/ddpm-cifar10-32), "
                   "dncnn:zoo:NAME (rs-plugins zoo); see rs-plugins plugins")  # fmt: skip
    g.add_argument("--denoiser-option", action="append", default=[], metavar="KEY=VALUE")


def with_denoiser(host: Host, args: argparse.Namespace, model, settings: dict):
    """``model`` composed with the --denoiser built for --sigma (``model`` itself without one).

    Stores the denoiser's name, path, options, weights' hash and own settings in ``settings["denoiser"]``.
    """
    from ..certify.denoising import DenoisedClassifier, denoiser_settings, parse_denoiser

    options = parse_options(args.denoiser_option, "--denoiser-option")
    if not args.denoiser:
        if options:
            raise ValueError("--denoiser-option given without --denoiser")
        return model
    if args.sigma is None:
        raise ValueError("--denoiser denoises the smoothing noise: give --sigma")
    name, path = parse_denoiser(args.denoiser)
    if path is None and name not in host.names("denoiser") and any(c in name for c in "/\\."):
        installed = ", ".join(host.names("denoiser")) or "none installed"
        raise ValueError(f"--denoiser {name}: looks like a path, but --denoiser takes NAME or NAME:PATH, e.g. "
                         f"--denoiser dncnn:{name} for a denoiser.pt of train-denoiser (denoisers: {installed})")
    for key in ("sigma", "path"):
        if key in options:
            raise ValueError(f"--denoiser-option {key}=...: give it with --sigma / --denoiser NAME:PATH")
    denoiser = host.denoiser(name, sigma=args.sigma, path=path, **options)
    settings["denoiser"] = denoiser_settings(name, path, options, denoiser)
    return DenoisedClassifier(model, denoiser)


def add_data(p: argparse.ArgumentParser, split: str) -> None:
    g = p.add_argument_group("data")
    forms = "digits | mnist[:<root>] | cifar10[:<root>] | cifar100[:<root>] | imagenet:<root> | <file>.pt | <file>.npz"
    g.add_argument("--data", required=True, help=forms + " (without a root: the cache, downloaded into on first use)")
    g.add_argument("--split", default=split, choices=["train", "test"], help=f"default {split}")
    add_offline(g)


def add_offline(g) -> None:
    """``--offline``: nothing is downloaded (also RS_PLUGINS_OFFLINE=1 or HF_HUB_OFFLINE=1); ``cli.main`` applies it."""
    g.add_argument("--offline", action="store_true", help="download nothing: data sets, RobustBench and zoo models, "
                   "diffusers hub ids must already be on disk or in their caches (also RS_PLUGINS_OFFLINE=1)")


def add_subset(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("subset (as in the paper repos)")
    g.add_argument("--start", type=validation.nonnegative_int, default=0, help="first data-set index")
    g.add_argument("--max", type=positive_int, default=None, help="stop before this data-set index")
    g.add_argument("--every", "--skip", dest="every", type=positive_int, default=1, help="every k-th index (--skip k)")
    g.add_argument("--limit", type=positive_int, default=None, help="at most this many images")


def add_run(p: argparse.ArgumentParser, *, batch_size: int | None, sigma_help: str = "") -> None:
    """--sigma (required unless ``sigma_help`` says when it may be left out), the noise, batch size, device, seed."""
    p.add_argument("--sigma", type=positive_float, required=not sigma_help,
                   help="noise level in [0, 1] pixel units" + (f"; {sigma_help}" if sigma_help else ""))  # fmt: skip
    p.add_argument("--noise", default="gaussian", help="noise sampler (default gaussian)")
    p.add_argument("--noise-option", action="append", default=[], metavar="KEY=VALUE")
    default = f"default {batch_size}" if batch_size else "default from --recipe (256; macer 64)"
    if batch_size:  # certify, predict: samples per forward pass; auto measures the GPU's memory
        default += "; auto: fill ~60%% of the GPU's free memory (CPU: 400)"
    batch_type = batch_size_arg if batch_size else positive_int
    p.add_argument("--batch-size", type=batch_type, default=batch_size, help=default)
    p.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=validation.seed, default=0, help=SEED_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _parse_kwargs(text: str) -> dict:
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--model-kwargs must be a JSON object; {err}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model-kwargs must be a JSON object; got {text!r}")
    return kwargs


def model_kwargs_setting(args: argparse.Namespace) -> dict | list[dict]:
    """The --model-kwargs as stored with results: one dict, or one per --model when they differ per model."""
    if args.model_kwargs is None:  # a repeatable --model-kwargs not given
        return {}
    if not isinstance(args.model_kwargs, list):
        return _parse_kwargs(args.model_kwargs)
    parsed = [_parse_kwargs(text) for text in args.model_kwargs]
    return parsed[0] if len(parsed) == 1 else parsed or {}


def checkpoint_list(args: argparse.Namespace) -> list[str | None]:
    """One --checkpoint per --model ("none" for a model without one); none given means none for each."""
    models = args.model if isinstance(args.model, list) else [args.model]
    given = args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint] * len(models)
    if not given:
        return [None] * len(models)
    if len(given) != len(models):
        msg = f"--checkpoint given {len(given)} times for {len(models)} --model; give one per --model, in the same "
        raise ValueError(msg + "order (--checkpoint none for a model without one)")
    return [None if c in (None, "", "none") else c for c in given]


def checkpoint_setting(args: argparse.Namespace) -> str | list[str] | None:
    """--checkpoint as stored with results: the one file (or None), or the list when there are several."""
    given = args.checkpoint
    return given[0] if isinstance(given, list) and len(given) == 1 else given or None


def kwargs_per_model(args: argparse.Namespace) -> list[dict]:
    kwargs, count = model_kwargs_setting(args), len(args.model) if isinstance(args.model, list) else 1
    if not isinstance(kwargs, list):
        return [kwargs] * count
    if len(kwargs) != count:
        msg = f"--model-kwargs given {len(kwargs)} times for {count} --model; give it once for all, or once per "
        raise ValueError(msg + "--model in the same order")
    return kwargs


def load_model(host: Host, args: argparse.Namespace, source: str, position: int = 0):
    """The ``position``-th --model with its --checkpoint and --model-kwargs; a factory without --checkpoint is
    refused unless --factory-weights (``sources.models.refuse_untrained``: the rule the Python API applies too)."""
    request = ModelRequest(
        source,
        checkpoint_list(args)[position],
        kwargs_per_model(args)[position],
        args.dataset,
        args.threat_model,
        args.model_dir,
        trust=args.trust_model_file,
        factory_weights=args.factory_weights,
    )
    return host.load_model(request)


def noise_options_of(args: argparse.Namespace) -> dict:
    options = parse_options(args.noise_option, "--noise-option")
    if "sigma" in options:
        raise ValueError(f"--noise-option sigma={options['sigma']}: give the noise level with --sigma")
    return options


def build_classifier(host: Host, args: argparse.Namespace, mixer_options: dict):
    """The --model classifier, or the --mixer combination of several."""
    checkpoint_list(args), kwargs_per_model(args)  # counts checked before any model is loaded
    models = [load_model(host, args, source, i) for i, source in enumerate(args.model)]
    if args.mixer:
        mixer = host.mixer(args.mixer, models, **mixer_options)
        if hasattr(mixer, "trainable") and mixer_options.get("checkpoint") is None and not args.factory_weights:
            raise ValueError(
                f"--mixer {args.mixer} has no --mixer-option checkpoint=MIXING_PT, so its mixing network would run "
                "with random initial weights; train it with rs-plugins train-mixer and give the mixing.pt it writes, "
                "or --factory-weights to evaluate it untrained"
            )
        return mixer
    if len(models) > 1:
        mixers = ", ".join(host.names("mixer")) or "none installed"
        raise ValueError(f"{len(models)} --model given; combine them with --mixer (available: {mixers})")
    return models[0]


def record_run(
    host: Host, args: argparse.Namespace, settings: dict, model, dataset, indices, device, precision: str
) -> dict:
    """Check the data against the model (as it will run, on ``device``) and return the run's provenance."""
    from ..certify.runner import check_dataset

    num_classes = check_dataset(model, dataset, indices, device)
    from ..sources import fetch, zoo

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
    if settings.get("denoiser"):
        record["denoiser"] = provenance.component(host, "denoiser", settings["denoiser"]["name"],
                                                  settings["denoiser"]["options"])  # fmt: skip
    if fetch.fetched():  # what was downloaded or taken from a cache, with its SHA-256 (the first download's, if
        record["downloads"] = fetch.fetched()  # the authors publish none)
    entries = zoo.provenance(args.model, getattr(args, "denoiser", None))
    if entries:
        record["zoo"] = entries
    return record
