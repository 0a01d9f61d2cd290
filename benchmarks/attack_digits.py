"""Empirical against certified robustness on digits: Gaussian- and SmoothAdv-trained SmallCNNs under l2 PGD.

For each technique this trains a SmallCNN on the 1437 training digits (through ``train_techniques.run_one``, so
with the techniques benchmark's network, batch and learning rate, on a shorter schedule), certifies the held-out
digits, and runs ``rs-plugins attack`` twice on the same digits: PGD-L2 on the base classifier, and PGD-L2 with
expectation over m noise draws on the smoothed classifier, judged by PREDICT. Every step is a CLI command and
resumes, so rerunning only rebuilds the table and plot.

    python benchmarks/attack_digits.py --out-dir results/attack_digits

Writes ``results.csv`` (one row per technique, classifier and eps), ``summary.md`` (with the ``--certified``
cross-check of each smoothed classifier) and ``robust_accuracy.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_techniques import run_dir_of, run_one  # noqa: E402

from rs_plugins.attacks.summary import summarize_attack  # noqa: E402
from rs_plugins.cli import main as rs_plugins  # noqa: E402
from rs_plugins.results.files import read_attack_results, read_results
from rs_plugins.results.report import certified_accuracy  # noqa: E402

EPS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


def attack(args: argparse.Namespace, run_dir: Path, *, smoothed: bool, cross_check: bool = False) -> Path:
    """``rs-plugins attack`` with PGD-L2 (``--steps`` steps of eps/5, torchattacks' ratio) on one classifier;
    ``cross_check`` attacks the certified digits below their radius (``--certified``)."""
    out = run_dir / ("cross_check.tsv" if cross_check else "attack_smoothed.tsv" if smoothed else "attack_base.tsv")
    argv = ["attack", "--model", "rs_plugins.nets:SmallCNN", "--checkpoint", str(run_dir / "model.pt")]
    argv += ["--data", "digits", "--every", str(args.every), "--attack", "pgdl2", "--eps", *map(str, EPS)]
    argv += ["--attack-option", f"steps={args.steps}", "--device", args.device, "--out", str(out), "--no-progress"]
    if smoothed:
        argv += ["--sigma", str(args.sigma), "--m", str(args.m), "--n", str(args.n_predict), "--alpha", "0.001"]
    if cross_check:
        argv += ["--certified", str(run_dir / "certify.tsv"), "--summary", str(out.with_suffix(".json"))]
    if rs_plugins(argv):
        raise SystemExit(f"attack failed: {' '.join(argv)}")
    return out


def plot(curves: dict[str, tuple[list[float], list[float], str, int]], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (xs, ys, style, color) in curves.items():
        ax.plot(xs, ys, style, color=f"C{color}", marker="o", label=label)
    ax.set(xlabel="l2 radius eps / r", ylabel="accuracy", ylim=(0, 1.02), title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--techniques", nargs="+", default=["gaussian", "smoothadv:warmup=4"])
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr-step", type=int, default=5)
    parser.add_argument("--every", type=int, default=4, help="every k-th held-out digit (default 4: 90)")
    parser.add_argument("--steps", type=int, default=20, help="PGD steps")
    parser.add_argument("--m", type=int, default=16, help="noise draws per image for the smoothed attack")
    parser.add_argument("--n-predict", type=int, default=1000, help="PREDICT samples at each point")
    parser.add_argument("--n", type=int, default=10_000, help="CERTIFY samples")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default="results/attack_digits")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # what train_techniques.run_one reads: its network, batch and learning rate, this schedule
    train = argparse.Namespace(out_dir=args.out_dir, device=args.device, epochs=args.epochs, lr_step=args.lr_step)
    train.__dict__.update(batch_size=64, lr=0.05, n=args.n, every=args.every, quiet=True)
    out = Path(args.out_dir)
    rows, curves, checks = [], {}, []
    for color, technique in enumerate(args.techniques):
        run_one(train, technique, args.sigma, args.seed)
        run_dir = run_dir_of(train, technique, args.sigma, args.seed)
        name = technique.partition(":")[0]
        for smoothed in (False, True):
            per_eps = summarize_attack(read_attack_results(attack(args, run_dir, smoothed=smoothed)))["per_eps"]
            kind = "smoothed" if smoothed else "base"
            for v in per_eps.values():
                rows.append({"technique": name, "classifier": kind, "eps": v["eps"], "images": v["images"],
                             "clean_acc": 100 * v["clean_accuracy"], "robust_acc": 100 * v["robust_accuracy"],
                             "adv_abstained": v["adv_abstained"]})  # fmt: skip
            xs = [v["eps"] for v in per_eps.values()]
            style = "-" if smoothed else ":"
            ys = [v["robust_accuracy"] for v in per_eps.values()]
            curves[f"{name}, {kind}: empirical (PGD-L2)"] = (xs, ys, style, color)
        certified = read_results(run_dir / "certify.tsv")
        radii = [e for e in EPS if e <= 3.2 * args.sigma]
        curves[f"{name}, smoothed: certified"] = (radii, certified_accuracy(certified, radii), "--", color)
        cross = json.loads(attack(args, run_dir, smoothed=True, cross_check=True).with_suffix(".json").read_text())
        checks.append((name, cross["cross_check"]))
        for r, acc in zip(radii, certified_accuracy(certified, radii)):
            rows.append({"technique": name, "classifier": "certified", "eps": r, "images": len(certified),
                         "clean_acc": "", "robust_acc": 100 * acc, "adv_abstained": ""})  # fmt: skip
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)"
    setup = (
        f"SmallCNN on digits, sigma={args.sigma}, seed {args.seed}, {args.epochs} epochs (lr 0.05 x0.1 every "
        f"{args.lr_step}, batch 64); PGD-L2 {args.steps} steps of eps/5; smoothed: m={args.m} draws, PREDICT "
        f"n={args.n_predict}, alpha=0.001; certified: n={args.n}; every {args.every}th held-out digit; {machine}"
    )
    header = "| technique | classifier | " + " | ".join(f"eps={e:g}" for e in EPS) + " |"
    lines = [setup, "", header, "|" + "---|" * (len(EPS) + 2)]
    for technique in dict.fromkeys(r["technique"] for r in rows):
        for kind in ("base", "smoothed", "certified"):
            mine = [r for r in rows if r["technique"] == technique and r["classifier"] == kind]
            by_eps = {r["eps"]: r["robust_acc"] for r in mine}
            cells = [f"{by_eps[e]:.1f}" if e in by_eps else "" for e in EPS]
            lines.append(f"| {technique} | {kind} | " + " | ".join(cells) + " |")
    lines += ["", "| technique | cross-check pairs (digit, eps < certified radius) | breaks | chance allows |"]
    lines += ["|---|---|---|---|"]
    for name, cross in checks:
        lines.append(f"| {name} | {cross['pairs']} | {len(cross['breaks'])} | {cross['expected_breaks_at_most']:.2f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(curves, out / "robust_accuracy.png", f"digits, sigma={args.sigma}: robust accuracy (% of held-out digits)")
    print("\n".join(lines), f"plot: {out / 'robust_accuracy.png'}", sep="\n")


if __name__ == "__main__":
    main()
