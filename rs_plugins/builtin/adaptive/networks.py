"""The adaptive mixer's parts: the mixing networks (small, and the authors' V3/V4 on pre-activation blocks) and
the feature taps that feed them the base classifiers' intermediate features (Bai et al., SIMODS 2024).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Candidate (stage-1, stage-2) layer names, tried in order; a name matches a module whose dotted path is the name
# or ends with "." + name (a wrapper such as Sequential(Normalize, net) prefixes it).
DEFAULT_LAYERS: tuple[tuple[str, str], ...] = (
    ("block1", "block2"),  # RobustBench WideResNet (Carmon, Wu, ...)
    ("layer.0", "layer.1"),  # RobustBench DMWideResNet (Gowal, Rebuffi, Wang 2023)
    ("layer_0", "layer_1"),  # RobustBench DMPreActResNet (Rebuffi 2021)
    ("layer1", "layer2"),  # RobustBench PreActResNet, torchvision ResNet
    ("features.1", "features.4"),  # rs_plugins.nets.SmallCNN: first conv + ReLU, second conv + pool
)


class PreActBlock(nn.Module):
    """A pre-activation residual block (He et al. 2016): BN-ReLU-conv3x3 twice, 1x1 shortcut when shapes change."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, preact_identity: bool = False) -> None:
        super().__init__()
        self.preact_identity = preact_identity  # the identity shortcut adds relu(bn1(x)) (the paper's nets) or x
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        if self.shortcut is not None:
            shortcut = self.shortcut(out)
        else:
            shortcut = out if self.preact_identity else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def preact_stage(in_planes: int, planes: int, stride: int, preact_identity: bool = False) -> nn.Sequential:
    """Two PreAct blocks, the first with ``stride``."""
    first = PreActBlock(in_planes, planes, stride, preact_identity)
    return nn.Sequential(first, PreActBlock(planes, planes, 1, preact_identity))


class MixingNetwork(nn.Module):
    """The small mixing network (``net=small``, for tiny bases): features of both bases -> one scalar γ per image.

    Stage-1 features of g and h, concatenated, go through a PreAct stage (stride 2); stage-2 features, concatenated,
    through a 1x1 convolution; the two are summed (the level-2 map is average-pooled to the level-1 output's size
    when they differ), pass a second PreAct stage, BN-ReLU, global average pooling and a bias-free linear layer.

    Shape:
        features: ((B, C1g, ...), (B, C2g, ...), (B, C1h, ...), (B, C2h, ...)); returns γ (B,).
    """

    def __init__(self, channels: Sequence[int], width: int = 64) -> None:
        super().__init__()
        c1g, c2g, c1h, c2h = channels
        self.stage1 = preact_stage(c1g + c1h, width, stride=2)
        self.fuse = nn.Conv2d(c2g + c2h, width, 1, bias=False)
        self.stage2 = preact_stage(width, 2 * width, stride=2)
        self.bn = nn.BatchNorm2d(2 * width)
        self.linear = nn.Linear(2 * width, 1, bias=False)

    def forward(self, f1g: Tensor, f2g: Tensor, f1h: Tensor, f2h: Tensor) -> Tensor:
        level1 = self.stage1(torch.cat([f1g, _resize(f1h, f1g)], dim=1))
        level2 = self.fuse(torch.cat([f2g, _resize(f2h, f2g)], dim=1))
        out = self.stage2(level1 + _resize(level2, level1))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out).squeeze(1)


# Per-base widths of the paper's mixing networks, keyed by the base's stage-1 width (the authors' table in
# models/mixing_net.py); other bases get (c1, c2, 2·c2, 4·c2), the PreAct-ResNet-18 pattern.
PAPER_WIDTHS = {
    64: (64, 128, 256, 512),
    160: (160, 320, 512, 768),
    256: (256, 256, 384, 512),
    512: (512, 256, 384, 512),
}
NETS = ("v3", "v4", "small")


class PaperMixingNetwork(nn.Module):
    """The paper's ``MixingNetV3`` (``version=3``) and ``MixingNetV4`` (``version=4``): γ from both bases' features.

    The widths are the sums over the two bases of ``PAPER_WIDTHS``: the concatenated stage-1 features pass three
    PreAct stages (stride 2 each, to widths w1, w2, w3); the concatenated stage-2 features are added after the first
    stage, as they are (V3: they must have w1 channels) or through a 1x1 convolution (V4). Head: global average
    pooling and a bias-free linear layer. For a PreAct-ResNet-18 pair the widths are 128 -> 256/512/1024.

    Shape:
        features: ((B, C1g, ...), (B, C2g, ...), (B, C1h, ...), (B, C2h, ...)); returns γ (B,).
    """

    def __init__(self, channels: Sequence[int], version: int = 3) -> None:
        super().__init__()
        c1g, c2g, c1h, c2h = channels
        per_base = [PAPER_WIDTHS.get(c1, (c1, c2, 2 * c2, 4 * c2)) for c1, c2 in ((c1g, c2g), (c1h, c2h))]
        planes = [a + b for a, b in zip(*per_base)]
        if version == 3 and c2g + c2h != planes[1]:
            raise ValueError(f"--mixer-option net=v3 adds the stage-2 features ({c2g}+{c2h} channels) to a "
                             f"{planes[1]}-channel map; use net=v4 (a 1x1 convolution fuses them)")  # fmt: skip
        self.version = version
        widths = [c1g + c1h, *planes[1:]]
        self.stages = nn.ModuleList(preact_stage(a, b, 2, preact_identity=True) for a, b in zip(widths, widths[1:]))
        self.fuse = nn.Conv2d(c2g + c2h, planes[1], 1, bias=False) if version == 4 else None
        self.linear = nn.Linear(planes[-1], 1, bias=False)

    def forward(self, f1g: Tensor, f2g: Tensor, f1h: Tensor, f2h: Tensor) -> Tensor:
        level1 = self.stages[0](torch.cat([f1g, _resize(f1h, f1g)], dim=1))
        level2 = torch.cat([f2g, _resize(f2h, f2g)], dim=1)
        out = level1 + _resize(level2 if self.fuse is None else self.fuse(level2), level1)
        for stage in self.stages[1:]:
            out = stage(out)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1)).squeeze(1)


def mixing_network(channels: Sequence[int], net: str | None, width: int | None) -> nn.Module:
    """The mixing network ``--mixer-option net=`` names; by default the paper's (V3 when it fits, else V4), or the
    small one when only ``width`` is given."""
    if net is None:
        net = "small" if width is not None else "v3" if channels[1] + channels[3] == _paper_planes1(channels) else "v4"
    if net not in NETS:
        raise ValueError(f"--mixer-option net must be one of {', '.join(NETS)}; got {net!r}")
    if net == "small":
        width = 64 if width is None else width
        if not (isinstance(width, int) and width >= 1):
            raise ValueError(f"--mixer-option width must be a positive integer; got {width!r}")
        return MixingNetwork(channels, width)
    if width is not None:
        raise ValueError(f"--mixer-option width sets net=small only; net={net} has the paper's widths")
    return PaperMixingNetwork(channels, version=int(net[1]))


def _paper_planes1(channels: Sequence[int]) -> int:
    return sum(PAPER_WIDTHS.get(c1, (c1, c2))[1] for c1, c2 in ((channels[0], channels[1]), (channels[2], channels[3])))


def _resize(x: Tensor, like: Tensor) -> Tensor:
    return x if x.shape[-2:] == like.shape[-2:] else F.adaptive_avg_pool2d(x, like.shape[-2:])


class FeatureTap:
    """Stage-1 and stage-2 feature maps of a model's last forward pass, from forward hooks on two named layers.

    A model with a ``features(x) -> (f1, f2)`` *method* is asked directly instead (an extra forward pass).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | str | None, which: str) -> None:
        self.model = model
        self.method = None
        self.outputs: dict[int, Tensor] = {}
        features = getattr(type(model), "features", None)
        if layers is None and callable(features) and not isinstance(model.features, nn.Module):
            self.method = model.features
            return
        if isinstance(model, torch.jit.ScriptModule):
            raise ValueError(f"the {which} model is TorchScript, whose layers cannot be hooked; --mixer adaptive "
                             "needs an eager model (or one with a features(x) method)")  # fmt: skip
        modules = dict(model.named_modules())
        self.layers = _resolve_layers(modules, layers, which)
        self.modules = [modules[name] for name in self.layers]

    def _keep(self, level: int):
        def hook(module, inputs, output):
            self.outputs[level] = output

        return hook

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, f1, f2) of ``x``."""
        if self.method is not None:
            f1, f2 = self.method(x)
            return self.model(x), f1, f2
        # Hooks live for this call only: the base model is left as it was, and another mixer may share it.
        handles = [module.register_forward_hook(self._keep(level)) for level, module in enumerate(self.modules)]
        try:
            logits = self.model(x)
            return logits, self.outputs.pop(0), self.outputs.pop(1)
        finally:
            self.outputs.clear()
            for handle in handles:
                handle.remove()


def _resolve_layers(modules: dict[str, nn.Module], layers, which: str) -> list[str]:
    flag = f"--mixer-option {which}_layers"
    if isinstance(layers, str):
        layers = [part.strip() for part in layers.split(",")]
    candidates = [tuple(layers)] if layers is not None else list(DEFAULT_LAYERS)
    if layers is not None and len(layers) != 2:
        raise ValueError(f"{flag} takes two layer names, stage 1 then stage 2 (e.g. layer1,layer2); got {layers!r}")
    for pair in candidates:
        found = [_find(modules, name) for name in pair]
        if all(found):
            return found
        if layers is not None:
            missing = [name for name, hit in zip(pair, found) if not hit]
            sample = ", ".join(n for n in list(modules)[1:12])
            raise ValueError(f"{flag}: no layer named {', '.join(map(repr, missing))} in the {which} model; "
                             f"its layers include {sample}")  # fmt: skip
    defaults = "; ".join(",".join(pair) for pair in DEFAULT_LAYERS)
    msg = f"the {which} model has none of the default feature layers ({defaults}) and no features(x) method; "
    raise ValueError(msg + f"name two with {flag}=STAGE1,STAGE2")


def _find(modules: dict[str, nn.Module], name: str) -> str | None:
    if name in modules:
        return name
    hits = [path for path in modules if path.endswith("." + name)]
    return hits[0] if len(hits) == 1 else None
