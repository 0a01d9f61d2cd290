"""``rs-plugins predict-confidence``: a model's smoothed votes on every training image (CAT-RS's p_b)."""

from __future__ import annotations

import argparse

from ..results import provenance
from ..results.files import CONFIDENCE_COLUMNS
from ..train.config import AUGMENTATIONS
from ..types import DataRequest
from . import shared
from .shared import positive_int


def add_confidence(sub) -> None:
    """Add ``predict-confidence`` to the ``rs-plugins`` sub-parsers."""
    p = sub.add_parser(
        "predict-confidence", help="votes of a (Gaussian-trained) model over n noisy copies of every training image"
    )
    shared.add_model(p, several=False)
    shared.add_data(p, "train")
    shared.add_run(p, batch_size=1000)
    p.add_argument("--n", type=positive_int, default=10_000, help="noisy copies per image (default 10000)")
    p.add_argument(
        "--augment", default="none", choices=list(AUGMENTATIONS),
        help="augment each image once as training does before its n copies (the authors: crop-flip on CIFAR)",
    )  # fmt: skip
    p.add_argument("--out", default="confidence.tsv", help="votes TSV; rerunning resumes it (catrs confidence=)")
    p.set_defaults(func=cmd_confidence)


@shared.writes("out")
def cmd_confidence(args: argparse.Namespace) -> int:
    import datetime

    import torch

    from ..certify.distributed import init_world, leave_world
    from ..certify.runner import check_dataset, confidence_dataset, resolve_device
    from ..certify.sharding import run_sharded
    from ..sources.data import data_identity

    host = shared.Host()
    device = resolve_device(args.device)
    world = init_world("cpu", timeout=datetime.timedelta(days=365))  # as certify: gloo at two barriers only
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    noise_options = shared.noise_options_of(args)
    noise = host.noise(args.noise, sigma=args.sigma, **noise_options)
    model = shared.load_model(host, args, args.model).to(device)
    dataset = host.load_data(DataRequest(args.data, args.split))
    indices = list(range(len(dataset)))
    settings = {k: getattr(args, k) for k in ("model", "data", "split", "sigma", "noise", "n", "seed", "augment")}
    settings |= {"checkpoint": args.checkpoint, "model_kwargs": shared.model_kwargs_setting(args)}
    settings |= {"noise_option": noise_options, "model_sha256": provenance.weights_sha256(model)}
    settings["num_classes"] = check_dataset(model, dataset, indices, device)
    settings["data_identity"] = data_identity(dataset)  # what the loss compares with its training data
    record = provenance.environment(device) | {"images": len(indices)}
    record["noise"] = provenance.component(host, "noise", args.noise, noise_options)

    batch_size = args.batch_size
    if batch_size == "auto":
        from ..certify.execution import auto_batch_size

        batch_size = auto_batch_size(model, dataset[0][0].shape, device, limit=args.n)

    def work(results, share):
        options = dict(n=args.n, batch_size=batch_size, seed=args.seed, augment=args.augment, device=device)
        confidence_dataset(model, dataset, noise, results, indices=share, progress=not args.no_progress, **options)

    rows = run_sharded(work, args.out, CONFIDENCE_COLUMNS, settings, indices, world, provenance=record)
    leave_world(world)
    if world.main:
        correct = sum(max(row.counts, key=lambda pair: pair[1])[0] == row.label for row in rows if row.counts)
        print(f"predict-confidence {args.out}: {len(rows)} images, smoothed top-1 = label on {correct}")
        print(f"train with: --loss catrs --loss-option confidence={args.out}")
    return 0
