"""Certification speed by precision, memory format and compilation, against the raw forward pass and a Cohen-style loop.

For each model and execution (fp32, bf16, fp16, channels_last, the --compile fast path: BatchNorm folded, frozen
weights, optionally CUDA graphs or max-autotune) it measures, in one process on one device, with TFLOP/s and the
fraction of the activation-bandwidth floor (``layer_costs``) per row:

With ``--repeats R`` every timing is the best of R (the run least disturbed by other work), the raw forward pass
and the certification alternating.

- ``certify``: rs-plugins' ``cohen_certify`` on ``--images`` images with n0 + n samples each, as the CLI runs it
  (the model wrapped by ``rs_plugins.certify.execution.prepare_model``): samples/s, seconds per image, peak memory,
  and the ratio to the raw forward throughput of the same wrapped model at the same batch size (target >= 0.95);
- peak memory again at ``n / 10`` samples, to show it does not grow with n;
- ``loop``: a per-image fp32 loop with the structure of the reference implementation (Cohen et al.'s core.py: one
  image at a time, ``x.repeat`` batches, counts copied to the host after every batch), written here independently;
- ``agreement`` (``--agreement K``): a CIFAR-shaped ResNet trained briefly on digits upsampled to 3x32x32, then
  certified on the same K held-out images in fp32 and in each ``--agreement-executions`` (default bf16 +
  channels_last) with the same noise: how many predictions and radii change, and certified accuracy of each;
- ``training`` (``--train-batches B``): seconds per loader batch and peak memory of the Consistency and SmoothMix
  steps (the training loop's step: autocast, backward, SGD) in fp32 and bf16 + channels_last.

Rows are appended to CSV files in ``--out-dir`` as soon as each is measured, so a run stopped early keeps them.

    python benchmarks/certify_speed.py --device cpu --threads 1 --models resnet20 --n 4000 --batch-size 400 \\
        --images 1 --executions fp32 bf16 bf16+cl bf16+cl+compile --loop --repeats 5 --sections certify \\
        --out-dir benchmarks/results/certify_speed_cpu
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import beta

from rs_plugins.builtin.gaussian import GaussianAugmentation, GaussianNoise
from rs_plugins.certify.execution import Execution, auto_batch_size, prepare_model
from rs_plugins.certify.runner import image_generator, resolve_device
from rs_plugins.certify.smoothing import cohen_certify
from rs_plugins.nets import CifarResNet
from rs_plugins.sources.data import load_digits
from rs_plugins.train.config import TrainConfig
from rs_plugins.train.loop import train

EXECUTIONS = {
    "fp32": Execution("fp32"),
    "bf16": Execution("bf16"),
    "bf16+cl": Execution("bf16", channels_last=True),
    "fp16+cl": Execution("fp16", channels_last=True),
    "fp32+compile": Execution("fp32", compile=True),
    "bf16+cl+compile": Execution("bf16", channels_last=True, compile=True),
    "fp16+cl+compile": Execution("fp16", channels_last=True, compile=True),
    "bf16+cl+cudagraphs": Execution("bf16", channels_last=True, compile=True, compile_mode="reduce-overhead"),
    "bf16+cl+max-autotune": Execution("bf16", channels_last=True, compile=True, compile_mode="max-autotune"),
    "fp16+cl+max-autotune": Execution("fp16", channels_last=True, compile=True, compile_mode="max-autotune"),
}
"""Every compiled execution is the CLI's --compile fast path: BatchNorm folded, weights frozen, in its mode."""
BANDWIDTH_TBS = {"H200": 4.8, "H100": 3.35, "A100": 2.0, "L40S": 0.864, "RTX 4090": 1.0, "RTX 2080 Ti": 0.616}
"""Peak memory bandwidth (TB/s) by GPU name, for the bandwidth floor; --bandwidth-tbs overrides."""


def build_model(name: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """A freshly initialised model and its input shape (C, H, W)."""
    if name.startswith("resnet") and name[6:].isdigit() and name != "resnet50":
        return CifarResNet(int(name[6:])), (3, 32, 32)
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(weights=None), (3, 224, 224)
    raise ValueError(
        f"--models: unknown model {name!r}; use resnetD (CIFAR ResNet of depth D, e.g. resnet110) or resnet50"
    )


def prepare(model, device, name):
    """The model as the CLI runs it with this execution (a copy: .to(channels_last) works in place)."""
    return prepare_model(copy.deepcopy(model), device, EXECUTIONS[name])


def layer_costs(model, shape, device, dtype_bytes):
    """Per sample: FLOPs of the convolutions and linear layers, and the activation bytes a fused network moves.

    With BatchNorm folded and the element-wise layers fused into the convolution before them, each such layer
    writes its output once and the next reads it once, so the traffic is 2 x (its outputs) x the dtype's bytes,
    plus the input read (weights are small and cache-resident). This is the floor the bandwidth sets.
    """
    flops, elements = [0], [0]

    def hook(module, inputs, output):
        per_sample = output[0].numel()
        elements[0] += per_sample
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            flops[0] += 2 * per_sample * module.in_channels // module.groups * kh * kw
        else:
            flops[0] += 2 * per_sample * module.in_features

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        model(torch.rand(1, *shape, device=device))
    for handle in handles:
        handle.remove()
    return flops[0], (2 * elements[0] + torch.Size(shape).numel()) * dtype_bytes


def bandwidth_tbs(args, device):
    if args.bandwidth_tbs or device.type != "cuda":
        return args.bandwidth_tbs
    name = torch.cuda.get_device_name(device)
    return next((tbs for key, tbs in BANDWIDTH_TBS.items() if key in name), None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory in MiB over a block: allocated CUDA memory on a GPU, resident set size (VmHWM) on a CPU."""

    def __init__(self, device):
        self.device = device
        self.mib = float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # writing 5 resets the peak RSS the kernel keeps (VmHWM)
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            sync(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            status = Path("/proc/self/status").read_text()
            self.mib = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


@torch.no_grad()
def raw_forward(model, shape, batch_size, device, seconds):
    """Samples/s of the model alone on fresh inputs of ``batch_size`` (after a warm-up), for about ``seconds``."""
    x = torch.rand(batch_size, *shape, device=device)
    estimate, _ = timed(lambda: [model(x).argmax(1) for _ in range(3)], device)
    reps = max(3, round(3 * seconds / estimate))
    elapsed, _ = timed(lambda: [model(x).argmax(1) for _ in range(reps)], device)  # no sync between passes
    return reps * batch_size / elapsed


@torch.no_grad()
def cohen_loop(model, x, sigma, n0, n, alpha, batch_size):
    """Per-image fp32 CERTIFY in the reference implementation's structure; returns (prediction, p_lower) per image."""
    results = []
    for image in x:
        top = int(_loop_counts(model, image, sigma, n0, batch_size).argmax())
        k = int(_loop_counts(model, image, sigma, n, batch_size)[top])
        results.append((top, float(beta.ppf(alpha, k, n - k + 1)) if k else 0.0))
    return results


def _loop_counts(model, image, sigma, num, batch_size):
    total, remaining = None, num
    while remaining > 0:
        size = min(batch_size, remaining)
        remaining -= size
        batch = image.repeat((size, 1, 1, 1))
        predictions = model(batch + torch.randn_like(batch) * sigma).argmax(1)
        found = np.bincount(predictions.cpu().numpy(), minlength=10)
        total = found if total is None else total + found
    return total


def certify_images(model, images, noise, device, sampling, num):
    """``cohen_certify`` as the runner calls it: one generator per image, seeded from (0, index)."""
    generators = [image_generator(0, i, device) for i in range(len(images))]
    return cohen_certify(model, images, noise, n=num, generator=generators, **sampling)


def train_batch(model, loss, optimizer, x, y, noise, dtype):
    """One loader batch as ``rs-plugins train`` runs it: the loss's chunks, one SGD step each, under autocast."""
    for cx, cy in zip(x.tensor_split(loss.chunks), y.tensor_split(loss.chunks)):
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            out = loss(model, cx, cy, noise, progress=1.0)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()


class Writer:
    """Appends dict rows to ``<out-dir>/<name>.csv``, flushed at once, and echoes them."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, row: dict) -> None:
        path = self.out_dir / f"{name}.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        print(name, json.dumps(row), flush=True)


def bench_certify(args, device, write):
    noise = GaussianNoise(args.sigma)
    for model_name in args.models:
        torch.manual_seed(0)
        base, shape = build_model(model_name)
        base = base.to(device).eval()
        costs = layer_costs(base, shape, device, 2)  # as if in bf16/fp16; fp32 moves twice as many bytes
        x = torch.rand(args.images, *shape, device=device)
        if args.loop:
            loop = partial(cohen_loop, base, x, args.sigma, args.n0, args.n, args.alpha, args.batch_size)
            cohen_loop(base, x[:1], args.sigma, args.n0, 2 * args.batch_size, args.alpha, args.batch_size)
            with PeakMemory(device) as memory:
                seconds = min(timed(loop, device)[0] for _ in range(args.repeats))
            write("certify", row(args, device, model_name, "fp32 (Cohen-style loop)", seconds, memory, None, None, "",
                                 costs))  # fmt: skip
        for name in args.executions:
            if name not in EXECUTIONS:
                raise ValueError(f"--executions: unknown {name!r}; choose from {', '.join(EXECUTIONS)}")
            if EXECUTIONS[name].compile:
                torch._dynamo.reset()
            model = prepare(base, device, name)
            sampling = dict(n0=args.n0, alpha=args.alpha, batch_size=args.batch_size)
            run = partial(certify_images, model, x, noise, device, sampling)
            one = partial(certify_images, model, x[:1], noise, device, sampling)
            compile_seconds, _ = timed(partial(one, 2 * args.batch_size + 1), device)  # warm-up, every shape
            with PeakMemory(device) as small:
                one(max(args.n // 10, args.n0))
            raws, times = [], []
            with PeakMemory(device) as memory:
                for _ in range(args.repeats):  # alternated, so both see the same share of a busy machine
                    raws.append(raw_forward(model, shape, args.batch_size, device, args.raw_seconds))
                    times.append(timed(partial(run, args.n), device)[0])
            raw, seconds = max(raws), min(times)
            warmup = f"{compile_seconds:.1f}"
            write("certify", row(args, device, model_name, name, seconds, memory, small, raw, warmup, costs, model))
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if args.auto_batch:
            model = prepare(base, device, "bf16+cl")
            print(
                f"--batch-size auto for {model_name} bf16+cl on {device}:",
                auto_batch_size(model, shape, device, limit=args.n),
                flush=True,
            )


def row(args, device, model_name, execution, seconds, memory, small, raw, warmup, costs, model=None):
    samples = args.images * (args.n0 + args.n)
    rate = samples / seconds
    flops, traffic = costs
    if execution.startswith("fp32"):
        traffic *= 2
    tbs = bandwidth_tbs(args, device)
    floor = traffic * (args.n0 + args.n) / (tbs * 1e12) if tbs else None
    return {
        "device": device_name(device),
        "model": model_name,
        "execution": execution,
        "images": args.images,
        "n0": args.n0,
        "n": args.n,
        "batch_size": args.batch_size,
        "seconds_per_image": round(seconds / args.images, 3),
        "samples_per_s": round(rate),
        "raw_forward_samples_per_s": round(raw) if raw else "",
        "ratio_to_raw": round(rate / raw, 3) if raw else "",
        "peak_mib": round(memory.mib, 1),
        "peak_mib_at_n_over_10": round(small.mib, 1) if small else "",
        "warmup_s": warmup,
        "batchnorm_folded": getattr(model, "folded", ""),
        "tflop_per_s": round(flops * rate / 1e12, 2),
        "activation_mb_per_sample": round(traffic / 1e6, 2),
        "bandwidth_floor_s_per_image": round(floor, 4) if floor else "",
        "fraction_of_bandwidth_floor": round(floor / (seconds / args.images), 3) if floor else "",
    }


def digits32(split):
    """Digits as 3x32x32 images (bilinear upsampling, grey in all channels), for a CIFAR-shaped network."""
    data = load_digits(split)
    x, y = data.tensors
    return torch.utils.data.TensorDataset(F.interpolate(x, size=32, mode="bilinear").clamp(0, 1).repeat(1, 3, 1, 1), y)


def bench_agreement(args, device, write):
    """Certify the same held-out images with the same noise in fp32 and bf16 + channels_last."""
    torch.manual_seed(0)
    model = CifarResNet(args.agreement_depth)
    config = TrainConfig(
        epochs=args.agreement_epochs, batch_size=64, lr=0.1, lr_step=max(1, args.agreement_epochs // 2)
    )
    with tempfile.TemporaryDirectory() as tmp:
        train(
            model,
            digits32("train"),
            GaussianAugmentation(),
            GaussianNoise(args.sigma),
            config=config,
            checkpoint_dir=tmp,
            device=device,
            progress=False,
        )
    test = digits32("test")
    every = max(1, len(test) // args.agreement)
    indices = list(range(0, len(test), every))[: args.agreement]
    x = torch.stack([test[i][0] for i in indices]).to(device)
    y = [int(test[i][1]) for i in indices]
    results = {}
    for name in ("fp32", *args.agreement_executions):
        if EXECUTIONS[name].compile:
            torch._dynamo.reset()
        prepared = prepare(model, device, name)
        generators = [image_generator(0, i, device) for i in indices]
        start = time.perf_counter()
        results[name] = cohen_certify(
            prepared,
            x,
            GaussianNoise(args.sigma),
            n0=args.n0,
            n=args.agreement_n,
            alpha=args.alpha,
            batch_size=args.batch_size,
            generator=generators,
        )
        print(f"agreement {name}: {time.perf_counter() - start:.1f} s", flush=True)

    def accuracy(certs, r):
        return round(100 * sum(c.prediction == label and c.radius >= r for c, label in zip(certs, y)) / len(y), 1)

    a = results["fp32"]
    for name in args.agreement_executions:
        b = results[name]
        out = {
            "device": device_name(device),
            "model": f"resnet{args.agreement_depth} (digits 3x32x32, {args.agreement_epochs} epochs)",
            "execution": name,
            "images": len(indices),
            "n0": args.n0,
            "n": args.agreement_n,
            "sigma": args.sigma,
            "predictions_changed": sum(p.prediction != q.prediction for p, q in zip(a, b)),
            "radii_changed": sum(abs(p.radius - q.radius) > 1e-6 for p, q in zip(a, b)),
            "max_radius_change": round(max(abs(p.radius - q.radius) for p, q in zip(a, b)), 4),
        }
        for r in (0.0, 0.25, 0.5):
            out[f"fp32_acc_r{r}"] = accuracy(a, r)
            out[f"fast_acc_r{r}"] = accuracy(b, r)
        write("agreement", out)


def bench_training(args, device, write):
    """Seconds per loader batch and peak memory of the Consistency and SmoothMix steps, fp32 vs bf16 + channels_last."""
    from rs_plugins.builtin.consistency import ConsistencyLoss
    from rs_plugins.builtin.smoothmix import SmoothMixLoss

    noise = GaussianNoise(args.sigma)
    shape = (3, 32, 32)
    losses = {
        "consistency (m=2, lbd=10)": lambda: ConsistencyLoss(m=2, lbd=10.0),
        "smoothmix (m=2, T=4, eta=5)": lambda: SmoothMixLoss(m=2, steps=4, eta=5.0),
    }
    for loss_name, make in losses.items():
        for name in ("fp32", "bf16+cl"):
            execution = EXECUTIONS[name]
            torch.manual_seed(0)
            model = CifarResNet(args.train_depth).to(device)
            memory_format = torch.channels_last if execution.channels_last else torch.contiguous_format
            model = model.to(memory_format=memory_format).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            loss = make()
            loss.set_epoch(100)  # past every warm-up: the full step
            dtype = {"fp32": None, "bf16": torch.bfloat16}[execution.precision]
            x = torch.rand(args.train_batch, *shape, device=device).contiguous(memory_format=memory_format)
            y = torch.randint(0, 10, (args.train_batch,), device=device)
            batch = partial(train_batch, model, loss, optimizer, x, y, noise, dtype)
            batch()  # warm-up
            with PeakMemory(device) as memory:
                seconds, _ = timed(partial(_repeat, batch, args.train_batches), device)
            per_batch = seconds / args.train_batches
            write(
                "training",
                {
                    "device": device_name(device),
                    "model": f"resnet{args.train_depth}",
                    "loss": loss_name,
                    "execution": name,
                    "batch": args.train_batch,
                    "seconds_per_batch": round(per_batch, 4),
                    "seconds_per_cifar10_epoch": round(per_batch * 50_000 / args.train_batch, 1),
                    "peak_mib": round(memory.mib, 1),
                },
            )


def _repeat(fn, times):
    for _ in range(times):
        fn()


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--models", nargs="+", default=["resnet20"], help="resnetD (CIFAR, depth D) | resnet50")
    parser.add_argument("--executions", nargs="+", default=["fp32", "bf16", "bf16+cl"], help=", ".join(EXECUTIONS))
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=400)
    parser.add_argument("--raw-seconds", type=float, default=3.0, help="how long to time the raw forward pass")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many timings (for a busy machine)")
    parser.add_argument("--loop", action="store_true", help="also time the per-image fp32 Cohen-style loop")
    parser.add_argument("--auto-batch", action="store_true", help="print what --batch-size auto picks")
    parser.add_argument("--agreement", type=int, default=0, help="images for the fp32 vs bf16+cl comparison")
    parser.add_argument("--agreement-n", type=int, default=4000)
    parser.add_argument("--agreement-executions", nargs="+", default=["bf16+cl"], help="each against fp32")
    parser.add_argument("--bandwidth-tbs", type=float, help="peak bandwidth for the floor (default: by GPU name)")
    parser.add_argument("--agreement-depth", type=int, default=20)
    parser.add_argument("--agreement-epochs", type=int, default=4)
    parser.add_argument("--train-batches", type=int, default=0, help="timed loader batches per training row")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--train-depth", type=int, default=20)
    parser.add_argument("--sections", nargs="+", default=["certify", "training", "agreement"])
    parser.add_argument("--out-dir", default="benchmarks/results/certify_speed")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    write = Writer(Path(args.out_dir))
    environment = {
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "args": vars(args),
    }
    (Path(args.out_dir) / "environment.json").write_text(json.dumps(environment, indent=2) + "\n")
    print(json.dumps(environment), flush=True)
    for section in args.sections:
        started = time.perf_counter()
        if section == "certify":
            bench_certify(args, device, write)
        elif section == "training" and args.train_batches:
            bench_training(args, device, write)
        elif section == "agreement" and args.agreement:
            bench_agreement(args, device, write)
        print(f"section {section}: {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
