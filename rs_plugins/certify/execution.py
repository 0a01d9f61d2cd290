"""How a model is run for certification, prediction or attacks: device, precision, memory format, compilation.

The certificate is a statement about the smoothed classifier of the model *as run*: run in bf16, the base
classifier f is the bf16 network, and g(x) = argmax_c P[f(x + delta) = c] is that network smoothed. The
Monte Carlo counts stay exact integers and the noise is drawn in fp32 (then cast by autocast), so the
statistics are as sound as in fp32; only f changes, and ``benchmarks/certify_speed.py`` measures by how much.
``--compile`` is an inference-only fast path: BatchNorm folded into the convolution before it, weights frozen as
constants, an optional ``--compile-mode`` (max-autotune, CUDA graphs); f is then the folded, compiled network.
"""

from __future__ import annotations

import argparse
import copy
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..results.provenance import describe, remember

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""``--precision`` choices and the dtype each runs the model in (None: the model's own, float32)."""
CPU_AUTO_BATCH = 400
"""``--batch-size auto`` on a CPU: the reference repositories' batch (Cohen et al.'s ``--batch 400``). A CPU's
throughput barely depends on the batch size, and 400 ImageNet-sized samples fit in a few GB."""
PRECISION_CHOICES = (*PRECISIONS, "auto")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile's modes; reduce-overhead and max-autotune record CUDA graphs (on CUDA only; one graph per batch
shape), the max-autotune ones also time alternative kernels at compile time (minutes, once per process)."""
AUTO_BATCH_CAP = 16_384
"""Largest batch ``auto`` picks on a GPU: beyond it throughput stops growing and only the risk of fragmentation does."""


@dataclass(frozen=True)
class Execution:
    """How to run a model: ``precision`` fp32/bf16/fp16 (autocast; ``resolve_precision`` turns auto into one),
    NHWC memory, and ``compile``: BatchNorm folded, then ``torch.compile`` with frozen weights in ``compile_mode``."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}; got {self.precision!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}; got {self.compile_mode!r}")

    def settings(self) -> dict:
        """The fields as a dict for a results file's settings: each can change the rows (the mode only compiled)."""
        settings = asdict(self)
        if not self.compile:
            del settings["compile_mode"]
        return settings


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` as the fastest precision ``device`` supports; any other precision as it is.

    CUDA: bf16 where the GPU computes in it (Ampere and later), else fp16. CPU: bf16 only with native bf16
    instructions (AVX512-BF16 or AMX), else fp32: without them bf16 is emulated, and measured here it was 2.3x
    faster for a CIFAR ResNet-20 but 5x slower for the digits SmallCNN, so it is no safe default.
    """
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if device.type == "cpu":
        native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        native = native or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return "bf16" if native else "fp32"
    return "fp32"


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

    The model itself (not the wrapper) is stored channels_last and compiled, so a state dict keeps its keys;
    with ``compile`` a copy is folded first (``fold_batchnorm``; the wrapper's ``folded`` says how many layers).
    """
    execution = execution or Execution()
    device = torch.device(device)
    memory_format = torch.channels_last if execution.channels_last else torch.preserve_format
    name = describe(model, type(model).__name__)
    folded = 0
    if execution.compile:
        model = copy.deepcopy(model).eval()
        folded = fold_batchnorm(model)
    model = model.to(device, memory_format=memory_format).eval()
    if execution.compile:
        options = dict(torch._inductor.list_mode_options(execution.compile_mode)) | {"freezing": True}
        model = torch.compile(model, options=options)  # freezing: weights become constants (inference only)
    # eval as a whole: eval_mode() restores the wrapper's mode, not the model's; messages name the model, not RunAs
    wrapper = remember(RunAs(model, execution).eval(), name)
    wrapper.folded = folded
    return wrapper


def fold_batchnorm(model: nn.Module) -> int:
    """Fold each eval-mode BatchNorm2d that alone reads a Conv2d's output into that convolution, in place.

    With s = gamma / sqrt(var + eps), BN(conv(x)) is the convolution with weights W * s and bias
    (b - mean) * s + beta: one layer and one pass over the activations fewer. Pairs are read off a torch.fx
    trace (of each submodule where the whole model does not trace), so only a BatchNorm whose input is that
    convolution's output, used nowhere else, is folded; the BatchNorm becomes an Identity. Returns how many.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return 0
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # data-dependent control flow and the like: try the parts
        return sum(fold_batchnorm(child) for child in model.children())
    calls = Counter(id(model.get_submodule(node.target)) for node in graph.nodes if node.op == "call_module")
    for node in graph.nodes:  # a parameter read directly (F.conv2d(x, self.conv.weight)) is one more use
        if node.op == "get_attr" and "." in node.target:
            calls[id(model.get_submodule(node.target.rpartition(".")[0]))] += 1
    folded = 0
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        bn, conv = model.get_submodule(node.target), model.get_submodule(source.target)
        if type(bn) is not nn.BatchNorm2d or type(conv) is not nn.Conv2d or bn.running_mean is None:
            continue
        if calls[id(bn)] != 1 or calls[id(conv)] != 1:  # a shared layer is used elsewhere unfolded
            continue
        _fold(conv, bn)
        parent, _, name = node.target.rpartition(".")
        setattr(model.get_submodule(parent), name, nn.Identity())
        folded += 1
    return folded


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv := bn(conv(.)), computed in float64 and stored in the convolution's dtype."""
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    weight = conv.weight.double() * scale.reshape(-1, *[1] * (conv.weight.dim() - 1))
    conv.weight.copy_(weight.to(conv.weight.dtype))
    bias = ((bias - mean) * scale + beta).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(bias)


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
    """``--precision``, ``--channels-last``, ``--compile`` and ``--compile-mode`` for a command that runs a model."""
    g = p.add_argument_group("execution (the certificate is of the model as run)")
    precision_help = "autocast dtype; auto: bf16 on CUDA with bf16, else fp16 on CUDA; on a CPU fp32 unless it has"
    precision_help += " native bf16 (default fp32)"
    g.add_argument("--precision", default="fp32", choices=list(PRECISION_CHOICES), help=precision_help)
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and inputs")
    compile_help = ("inference fast path: BatchNorm folded into the convolutions, then torch.compile with frozen "
                    "weights; compiling costs time up front, which pays off on a GPU over long runs (hundreds of "
                    "images at N = 100000), not on a CPU or for a few images (an 18-image CPU run was 4x slower)")
    g.add_argument("--compile", action="store_true", help=compile_help)
    mode_help = "torch.compile mode with --compile; reduce-overhead and max-autotune record CUDA graphs on CUDA"
    g.add_argument(
        "--compile-mode", default="default", choices=list(COMPILE_MODES), help=f"{mode_help} (default: default)"
    )


def execution_from_args(args: argparse.Namespace, device: torch.device | str = "cpu") -> Execution:
    """The ``Execution`` that ``add_execution_arguments``'s flags describe, with ``--precision auto`` resolved."""
    if args.compile_mode != "default" and not args.compile:
        raise ValueError(f"--compile-mode {args.compile_mode} needs --compile")
    precision = resolve_precision(args.precision, device)
    return Execution(precision, args.channels_last, args.compile, args.compile_mode)


def execution_record(model: nn.Module, requested: str) -> dict:
    """What a sidecar records of the execution beyond the settings: the --precision asked for, BatchNorm folds."""
    return {"precision_requested": requested, "batchnorm_folded": getattr(model, "folded", 0)}
