"""How a model is run for certification, prediction or attacks: device, precision, memory format, compilation.

The certificate is a statement about the smoothed classifier of the model *as run*: run in bf16, the base
classifier f is the bf16 network, and g(x) = argmax_c P[f(x + delta) = c] is that network smoothed. The
Monte Carlo counts stay exact integers and the noise is drawn in fp32 (then cast by autocast), so the
statistics are as sound as in fp32; only f changes, and ``benchmarks/certify_speed.py`` measures by how much.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .provenance import describe, remember
from .training import PRECISIONS

CPU_AUTO_BATCH = 400
"""``--batch-size auto`` on a CPU: the reference repositories' batch (Cohen et al.'s ``--batch 400``). A CPU's
throughput barely depends on the batch size, and 400 ImageNet-sized samples fit in a few GB."""
AUTO_BATCH_CAP = 16_384
"""Largest batch ``auto`` picks on a GPU: beyond it throughput stops growing and only the risk of fragmentation does."""


@dataclass(frozen=True)
class Execution:
    """How to run a model: ``precision`` fp32/bf16/fp16 (autocast), NHWC memory, ``torch.compile``."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")

    def settings(self) -> dict:
        """The fields as a dict for a results file's settings: each can change the rows."""
        return asdict(self)


class RunAs(nn.Module):
    """Wraps a model so every call runs it in the chosen precision and memory format and returns fp32 logits.

    Inputs stay fp32 (noise is drawn in fp32); autocast casts them at the first layer that computes in bf16
    or fp16. Gradients flow through as usual, so attacks can run through the wrapper too.

    Shape:
        x: (B, C, H, W) float. returns: (B, K) float32 logits.
    """

    def __init__(self, model: nn.Module, execution: Execution) -> None:
        super().__init__()
        self.model = model
        self.execution = execution
        self.dtype = PRECISIONS[execution.precision]

    def forward(self, x: Tensor) -> Tensor:
        if self.execution.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return self.model(x)
        try:
            with torch.autocast(x.device.type, dtype=self.dtype):
                out = self.model(x)
        except RuntimeError as err:
            if x.device.type == "cpu" and self.execution.precision == "fp16":
                msg = f"--precision fp16 failed on the CPU ({err}); CPU kernels are not all fp16: use --precision bf16"
                raise ValueError(msg) from err
            raise
        return out.float() if isinstance(out, Tensor) and out.is_floating_point() else out


def prepare_model(model: nn.Module, device: torch.device | str, execution: Execution | None = None) -> nn.Module:
    """Move ``model`` to ``device`` in eval mode and wrap it to run as ``execution`` says.

    The model itself (not the wrapper) is stored channels_last and compiled, so a state dict keeps its keys.
    """
    execution = execution or Execution()
    device = torch.device(device)
    memory_format = torch.channels_last if execution.channels_last else torch.preserve_format
    name = describe(model, type(model).__name__)
    model = model.to(device, memory_format=memory_format).eval()
    if execution.compile:
        model = torch.compile(model)
    # eval as a whole: eval_mode() restores the wrapper's mode, not the model's; messages name the model, not RunAs
    return remember(RunAs(model, execution).eval(), name)


def auto_batch_size(model: nn.Module, image_shape: Sequence[int], device: torch.device | str, *, limit: int) -> int:
    """The batch for ``--batch-size auto``: on CUDA, what fills ~60% of the free memory, measured with a probe.

    The probe runs 64 noisy samples through ``model`` (eagerly, even if compiled) and takes the peak memory per
    sample, plus the fp32 noise and input copies of a pass. On a CPU it is ``CPU_AUTO_BATCH``. Never above
    ``limit`` (more samples than one image needs gain nothing) nor ``AUTO_BATCH_CAP``; on CUDA a multiple of 32.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return max(1, min(limit, CPU_AUTO_BATCH))
    probe = 64
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    x = torch.rand(probe, *image_shape, device=device)
    eager = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") else nullcontext()
    with torch.no_grad(), eager:
        model(x + torch.randn_like(x)).argmax(1)
    torch.cuda.synchronize(device)
    per_sample = (torch.cuda.max_memory_allocated(device) - before) / probe + 4 * x[0].numel() * 4
    del x
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    batch = int(0.6 * free / per_sample)
    batch = min(batch, limit, AUTO_BATCH_CAP)
    return max(1, batch - batch % 32 if batch >= 32 else batch)


def batch_size_arg(text: str) -> int | str:
    """argparse type for ``--batch-size``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto; got {text}")
    return value


def add_execution_arguments(p: argparse.ArgumentParser) -> None:
    """``--precision``, ``--channels-last`` and ``--compile`` for a command that runs a model (not train)."""
    g = p.add_argument_group("execution (the certificate is of the model as run)")
    g.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="autocast dtype (default fp32)")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and inputs")
    g.add_argument("--compile", action="store_true", help="torch.compile the model: compiling costs time up front, "
                   "which pays off on a GPU over long runs (hundreds of images at N = 100000), not on a CPU or "
                   "for a few images (an 18-image CPU run was 4x slower)")  # fmt: skip


def execution_from_args(args: argparse.Namespace) -> Execution:
    """The ``Execution`` that ``add_execution_arguments``'s flags describe."""
    return Execution(args.precision, args.channels_last, args.compile)
