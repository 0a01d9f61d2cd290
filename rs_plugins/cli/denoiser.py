"""``rs-plugins train-denoiser``: train Salman et al.'s DnCNN for ``--denoiser dncnn:`` (parser and a thin call).

The work lives in ``rs_plugins.train.denoiser``; this module only turns flags into its arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import validation
from ..train.config import AUGMENTATIONS, PRECISIONS
from ..train.denoiser import NEEDS_CLASSIFIER, OBJECTIVES, OPTIMIZERS, DenoiserTrainConfig
from ..train.held_out import VAL_IMAGES
from ..train.schedules import LR_SCHEDULES
from ..types import DataRequest
from . import shared, train


def add_train_denoiser(sub) -> None:
    """Add ``train-denoiser`` to the ``rs-plugins`` sub-parsers."""
    d = DenoiserTrainConfig()
    p = sub.add_parser("train-denoiser", help="train a DnCNN denoiser (mse, stability, classification) for "
                       "--denoiser dncnn:")  # fmt: skip
    shared.add_model(p, several=False, required=False, role="frozen classifier (needed by --objective stability "
                      "and classification; adds its accuracy to the log): ")  # fmt: skip
    shared.add_data(p, "train")
    p.add_argument("--sigma", type=shared.positive_float, required=True, help="noise level in [0, 1] pixel units")
    p.add_argument("--noise", default="gaussian", help="noise sampler (default gaussian)")
    p.add_argument("--noise-option", action="append", default=[], metavar="KEY=VALUE")
    g = p.add_argument_group("denoiser (the authors' DnCNN: depth 17, width 64)")
    g.add_argument("--objective", default=d.objective, choices=OBJECTIVES,
                   help="mse: ||D(x+delta) - x||^2; stability: CE(f(D(x+delta)), argmax f(x)); classification: "
                   "CE(f(D(x+delta)), y) (mse)")  # fmt: skip
    g.add_argument("--depth", type=shared.positive_int, default=17, help="convolutions (default 17)")
    g.add_argument("--width", type=shared.positive_int, default=64, help="channels of the hidden layers (default 64)")
    g.add_argument("--init", metavar="DENOISER_PT", help="start from these weights (e.g. an mse denoiser, to "
                   "fine-tune with stability); their architecture replaces --depth/--width")  # fmt: skip
    g = p.add_argument_group("schedule (the authors' train_denoiser.py defaults)")
    g.add_argument("--epochs", type=shared.positive_int, default=d.epochs, help=f"default {d.epochs}")
    g.add_argument("--batch-size", type=shared.positive_int, default=d.batch_size, help=f"default {d.batch_size}")
    g.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help="default adam")
    g.add_argument("--lr", type=shared.positive_float, default=d.lr, help=f"default {d.lr:g}")
    g.add_argument("--momentum", type=validation.nonnegative_float, default=d.momentum, help="sgd only (0.9)")
    g.add_argument("--weight-decay", type=validation.nonnegative_float, default=d.weight_decay, help="default 1e-4")
    g.add_argument("--lr-step", type=shared.positive_int, default=d.lr_step, help="decay every this many epochs (30)")
    g.add_argument("--lr-gamma", type=shared.positive_float, default=d.lr_gamma, help="decay factor (0.1)")
    g.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES, help="standard (default), or "
                   "step-epoch: each decay one epoch later, as the authors' scheduler.step(epoch) ran it")  # fmt: skip
    g = p.add_argument_group("execution")
    g.add_argument("--augment", default=d.augment, choices=list(AUGMENTATIONS),
                   help="per-batch augmentation (default none; the authors crop-flip CIFAR-10)")  # fmt: skip
    g.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="autocast dtype (default fp32)")
    g.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    g.add_argument("--seed", type=validation.seed, default=0, help="seed of the initial weights, shuffling, noise")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--checkpoint-dir", default="denoiser", help="checkpoint every epoch; rerunning resumes")
    g = p.add_argument_group("held-out metrics after each epoch (psnr; with --model its accuracies)")
    g.add_argument("--val-split", type=shared.positive_float, help="hold out this fraction of the training data")
    g.add_argument("--val-data", help="--data source to evaluate on (default: --data's test split)")
    g.add_argument("--val-images", type=validation.nonnegative_int, default=VAL_IMAGES,
                   help=f"held-out images per evaluation (default {VAL_IMAGES}; 0: none)")  # fmt: skip
    p.set_defaults(func=cmd_train_denoiser)


@shared.writes("checkpoint_dir", folder=True)
def cmd_train_denoiser(args: argparse.Namespace) -> int:
    import os

    import torch

    from ..certify.runner import check_dataset, resolve_device
    from ..results.provenance import weights_sha256
    from ..train.denoiser import FILE, DnCNN, load_dncnn, train_denoiser

    schedule = ("objective", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "lr_step")
    execution = ("lr_gamma", "lr_schedule", "augment", "seed", "precision")
    config = DenoiserTrainConfig(**{k: getattr(args, k) for k in (*schedule, *execution)})
    if config.objective in NEEDS_CLASSIFIER and not args.model:
        raise ValueError(f"--objective {config.objective} needs --model: the frozen classifier D is trained for")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("train-denoiser runs in one process; start it without torchrun (it uses one device)")
    device = resolve_device(args.device)
    host = shared.Host()
    noise_options = shared.noise_options_of(args)
    noise = host.noise(args.noise, sigma=args.sigma, **noise_options)
    classifier = shared.load_model(host, args, args.model) if args.model else None
    dataset = host.load_data(DataRequest(args.data, args.split))
    if classifier is not None:  # it takes these images (train_denoiser checks every label for classification)
        check_dataset(classifier, dataset, [0], device)
    channels = torch.as_tensor(dataset[0][0]).shape[0]
    if args.init:
        denoiser, _ = load_dncnn(args.init, "--init")
        if denoiser.channels != channels:
            raise ValueError(f"--init {args.init}: the DnCNN takes {denoiser.channels}-channel images; --data has "
                             f"{channels}")  # fmt: skip
    else:
        torch.manual_seed(args.seed)  # the initial weights depend on --seed alone
        denoiser = DnCNN(channels, args.depth, args.width)
    settings = {k: getattr(args, k) for k in ("sigma", "noise", "model", "data", "split", "init")}
    settings |= {"noise_option": noise_options, "architecture": denoiser.architecture()}
    settings |= {"checkpoint": args.checkpoint, "model_kwargs": shared.model_kwargs_setting(args)}
    settings["model_sha256"] = weights_sha256(classifier) if classifier is not None else None
    dataset, val_data = train.held_out_data(host, args, dataset)
    settings |= {"val_split": args.val_split, "val_data": args.val_data, "val_images": args.val_images}
    train_denoiser(denoiser, dataset, noise, config=config, checkpoint_dir=args.checkpoint_dir, classifier=classifier,
                   device=device, progress=not args.no_progress, settings=settings, val_data=val_data,
                   val_images=args.val_images)  # fmt: skip
    path = Path(args.checkpoint_dir) / FILE
    print(f"denoiser: {path}  (use: --denoiser dncnn:{path} --sigma {args.sigma:g})")
    return 0
