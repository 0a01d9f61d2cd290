"""``rs-plugins train``: train a base classifier with a loss plugin."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import validation
from ..train.config import AUGMENTATIONS, PRECISIONS, RECIPES, TrainConfig
from ..train.held_out import VAL_IMAGES
from ..train.schedules import LR_SCHEDULES
from ..types import DataRequest
from . import shared
from .shared import epoch_list, positive_float, positive_int


def add_train(sub) -> None:
    """Add ``train`` to the ``rs-plugins`` sub-parsers."""
    p = sub.add_parser("train", help="train a base classifier with a loss plugin")
    shared.add_model(p, several=False, evaluates=False)
    shared.add_data(p, "train")
    shared.add_run(p, batch_size=None, sigma_help="not needed by --loss standard (then it sets only noisy_acc's noise)")
    p.add_argument("--mixer", help=argparse.SUPPRESS)  # refused with a pointer to train-mixer, see cmd_train
    p.add_argument("--loss", default="gaussian", help="training loss (default gaussian); see `rs-plugins plugins`")
    p.add_argument("--loss-option", action="append", default=[], metavar="KEY=VALUE", help="technique option")
    g = p.add_argument_group("schedule (SGD; explicit flags override the recipe)")
    g.add_argument("--recipe", default="cifar10", choices=sorted(RECIPES), help="papers' schedule (default cifar10)")
    g.add_argument("--epochs", type=positive_int, help="default 150")
    g.add_argument("--lr", type=positive_float, help="default 0.1")
    g.add_argument("--momentum", type=validation.nonnegative_float, help="default 0.9")
    g.add_argument("--weight-decay", type=validation.nonnegative_float, help="default 1e-4")
    g.add_argument("--lr-step", type=positive_int, help="decay the learning rate every this many epochs (default 50)")
    g.add_argument("--lr-milestones", type=epoch_list, help="comma-separated epochs to decay at, instead of --lr-step")
    g.add_argument("--lr-gamma", type=positive_float, help="decay factor (default 0.1)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="standard (default), or step-epoch: each decay one "
                   "epoch later, as the Jeong et al. scripts' scheduler.step(epoch) ran it")  # fmt: skip
    g = p.add_argument_group("execution")
    g.add_argument("--augment", default="none", choices=list(AUGMENTATIONS), help="per-batch augmentation")
    g.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="autocast dtype (default fp32)")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and inputs")
    g.add_argument("--deterministic", action="store_true", help="only deterministic kernels (slower on GPU)")
    g.add_argument("--checkpoint-dir", default="checkpoints", help="checkpoint every epoch; rerunning resumes")
    g = p.add_argument_group("held-out accuracy after each epoch (clean_acc, noisy_acc in train_log.csv)")
    g.add_argument("--val-split", type=positive_float, help="hold out this fraction of the training data instead")
    g.add_argument("--val-data", help="--data source to evaluate on (default: --data's test split)")
    g.add_argument(
        "--val-images", type=validation.nonnegative_int, default=VAL_IMAGES,
        help=f"held-out images per evaluation, spread over the split (default {VAL_IMAGES}; 0: none)",
    )  # fmt: skip
    p.set_defaults(func=cmd_train)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The --recipe's schedule, overridden by every schedule flag given explicitly."""
    schedule = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_step", "lr_milestones", "lr_gamma",
                "lr_schedule")  # fmt: skip
    chosen = {k: getattr(args, k) for k in schedule if getattr(args, k) is not None}
    execution = {k: getattr(args, k) for k in ("seed", "augment", "precision", "channels_last", "deterministic")}
    return TrainConfig(**(RECIPES[args.recipe] | chosen | execution))


def held_out_data(host: shared.Host, args: argparse.Namespace, dataset):
    """(training data, held-out data or None) for cmd_train: --val-split, --val-data, or --data's test split."""
    from ..train.held_out import hold_out

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


def noise_for(host: shared.Host, args: argparse.Namespace, loss, noise_options: dict):
    """The --noise at --sigma; None without --sigma, which only a loss that trains without noise allows."""
    if args.sigma is not None:
        return host.noise(args.noise, sigma=args.sigma, **noise_options)
    if getattr(loss, "uses_noise", True):
        raise ValueError(f"--loss {args.loss} trains under noise: give --sigma (--loss standard trains a plain "
                         "classifier on clean images without one)")  # fmt: skip
    if noise_options:
        raise ValueError("--noise-option given without --sigma: the options are of the noise at --sigma")
    return None


@shared.writes("checkpoint_dir", folder=True)
def cmd_train(args: argparse.Namespace) -> int:
    import torch

    if args.mixer:
        raise ValueError(
            f"--mixer {args.mixer}: `train` trains one base classifier. Train the adaptive mixer's network with "
            "`rs-plugins train-mixer --model STD --model ROB ...`; `mix` has no parameters to train"
        )

    from ..certify.distributed import init_world, leave_world
    from ..certify.runner import resolve_device
    from ..train.loop import train

    config = train_config(args)
    device = resolve_device(args.device)
    world = init_world(device.type)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    host = shared.Host()
    loss_options = shared.parse_options(args.loss_option, "--loss-option")
    noise_options = shared.noise_options_of(args)
    loss = host.loss(args.loss, **loss_options)
    noise = noise_for(host, args, loss, noise_options)
    torch.manual_seed(args.seed)  # the initial weights too depend on --seed alone, not on what ran before
    model = shared.load_model(host, args, args.model)
    dataset = host.load_data(DataRequest(args.data, args.split))
    noise_name = args.noise if noise is not None else None
    settings = {"loss": args.loss, "loss_option": loss_options, "noise": noise_name, "noise_option": noise_options}
    settings |= {"sigma": args.sigma, "model": args.model, "data": args.data, "split": args.split}
    settings["processes"] = world.size  # noise is seeded per process: another count would not resume exactly
    dataset, val_data = held_out_data(host, args, dataset)
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
