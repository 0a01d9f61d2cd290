"""Denoised-smoothing certification speed: a diffusion UNet with random weights, built from its configuration
(nothing is downloaded), composed with a CIFAR ResNet-110. ``--unet ddpm``: google/ddpm-cifar10-32's diffusers
UNet (35.7 M parameters, linear 1000 steps); ``--unet adm``: the ADM UNet of Carlini et al.'s CIFAR-10 checkpoint
``cifar10_uncond_50M_500K.pt`` (52.5 M parameters, cosine 4000 steps, rescaled timesteps), saved as a ``.pt``.

In one process on one device it measures, per CIFAR-shaped image with n0 + n samples:

- ``engine``: rs-plugins' ``cohen_certify`` on the composed model as the CLI runs it (``DiffusionDenoiser`` loaded
  from a saved diffusers folder, ``DenoisedClassifier``, ``prepare_model``), in seconds per image;
- ``reference``: a per-image fp32 loop with the structure of the authors' code (``x.repeat`` batches, noise added
  by the diffusion's forward process at t*, one image at a time, counts copied to the host after every batch),
  written here independently;
- ``raw``: the composed model's forward pass alone in full batches, scaled to n0 + n samples per image, for the
  fraction of raw throughput the engine reaches.

    python benchmarks/denoised_cifar.py --device cpu --n0 8 --n 64 --batch-size 32 --images 1 --unet adm

Prints one JSON line per measurement (wall and CPU seconds per image; on a CPU the ratios use CPU time, which a
neighbour's load on a shared machine barely changes) and appends it to ``--out`` (CSV).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rs_plugins import DenoisedClassifier, cohen_certify
from rs_plugins.builtin.denoisers.adm import AdmUNet
from rs_plugins.builtin.denoisers.adm_files import PRESETS
from rs_plugins.builtin.denoisers.diffusion import DiffusionDenoiser
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.execution import Execution, prepare_model
from rs_plugins.nets import cifar_resnet110

DDPM_CIFAR10_32 = dict(  # the configuration of google/ddpm-cifar10-32's UNet
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_eps=1e-6, downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1, dropout=0.1,
)  # fmt: skip


def build(directory: Path, sigma: float, unet: str = "ddpm") -> tuple[DenoisedClassifier, int]:
    torch.manual_seed(0)
    if unet == "adm":  # the released CIFAR-10 architecture, recognised from its shapes like the real file
        config = next(c for name, (c, _) in PRESETS.items() if "CIFAR-10" in name)
        torch.save(AdmUNet(config).state_dict(), directory / "cifar10_uncond_50M_500K.pt")
        denoiser = DiffusionDenoiser(sigma, str(directory / "cifar10_uncond_50M_500K.pt"))
    else:
        from diffusers import DDPMScheduler, UNet2DModel

        UNet2DModel(**DDPM_CIFAR10_32).save_pretrained(directory)
        DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02).save_pretrained(directory)
        denoiser = DiffusionDenoiser(sigma, str(directory))
    params = sum(p.numel() for p in denoiser.parameters())
    return DenoisedClassifier(cifar_resnet110().eval(), denoiser).eval(), params


def reference_counts(model: DenoisedClassifier, x: torch.Tensor, num: int, batch_size: int) -> np.ndarray:
    """The authors' _sample_noise, rewritten: x.repeat batches, q_sample noise at t*, per-batch host copy."""
    denoiser = model.denoiser
    abar = denoiser.alpha_bar
    counts = np.zeros(10, dtype=int)
    with torch.no_grad():
        while num > 0:
            this = min(batch_size, num)
            num -= this
            batch = x.repeat((this, 1, 1, 1))
            x_t = math.sqrt(abar) * (2 * batch - 1) + math.sqrt(1 - abar) * torch.randn_like(batch)
            if denoiser.time_scale is None:  # diffusers
                eps = denoiser.unet(x_t, denoiser.t).sample[:, :3]
            else:  # ADM, called with t * 1000 / 4000 as improved-diffusion's rescale_timesteps does
                t = torch.tensor([denoiser.t * denoiser.time_scale] * this, device=x.device)
                eps = denoiser.unet(x_t, t)[:, :3]
            x0 = (math.sqrt(1 / abar) * x_t - math.sqrt(1 / abar - 1) * eps).clamp(-1, 1)  # their pred_xstart
            predictions = model.classifier((x0 + 1) / 2).argmax(1).cpu().numpy()
            for p in predictions:
                counts[p] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n0", type=int, default=8)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--unet", default="ddpm", choices=["ddpm", "adm"], help="ddpm-cifar10-32 or the authors' ADM")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--out", default="benchmarks/results/denoised_cifar.csv")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        model, params = build(Path(tmp), args.sigma, args.unet)
    model = model.to(device)
    execution = Execution(args.precision, args.channels_last, args.compile, args.compile_mode)
    engine = prepare_model(model, device, execution)
    noise = GaussianNoise(args.sigma)
    x = torch.rand(args.images, 3, 32, 32, device=device)
    common = {"unet": args.unet, "params": params, "t": model.denoiser.t, "channels_last": args.channels_last,
              "compile": args.compile, "n0": args.n0, "n": args.n, "batch_size": args.batch_size,
              "device": str(device), "threads": torch.get_num_threads()}  # fmt: skip
    rows = []

    def timed(what: str, precision: str, fn, scale: float = 1.0) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        row = common | {"what": what, "precision": precision, "s_per_image": scale * seconds / args.images,
                        "cpu_s_per_image": scale * cpu / args.images}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)

    batch = torch.rand(args.batch_size, 3, 32, 32, device=device)
    steps = math.ceil(args.images * (args.n0 + args.n) / args.batch_size)

    def raw():
        with torch.no_grad():
            for _ in range(steps):
                engine(batch).argmax(1)

    def certify():
        generators = [torch.Generator(device).manual_seed(i) for i in range(args.images)]
        cohen_certify(engine, x, noise, n0=args.n0, n=args.n, batch_size=args.batch_size, generator=generators)

    def reference():
        for image in x:
            reference_counts(model, image, args.n0, args.batch_size)
            reference_counts(model, image, args.n, args.batch_size)

    timed("raw", args.precision, raw, scale=args.images * (args.n0 + args.n) / (steps * args.batch_size))  # per sample
    timed("engine", args.precision, certify)
    timed("reference", "fp32", reference)
    by = {r["what"]: r["cpu_s_per_image" if device.type == "cpu" else "s_per_image"] for r in rows}
    print(
        json.dumps(
            {"engine_fraction_of_raw": by["raw"] / by["engine"], "speedup_vs_reference": by["reference"] / by["engine"]}
        )
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
