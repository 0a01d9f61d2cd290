"""``rs-plugins plugins`` and ``rs-plugins demo``."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from .. import file_checks, validation
from ..errors import RsPluginError
from . import shared
from .shared import positive_float, positive_int


def add_plugins(sub) -> None:
    """Add ``plugins`` to the ``rs-plugins`` sub-parsers."""
    p = sub.add_parser("plugins", help="list plugins, their hooks and components")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)


def add_demo(sub) -> None:
    """Add ``demo`` to the ``rs-plugins`` sub-parsers."""
    p = sub.add_parser(
        "demo",
        help="train a small CNN on digits with Gaussian noise, certify, report",
        description="Runs the two commands a user would type, and prints them: `train` (SmallCNN on scikit-learn's "
        "bundled digits, Gaussian augmentation) then `certify` (CERTIFY on every --every-th held-out image, with "
        "a table, a plot and a summary). Rerunning resumes; --epochs 5 --n 1000 makes it quick on a CPU.",
    )
    p.add_argument("--out-dir", default="results/demo", help="folder for checkpoints/, certify.tsv, "
                   "certified_accuracy.png and summary.json (default results/demo)")  # fmt: skip
    p.add_argument("--sigma", type=positive_float, default=0.25, help="noise level (default 0.25)")
    p.add_argument("--epochs", type=positive_int, default=60, help="training epochs (default 60)")
    p.add_argument("--n", type=positive_int, default=10_000, help="CERTIFY's estimation samples (default 10000)")
    p.add_argument("--every", type=positive_int, default=4, help="certify every k-th test image (default 4)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=validation.seed, default=0, help=shared.SEED_HELP)
    p.set_defaults(func=cmd_demo)


def cmd_plugins(args: argparse.Namespace) -> int:
    plugins = shared.Host().describe()
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
    from ..sources.data import DATA_FORMS
    from ..sources.models import MODEL_FORMS

    print(f"--model forms (built in; plugins may add more): {' | '.join(MODEL_FORMS)}")
    print(f"--data forms (built in; plugins may add more): {' | '.join(DATA_FORMS)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the two real commands a user would type, and show them."""
    file_checks.check_output_dir(args.out_dir, "--out-dir")
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
        code = _run_step(step)
        if code:
            return code
    return 0


def _run_step(argv: list[str]) -> int:
    """One of the demo's commands; its messages name the demo's --out-dir, not the step's --checkpoint-dir."""
    from . import build_parser  # the package's, looked up now

    parsed = build_parser().parse_args(argv)
    try:
        return parsed.func(parsed)
    except (RsPluginError, ValueError, OSError) as err:
        raise ValueError(str(err).replace("another --checkpoint-dir", "another --out-dir")) from err
