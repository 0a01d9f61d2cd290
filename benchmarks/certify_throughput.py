"""Certification throughput: rs-plugins' engine against a plain one-image-at-a-time loop, side by side.

The baseline has the structure of the reference implementation (Cohen et al.'s ``core.py``): one image per call,
the selection and estimation samples drawn in ``batch_size`` chunks, counts kept per image. rs-plugins packs
several images into a pass when their samples fit and counts with one ``bincount`` per pass. Both run the same
model on the same device in the same process, so the ratio is what to read; absolute numbers depend on the
machine.

    python benchmarks/certify_throughput.py --device auto --out benchmarks/results/certify_throughput.csv
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from functools import partial
from pathlib import Path

import torch

from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.runner import resolve_device
from rs_plugins.certify.smoothing import cohen_certify
from rs_plugins.certify.stats import clopper_pearson_lower
from rs_plugins.nets import SmallCNN


@torch.no_grad()
def baseline_certify(model, image, sigma, n0, n, alpha, batch_size):
    """One image, plain loop: the shape of the reference implementation, for comparison only."""

    def counts(num):
        result = torch.zeros(model(image[None]).shape[1], dtype=torch.long)
        remaining = num
        while remaining > 0:
            size = min(batch_size, remaining)
            batch = image.repeat(size, 1, 1, 1)
            predictions = model(batch + sigma * torch.randn_like(batch)).argmax(1)
            result += torch.bincount(predictions.cpu(), minlength=len(result))
            remaining -= size
        return result

    top = int(counts(n0).argmax())
    p_lower = float(clopper_pearson_lower(int(counts(n)[top]), n, alpha))
    return top, p_lower


def baseline_all(model, images, sigma, alpha, *, n0, n, batch_size):
    return [baseline_certify(model, x, sigma, n0, n, alpha, batch_size) for x in images]


def measure(fn, repeats):
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size", type=int, default=32, help="image side (CIFAR-10: 32)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/certify_throughput.csv")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = SmallCNN(in_channels=3, num_classes=10, width=16).to(device).eval()
    images = torch.rand(args.images, 3, args.size, args.size, device=device)
    noise = GaussianNoise(0.25)
    rows = []
    for n0, n, batch_size in [(100, 1_000, 1_000), (100, 10_000, 1_000), (100, 10_000, 10_000)]:
        sampling = dict(n0=n0, n=n, batch_size=batch_size)
        ours = measure(partial(cohen_certify, model, images, noise, **sampling), args.repeats)
        base = measure(partial(baseline_all, model, images, 0.25, 0.001, **sampling), args.repeats)
        row = {
            "device": str(device),
            "image": f"3x{args.size}x{args.size}",
            "n0": n0,
            "n": n,
            "batch_size": batch_size,
            "baseline_images_per_s": round(args.images / base, 2),
            "rs_plugins_images_per_s": round(args.images / ours, 2),
            "speedup": round(base / ours, 2),
        }
        rows.append(row)
        print(row, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}; wrote {out}")


if __name__ == "__main__":
    main()
