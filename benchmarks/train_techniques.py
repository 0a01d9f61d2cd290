"""Each training technique on the bundled digits data, side by side: clean accuracy, certified accuracy, ACR, time.

For every sigma, seed and technique this runs the two commands a user would type -- ``rs-plugins train`` on the
1437 training digits and ``rs-plugins certify`` on the same held-out digits -- with one fixed budget (same
network, epochs, batch size and learning-rate schedule for every technique). Technique options are the papers'
MNIST settings (techniques.md, section 9.3). Everything is resumable: rerunning the command skips finished
training and certification and only rebuilds the tables.

    python benchmarks/train_techniques.py --sigmas 0.25 0.5 --seeds 0 1 --out-dir results/techniques

``catrs`` first gets its p_b: the Gaussian sigma = 0.25 model of the same seed, then ``rs-plugins
predict-confidence`` on the training digits (``--confidence-n`` votes each).

Writes ``results.csv`` (one row per run), ``summary.md`` (mean and spread over seeds) and one plot per sigma.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
from pathlib import Path

import torch

from rs_plugins.cli import main as rs_plugins
from rs_plugins.results.files import read_results
from rs_plugins.results.report import average_certified_radius, certified_accuracy, plot_certified_accuracy
from rs_plugins.train.loop import LOG

# The papers' MNIST settings (LeNet there, SmallCNN here); keys are sigma.
OPTIONS = {
    "gaussian": {},
    "consistency": {0.25: {"m": 2, "lbd": 10, "eta": 0.5}, 0.5: {"m": 2, "lbd": 5, "eta": 0.5}},
    "smoothmix": {
        0.25: {"m": 4, "step_size": 1.0, "steps": 2, "eta": 5},
        0.5: {"m": 4, "step_size": 1.0, "steps": 4, "eta": 5},
    },
    "macer": {0.25: {"k": 16, "lbd": 16}, 0.5: {"k": 16, "lbd": 16}},
    "smoothadv": {s: {"m": 4, "epsilon": 255 / 256, "steps": 10} for s in (0.25, 0.5)},
    "adre": {s: {"k": 8, "lbd": 0.1} for s in (0.25, 0.5)},
    # CAT-RS: the CIFAR-10 M, eps, T; lbd 1.0 as in the authors' MNIST sigma = 0.25 run
    "catrs": {s: {"m": 4, "epsilon": 1.0, "steps": 4, "lbd": 1.0} for s in (0.25, 0.5)},
}
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def parse_label(label: str) -> tuple[str, dict]:
    """``macer`` or a variant such as ``macer:lbd=4,k=8`` -> (loss name, option overrides)."""
    name, _, rest = label.partition(":")
    overrides = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        overrides[key] = json.loads(value)
    return name, overrides


def options_for(label: str, sigma: float, lr_step: int) -> dict:
    """The technique's options at ``sigma`` with the label's overrides; MACER's MNIST runs defer its robustness
    term to the first learning-rate drop."""
    technique, overrides = parse_label(label)
    options = dict(OPTIONS[technique].get(sigma, {}))
    if technique == "macer":
        options["deferred_epochs"] = lr_step
    return options | overrides


def run_dir_of(args: argparse.Namespace, label: str, sigma: float, seed: int) -> Path:
    return Path(args.out_dir) / f"sigma{sigma}" / f"{label.replace(':', '_').replace(',', '_')}_seed{seed}"


def common_args(args: argparse.Namespace, sigma: float, seed: int) -> list[str]:
    common = ["--model", "rs_plugins.nets:SmallCNN", "--data", "digits", "--sigma", str(sigma)]
    return [*common, "--device", args.device, "--seed", str(seed)]


def train_one(args: argparse.Namespace, technique: str, sigma: float, seed: int, extra: list[str] = ()) -> Path:
    """Train one (technique, sigma, seed), or resume it; returns its run folder."""
    run_dir = run_dir_of(args, technique, sigma, seed)
    options = options_for(technique, sigma, args.lr_step)
    loss_options = [f"--loss-option={k}={v}" for k, v in options.items()] + list(extra)
    train = ["train", *common_args(args, sigma, seed), "--loss", parse_label(technique)[0], *loss_options]
    train += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    train += ["--lr-step", str(args.lr_step), "--checkpoint-dir", str(run_dir), *(["--no-progress"] * args.quiet)]
    if rs_plugins(train):
        raise SystemExit(f"training failed: {' '.join(train)}")
    return run_dir


def confidence_file(args: argparse.Namespace, seed: int) -> Path:
    """CAT-RS's p_b: the Gaussian sigma = 0.25 model of this seed (as the authors use for every sigma) votes over
    --confidence-n noisy copies of each training digit (no augmentation: none is used in training here)."""
    gaussian = train_one(args, "gaussian", 0.25, seed)
    out = gaussian / f"p_b_n{args.confidence_n}.tsv"
    command = ["predict-confidence", *common_args(args, 0.25, seed), "--checkpoint", str(gaussian / "model.pt")]
    command += ["--n", str(args.confidence_n), "--batch-size", "6400", "--out", str(out), "--no-progress"]
    if rs_plugins(command):
        raise SystemExit(f"predict-confidence failed: {' '.join(command)}")
    return out


def run_one(args: argparse.Namespace, technique: str, sigma: float, seed: int) -> dict:
    """Train and certify one (technique, sigma, seed); both steps resume if they were done before."""
    extra = []
    if parse_label(technique)[0] == "catrs":
        extra = [f"--loss-option=confidence={confidence_file(args, seed)}"]
    run_dir = train_one(args, technique, sigma, seed, extra)
    common = common_args(args, sigma, seed)
    options = options_for(technique, sigma, args.lr_step)
    certify = ["certify", *common, "--checkpoint", str(run_dir / "model.pt"), "--n", str(args.n)]
    certify += ["--every", str(args.every), "--out", str(run_dir / "certify.tsv"), "--no-progress"]
    if rs_plugins(certify):
        raise SystemExit(f"certification failed: {' '.join(certify)}")
    rows = read_results(run_dir / "certify.tsv")
    with open(run_dir / LOG, newline="") as f:
        seconds = [float(entry["seconds"]) for entry in csv.DictReader(f)]
    result = {"technique": technique, "sigma": sigma, "seed": seed, "images": len(rows)}
    result |= {f"acc@{r}": 100 * a for r, a in zip(RADII, certified_accuracy(rows, RADII))}
    result |= {"acr": average_certified_radius(rows), "s_per_epoch": statistics.median(seconds)}
    result["options"] = json.dumps(options, sort_keys=True)
    return result


def summarize(results: list[dict], techniques: list[str], sigmas: list[float]) -> str:
    """Markdown tables per sigma: mean over seeds, with the spread of ACR, and ACR relative to Gaussian."""
    lines = []
    for sigma in sigmas:
        lines += [f"### sigma = {sigma}", ""]
        radii = [r for r in RADII if r <= 3.2 * sigma]
        header = ["technique", "seeds", *(f"r={r}" for r in radii), "ACR (mean ± sd)", "ACR − Gaussian"]
        header.append("s/epoch (min)")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        by_technique = {t: [r for r in results if r["technique"] == t and r["sigma"] == sigma] for t in techniques}
        base = statistics.mean(r["acr"] for r in by_technique.get("gaussian", [])) if "gaussian" in techniques else None
        for technique, runs in by_technique.items():
            if not runs:
                continue
            acrs = [r["acr"] for r in runs]
            spread = statistics.stdev(acrs) if len(acrs) > 1 else 0.0
            cells = [technique, str(len(runs))]
            cells += [f"{statistics.mean(r[f'acc@{radius}'] for r in runs):.1f}" for radius in radii]
            cells += [f"{statistics.mean(acrs):.3f} ± {spread:.3f}"]
            cells += ["" if base is None else f"{statistics.mean(acrs) - base:+.3f}"]
            cells += [f"{min(r['s_per_epoch'] for r in runs):.2f}"]  # the least disturbed run times best
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--techniques", nargs="+", default=list(OPTIONS), help="loss names, or variants such as macer:lbd=4,k=8"
    )
    parser.add_argument("--sigmas", nargs="+", type=float, default=[0.25, 0.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=30, help="the same for every technique (default 30)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--lr-step", type=int, default=10)
    parser.add_argument("--n", type=int, default=10_000, help="certification samples per image (default 10000)")
    parser.add_argument("--every", type=int, default=4, help="certify every k-th held-out digit (default 4: 90)")
    parser.add_argument("--confidence-n", type=int, default=1000, help="catrs: p_b samples per digit (default 1000)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no per-batch progress bars")
    parser.add_argument("--out-dir", default="results/techniques")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = sorted({parse_label(label)[0] for label in args.techniques} - set(OPTIONS))
    if unknown:
        parser.error(f"--techniques: unknown {', '.join(unknown)}; choose from {', '.join(OPTIONS)}")

    results = [
        run_one(args, technique, sigma, seed)
        for sigma in args.sigmas
        for seed in args.seeds
        for technique in args.techniques
    ]
    out = Path(args.out_dir)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    machine = platform.processor() or platform.machine()
    machine += f", torch {torch.__version__}, {torch.get_num_threads()} threads"
    setup = f"SmallCNN, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr} x0.1 every {args.lr_step}; "
    setup += f"certify n={args.n}, alpha=0.001, every {args.every}th held-out digit; {machine}"
    table = summarize(results, args.techniques, args.sigmas)
    (out / "summary.md").write_text(f"{setup}\n\n{table}")
    print(setup, "", table, sep="\n")
    for sigma in args.sigmas:
        curves = {}
        for technique in args.techniques:
            pooled = []  # pooling the seeds' rows makes the curve the mean over seeds
            for seed in args.seeds:
                pooled += read_results(run_dir_of(args, technique, sigma, seed) / "certify.tsv")
            curves[technique] = pooled
        plot_certified_accuracy(curves, out / f"certified_accuracy_sigma{sigma}.png", title=f"digits, sigma={sigma}")
        print(f"plot: {out / f'certified_accuracy_sigma{sigma}.png'}")


if __name__ == "__main__":
    main()
