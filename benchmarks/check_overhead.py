"""Cost of the run-time checks in the certification engine, side by side in one process.

``sample_counts`` checks each pass's noise (shape, dtype and device; finite values on the first pass of a call)
and logits (shape, and one ``isfinite`` reduction read once per call). This runs the same counts with the checks
and with them replaced by no-ops, alternating, and prints the median times and their ratio.

    python benchmarks/check_overhead.py --device cpu --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rs_plugins.certify.smoothing as engine
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.runner import resolve_device
from rs_plugins.nets import SmallCNN

CHECKS = ("check_noise_output", "check_logits", "check_finite_logits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SmallCNN().eval().to(device)
    x = torch.rand(args.images, 1, 8, 8, device=device)
    noise = GaussianNoise(0.25)
    real = {name: getattr(engine, name) for name in CHECKS}

    def run(checks: bool) -> float:
        for name in CHECKS:
            setattr(engine, name, real[name] if checks else (lambda *a, **k: None))
        generators = [torch.Generator(device).manual_seed(i) for i in range(args.images)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        engine.sample_counts(model, x, noise, args.n, batch_size=args.batch_size, generator=generators)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(True)  # warm-up
    times = {True: [], False: []}
    for _ in range(args.repeats):
        for checks in (True, False):
            times[checks].append(run(checks))
    for name in CHECKS:
        setattr(engine, name, real[name])
    on, off = statistics.median(times[True]), statistics.median(times[False])
    passes = args.images * -(-args.n // args.batch_size)
    print(f"{device}, {args.images} images x {args.n} samples ({passes} passes of {args.batch_size})")
    print(f"checks on {on:.3f} s, off {off:.3f} s, ratio {on / off:.3f}")


if __name__ == "__main__":
    main()
