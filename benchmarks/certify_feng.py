"""``feng`` against ``cohen`` on the same counts: where the runner-up-aware radius grows and where it shrinks.

For a Gaussian- and an ADRE-trained SmallCNN on digits (10 classes; trained here, seeded, resumable), each
held-out digit gets one selection sample (n0) and one estimation sample (N) with its own generator; both radii
are computed from these same counts: Cohen's sigma Phi^-1(p_A,low) at alpha, and Feng's
sigma/2 (Phi^-1(p_A,low) - Phi^-1(p_B,up)) with alpha split in half (p_A at alpha/2, the other nine classes at
alpha/18 each). Feng grows where the runner-up mass is concentrated well below 1 - p_A and shrinks (by the
split) where it is not.

    python benchmarks/certify_feng.py --out-dir benchmarks/results/certify_feng
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import numpy as np
import torch

from rs_plugins.builtin.feng import feng_radius
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.runner import image_generator
from rs_plugins.certify.sampling import sample_counts
from rs_plugins.certify.stats import clopper_pearson_lower
from rs_plugins.cli import main as rs_plugins
from rs_plugins.results.files import Row
from rs_plugins.results.report import average_certified_radius, certified_accuracy
from rs_plugins.sources.data import load_digits
from rs_plugins.sources.models import load_factory

TRAINING = {"gaussian": [], "adre": ["--loss-option=k=8", "--loss-option=lbd=0.1"]}


def train(args: argparse.Namespace, loss: str) -> Path:
    run_dir = Path(args.work_dir) / f"{loss}_sigma{args.sigma}_seed{args.seed}"
    argv = ["train", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", f'{{"width": {args.width}}}']
    argv += ["--data", "digits", "--sigma", str(args.sigma), "--loss", loss, *TRAINING[loss]]
    argv += ["--epochs", str(args.epochs), "--batch-size", "64", "--lr", "0.05", "--lr-step", str(args.epochs // 3)]
    argv += ["--seed", str(args.seed), "--device", "cpu", "--checkpoint-dir", str(run_dir), "--no-progress"]
    if rs_plugins(argv):
        raise SystemExit("training failed: rs-plugins " + " ".join(argv))
    return run_dir / "model.pt"


def compare(args: argparse.Namespace, loss: str, checkpoint: Path) -> dict:
    model = load_factory("rs_plugins.nets:SmallCNN", checkpoint=str(checkpoint), kwargs={"width": args.width}).eval()
    data = load_digits("test")
    indices = list(range(0, len(data), args.every))
    x = torch.stack([torch.as_tensor(data[i][0]) for i in indices])
    labels = [int(data[i][1]) for i in indices]
    noise = GaussianNoise(args.sigma)
    generators = [image_generator(args.seed, i, torch.device("cpu")) for i in indices]
    with torch.no_grad():
        top = sample_counts(model, x, noise, 100, batch_size=1000, generator=generators).argmax(1)
        counts = sample_counts(model, x, noise, args.n, batch_size=1000, generator=generators)
    n_top = counts.gather(1, top[:, None]).squeeze(1).numpy()
    p_cohen = clopper_pearson_lower(n_top, args.n, args.alpha)
    r_cohen = np.where(p_cohen >= 0.5, args.sigma * torch.special.ndtri(torch.tensor(p_cohen)).numpy(), 0.0)
    r_feng, _ = feng_radius(counts, top, sigma=args.sigma, alpha=args.alpha)
    r_feng = np.nan_to_num(r_feng.numpy(), nan=0.0)
    predict_cohen = np.where(p_cohen >= 0.5, top.numpy(), -1)
    predict_feng = np.where(r_feng > 0, top.numpy(), -1)
    rows = {
        name: [Row(i, y, int(p), float(r), int(p) == y, 0.0) for i, y, p, r in zip(indices, labels, preds, radii)]
        for name, preds, radii in (("cohen", predict_cohen, r_cohen), ("feng", predict_feng, r_feng))
    }
    answered = (predict_cohen >= 0) | (predict_feng >= 0)
    delta = (r_feng - r_cohen)[answered]
    others = counts.clone().scatter_(1, top[:, None], -1).max(1).values.numpy()
    concentration = others / np.maximum(args.n - n_top, 1)  # runner-up's share of the mass off the top class
    grow, shrink = delta[delta > 1e-9], delta[delta < -1e-9]
    return {
        "model": loss,
        "rows": rows,
        "images": len(indices),
        "grow": grow,
        "shrink": shrink,
        "relative": (r_feng[answered] - r_cohen[answered]) / np.maximum(r_cohen[answered], 1e-12),
        "new_answers": int(((predict_feng >= 0) & (predict_cohen < 0)).sum()),
        "concentration": float(np.median(concentration[answered])) if answered.any() else float("nan"),
        "concentration_grow": float(np.median(concentration[answered][delta > 1e-9])) if len(grow) else float("nan"),
        "concentration_shrink": (
            float(np.median(concentration[answered][delta < -1e-9])) if len(shrink) else float("nan")
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--every", type=int, default=2, help="every k-th held-out digit (default 2: 180)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", default="results/certify_feng")
    parser.add_argument("--out-dir", default="benchmarks/results/certify_feng")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [compare(args, loss, train(args, loss)) for loss in TRAINING]

    radii = [0.25 * i for i in range(5)]
    setup = (
        f"digits, SmallCNN width {args.width}, {args.epochs} epochs, sigma={args.sigma}; n0=100, N={args.n}, "
        f"alpha={args.alpha} (feng: alpha/2 on p_A, alpha/18 on each other class); every {args.every}-th held-out "
        f"digit; seed {args.seed}; {platform.machine()}, torch {torch.__version__}"
    )
    header = ["model", "certifier", *(f"r={r:g}" for r in radii), "ACR"]
    lines = [setup, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for res in results:
        for name, rows in res["rows"].items():
            acc = [f"{100 * a:.1f}" for a in certified_accuracy(rows, radii)]
            lines.append("| " + " | ".join([res["model"], name, *acc, f"{average_certified_radius(rows):.3f}"]) + " |")
    header = ["model", "answered", "feng larger", "mean gain", "max gain", "median relative gain", "feng smaller"]
    header += ["mean loss", "max loss", "new answers", "runner-up share of 1-p_A (median: all / larger / smaller)"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for res in results:
        grow, shrink = res["grow"], res["shrink"]
        answered = len(res["relative"])
        cells = [res["model"], str(answered), str(len(grow))]
        cells += [f"{grow.mean():.4f}" if len(grow) else "-", f"{grow.max():.4f}" if len(grow) else "-"]
        cells += [f"{100 * statistics.median(res['relative'].tolist()):+.1f}%" if answered else "-", str(len(shrink))]
        cells += [f"{shrink.mean():.4f}" if len(shrink) else "-", f"{shrink.min():.4f}" if len(shrink) else "-"]
        cells += [str(res["new_answers"])]
        cells += [f"{res['concentration']:.2f} / {res['concentration_grow']:.2f} / {res['concentration_shrink']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"summary_sigma{args.sigma}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
