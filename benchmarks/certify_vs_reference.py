"""The cheap path against Cohen et al.'s reference loop: the same trained digits model and images, one process.

* reference: a per-image fp32 CERTIFY written here after locuslab/smoothing's ``code/core.py`` (one image at a
  time, ``x.repeat`` batches, ``randn_like * sigma``, counts copied to the host after every batch, n0 = 100
  selection and N estimation samples, a Clopper-Pearson bound); counting uses ``np.bincount``, which is faster
  than the reference's Python loop, so the ratio is if anything understated;
* ``rs-plugins certify --certifier cohen`` (fp32, same N), the engine alone;
* ``rs-plugins certify --certifier sequential --precision auto --channels-last`` (N_max = N), the cheap path.

Both ``rs-plugins`` rows run through the CLI a user types and are timed whole (model and data loading included).
Reported: wall and CPU seconds of this process (on one torch thread, CPU time barely depends on what else runs on
a shared machine; wall time does), the ratios to the reference, mean samples per image, certified accuracy at the table
radii a full run can reach, and the largest certified-accuracy difference from the reference (pp).
Goal (issue 18): >= 10x at <= 1 pp.

    python benchmarks/certify_vs_reference.py --images 30 --out-dir benchmarks/results/certify_vs_reference
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from certify_sequential import train  # the same Gaussian SmallCNN on digits (a sibling script)
from scipy.stats import beta, norm

from rs_plugins.cli import main as rs_plugins
from rs_plugins.nets import SmallCNN
from rs_plugins.results.files import Row, read_results
from rs_plugins.results.report import certified_accuracy, mean_samples
from rs_plugins.sources.data import load_digits


@torch.no_grad()
def reference_counts(model, x, sigma, num, batch_size, num_classes=10):
    """Class counts of ``num`` noisy copies of one image (C, H, W), batch by batch as the reference draws them."""
    counts = np.zeros(num_classes, dtype=int)
    remaining = num
    while remaining > 0:
        size = min(batch_size, remaining)
        remaining -= size
        batch = x.repeat((size, 1, 1, 1))
        noise = torch.randn_like(batch) * sigma
        predictions = model(batch + noise).argmax(1)
        counts += np.bincount(predictions.cpu().numpy(), minlength=num_classes)
    return counts


def reference_certify(model, x, sigma, n0, n, alpha, batch_size):
    """(prediction, radius) of one image: class from n0 samples, one-sided Clopper-Pearson bound from n more."""
    model.eval()
    top = int(reference_counts(model, x, sigma, n0, batch_size).argmax())
    k = int(reference_counts(model, x, sigma, n, batch_size)[top])
    p_lower = float(beta.ppf(alpha, k, n - k + 1)) if k else 0.0
    return (top, sigma * float(norm.ppf(p_lower))) if p_lower >= 0.5 else (-1, 0.0)


def run_reference(args, checkpoint, indices) -> tuple[list[Row], tuple[float, float]]:
    model = SmallCNN(width=args.width)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    model.to(args.device).eval()
    test = load_digits("test")
    torch.manual_seed(args.seed)
    rows, start, cpu = [], time.perf_counter(), time.process_time()
    for i in indices:
        image, label = test[i]
        image = image.to(args.device)
        prediction, radius = reference_certify(model, image, args.sigma, 100, args.n, args.alpha, args.batch_size)
        rows.append(Row(i, int(label), prediction, radius, prediction == int(label), 0.0, 100 + args.n))
    if args.device != "cpu":
        torch.cuda.synchronize()
    return rows, (time.perf_counter() - start, time.process_time() - cpu)


def run_cli(args, checkpoint, name: str, extra: list[str]) -> tuple[list[Row], tuple[float, float]]:
    tsv = Path(args.work_dir) / f"{name}_sigma{args.sigma}_n{args.n}_images{args.images}.tsv"
    tsv.unlink(missing_ok=True)  # timed from scratch, never resumed
    Path(f"{tsv}.json").unlink(missing_ok=True)
    argv = ["certify", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", json.dumps({"width": args.width})]
    argv += ["--checkpoint", str(checkpoint), "--data", "digits", "--sigma", str(args.sigma), "--n", str(args.n)]
    argv += ["--every", str(args.every), "--limit", str(args.images), "--seed", str(args.seed), "--device", args.device]
    argv += ["--batch-size", str(args.batch_size), "--alpha", str(args.alpha), *extra, "--out", str(tsv)]
    start, cpu = time.perf_counter(), time.process_time()
    if rs_plugins([*argv, "--no-progress"]):
        raise SystemExit("certification failed: rs-plugins " + " ".join(argv))
    seconds = time.perf_counter() - start, time.process_time() - cpu
    sidecar = json.loads(Path(f"{tsv}.json").read_text())
    asked = sidecar["provenance"]["precision_requested"]
    print(f"{name}: --precision {asked} ran as {sidecar['precision']}, {seconds[0]:.1f} s", flush=True)
    return read_results(tsv), seconds


def device_name(args) -> str:
    if args.device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(args.device))
    return f"{platform.machine()} CPU, {args.threads} thread(s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=30, help="held-out digits certified (default 30)")
    parser.add_argument("--every", type=int, default=12, help="every k-th held-out digit (default 12)")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n", type=int, default=100_000, help="N of the reference and cohen, N_max of sequential")
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=1000, help="all three (the reference's default)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width", type=int, default=16, help="SmallCNN width (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where all three run (training is always on the CPU)")
    parser.add_argument("--no-cohen", action="store_true", help="skip the rs-plugins cohen row")
    parser.add_argument("--work-dir", default="results/certify_vs_reference")
    parser.add_argument("--out-dir", default="benchmarks/results/certify_vs_reference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    checkpoint = train(args)
    indices = list(range(0, len(load_digits("test")), args.every))[: args.images]
    args.images = len(indices)
    results = {"reference loop (fp32)": run_reference(args, checkpoint, indices)}
    if not args.no_cohen:
        results["rs-plugins cohen (fp32)"] = run_cli(args, checkpoint, "cohen", [])
    fast = ["--certifier", "sequential", "--precision", "auto", "--channels-last"]
    results["rs-plugins sequential, auto, channels_last"] = run_cli(args, checkpoint, "sequential", fast)
    # The table radii a full sequential run can reach (its last look spends alpha/2).
    reach = args.sigma * norm.ppf((args.alpha / 2) ** (1 / args.n))
    radii = [0.25 * i for i in range(17) if 0.25 * i <= reach]
    base_rows, (base_wall, base_cpu) = results["reference loop (fp32)"]
    base_acc = certified_accuracy(base_rows, radii)
    header = ["run", "wall s", "CPU s", "speed-up (wall)", "speed-up (CPU)", "samples/image"]
    header += [*(f"r={r:g}" for r in radii), "max Δ pp"]
    lines = [
        f"SmallCNN (width {args.width}, {args.epochs} epochs, Gaussian sigma={args.sigma}) on {args.images} held-out "
        f"digits (every {args.every}th), n0=100, N={args.n}, alpha={args.alpha}, batch {args.batch_size}, seed "
        f"{args.seed}; {device_name(args)}, torch {torch.__version__}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    summary = {"args": vars(args), "radii": radii, "runs": {}}
    for name, (rows, (wall, cpu)) in results.items():
        acc = certified_accuracy(rows, radii)
        change = max(abs(a - b) for a, b in zip(acc, base_acc)) * 100
        cells = [name, f"{wall:.1f}", f"{cpu:.1f}", f"{base_wall / wall:.2f}x", f"{base_cpu / cpu:.2f}x"]
        cells.append(f"{mean_samples(rows):,.0f}")
        lines.append("| " + " | ".join([*cells, *(f"{100 * a:.1f}" for a in acc), f"{change:.1f}"]) + " |")
        summary["runs"][name] = {
            "wall_seconds": wall,
            "cpu_seconds": cpu,
            "samples_per_image": mean_samples(rows),
            "accuracy": acc,
            "certificates": [(row.idx, row.label, row.predict, row.radius) for row in rows],
        }
    text = "\n".join(lines) + "\n"
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"summary_sigma{args.sigma}_images{args.images}.md").write_text(text)
    (out / f"summary_sigma{args.sigma}_images{args.images}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
