"""How few samples any look-based sequential certifier can need on a model: the floor under issue 18's CPU goal.

For the same SmallCNN and held-out digits as ``certify_vs_reference.py`` (Gaussian, or Consistency with
``--loss consistency``), each image's top-class probability p is estimated once from ``--estimate`` noisy samples
(the true class; a wrong top class counts as p = 1/2). Then the sequential certifier's grid-mode stopping rule is
simulated with binomial draws at those p, without the model, for:

* ``sequential``: the certifier as shipped (its look schedule, alpha spending and futility bounds);
* ``oracle``: the same looks, each with the full alpha and beta. This is NOT a valid certificate (the union over
  looks is ignored); it bounds from below what any spending of the same looks could achieve.

Reported: mean samples per image (n0 = 100 selection included) and the compute ratio to CERTIFY's n0 + N; and, in
the same run, the forward pass's CPU time per sample in the reference's form (NCHW) and the cheap path's
(channels_last) at the batch size. Ratio x that speed-up is the most the cheap path can reach against the
reference loop on this machine.

    python benchmarks/sequential_floor.py --loss gaussian --out benchmarks/results/sequential_floor.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from certify_sequential import train  # the same SmallCNN recipe as certify_vs_reference.py

from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.builtin.sequential import TABLE_RADII, look_schedule, spending, thresholds
from rs_plugins.data import load_digits
from rs_plugins.nets import SmallCNN
from rs_plugins.smoothing import sample_counts
from rs_plugins.stats import clopper_pearson_lower, clopper_pearson_upper

N0 = 100


def estimate_p(args, checkpoint: Path) -> np.ndarray:
    """Each image's estimated probability of its true class under the noise (1/2 when another class is on top)."""
    model = SmallCNN(width=args.width)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    test = load_digits("test")
    indices = list(range(0, len(test), args.every))[: args.images]
    x = torch.stack([test[i][0] for i in indices])
    labels = torch.tensor([int(test[i][1]) for i in indices])
    generators = [torch.Generator().manual_seed(args.seed * 100_000 + i) for i in range(len(x))]
    counts = sample_counts(model.eval(), x, GaussianNoise(args.sigma), args.estimate, batch_size=1000,
                           generator=generators)  # fmt: skip
    p = counts.gather(1, labels[:, None]).squeeze(1).double() / args.estimate
    return np.where(counts.argmax(1) == labels, p.numpy(), 0.5)


def forward_speedup(args, checkpoint: Path, passes: int = 30, rounds: int = 15) -> float:
    """CPU time per sample of the model's forward pass in NCHW over that in channels_last, at the batch size.

    The two formats alternate for ``rounds`` rounds and the fastest round of each counts, so that a neighbour's
    load on a shared machine does not decide the ratio.
    """
    model = SmallCNN(width=args.width)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    formats = (torch.contiguous_format, torch.channels_last)
    nets = [SmallCNN(width=args.width).eval() for _ in formats]
    inputs = []
    for net, memory_format in zip(nets, formats):
        net.load_state_dict(model.state_dict())
        net.to(memory_format=memory_format)
        inputs.append(torch.rand(args.batch_size, 1, 8, 8).contiguous(memory_format=memory_format))
    best = [float("inf")] * len(formats)
    with torch.no_grad():
        for _ in range(rounds):
            for j, (net, x) in enumerate(zip(nets, inputs)):
                net(x)
                start = time.process_time()
                for _ in range(passes):
                    net(x)
                best[j] = min(best[j], time.process_time() - start)
    return best[0] / best[1]


def simulate(p: np.ndarray, args, oracle: bool) -> float:
    """Mean samples per image of grid-mode sequential certification at probabilities ``p``."""
    looks = look_schedule(args.n, args.batch_size)
    alphas, betas = spending(len(looks), args.alpha, 0.001)
    if oracle:
        alphas, betas = np.full(len(looks), args.alpha), np.full(len(looks), 0.001)
    targets = thresholds(GaussianNoise(args.sigma), TABLE_RADII)
    targets = targets[targets < alphas[-1] ** (1 / args.n)]
    rng = np.random.default_rng(args.seed)
    drawn_all = []
    for prob in np.repeat(p, args.repeats):
        hits = drawn = 0
        lower, upper = 0.0, 1.0
        for k, look in enumerate(looks):
            hits += rng.binomial(look - drawn, prob)
            drawn = look
            lower = max(lower, float(clopper_pearson_lower(hits, drawn, alphas[k])))
            upper = min(upper, float(clopper_pearson_upper(hits, drawn, betas[k])))
            if np.all((lower >= targets) | (upper < targets)):
                break
        drawn_all.append(N0 + drawn)
    return float(np.mean(drawn_all))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", default="gaussian", choices=["gaussian", "consistency"])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--every", type=int, default=7)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n", type=int, default=100_000, help="N_max")
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--estimate", type=int, default=4000, help="samples per image to estimate p")
    parser.add_argument("--repeats", type=int, default=20, help="simulated runs per image")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default="results/certify_vs_reference")
    parser.add_argument("--out", default="benchmarks/results/sequential_floor.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoint = train(args)
    p = estimate_p(args, checkpoint)
    speedup = forward_speedup(args, checkpoint)
    full = N0 + args.n
    result = {"args": vars(args), "p": np.round(np.sort(p), 5).tolist(), "forward_speedup_channels_last": speedup}
    for name in ("sequential", "oracle"):
        mean = simulate(p, args, oracle=name == "oracle")
        ratio = full / mean
        result[name] = {"samples_per_image": mean, "compute_ratio": ratio, "with_speedup": ratio * speedup}
        print(f"{args.loss:12s} {name:10s} {mean:9,.0f} samples/image  {ratio:4.2f}x fewer  "
              f"x {speedup:.2f} per sample (channels_last) = {ratio * speedup:4.1f}x", flush=True)  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[args.loss] = result
    out.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
