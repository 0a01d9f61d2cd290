"""The ADM UNet of openai's improved-diffusion and guided-diffusion (Nichol & Dhariwal 2021; Dhariwal & Nichol 2021).

Written here from the papers' architecture, with the parameter names of the authors' ``UNetModel``, so their
``.pt`` state dicts load strictly (``load_state_dict(strict=True)``: any layout this code gets wrong fails to
load instead of running). Only what the released unconditional checkpoints use is built: 2-D images, no class
label, the "legacy" attention order (heads split before q, k, v), with or without residual up/downsampling and
scale-shift normalisation. Attention runs through ``scaled_dot_product_attention``: the same softmax(q k^T / sqrt(d))
as the authors' ``QKVAttentionLegacy`` (they scale q and k by d^(-1/4) each), with the fused kernels on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class AdmConfig:
    """The architecture of an ADM UNet (the authors' ``UNetModel`` arguments of the same names)."""

    in_channels: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]  # downsampling factors with attention, e.g. (2, 4) for "16,8" at 32 px
    channel_mult: tuple[int, ...]
    use_scale_shift_norm: bool
    resblock_updown: bool
    num_heads: int = 1
    num_head_channels: int = -1  # > 0: a fixed width per head instead of num_heads

    def heads(self, channels: int) -> int:
        return channels // self.num_head_channels if self.num_head_channels > 0 else self.num_heads


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [cos(t f_i), sin(t f_i)] with f_i = max_period^(-i / (dim / 2)), as ADM's."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


class Downsample(nn.Module):
    def __init__(self, channels: int, conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if conv else nn.AvgPool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if conv else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, the timestep added (or as scale and shift of the second norm), norm-SiLU-conv, skip."""

    def __init__(self, channels: int, emb: int, out: int, scale_shift: bool, up: bool = False, down: bool = False):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(norm(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        self.resample = Upsample(channels, False) if up else Downsample(channels, False) if down else None
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * out if scale_shift else out))
        self.out_layers = nn.Sequential(norm(out), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.resample is not None:  # normalise and activate, then resample both paths, then convolve
            h = self.resample(self.in_layers[:-1](x))
            x, h = self.resample(x), self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the pixels; the qkv projection's channels are ordered (head, q|k|v, channel)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat)).reshape(b, self.heads, 3 * (c // self.heads), -1).transpose(2, 3)
        q, k, v = qkv.chunk(3, dim=-1)  # each (b, heads, pixels, c / heads)
        h = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, c, -1)
        return (flat + self.proj_out(h)).reshape(b, c, height, width)


class Step(nn.ModuleList):
    """Layers run in order; those that take the timestep embedding get it (the authors' TimestepEmbedSequential)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class AdmUNet(nn.Module):
    """ADM's UNet: ``model(x_t, t)`` returns epsilon (and, with a learned variance, C more channels)."""

    def __init__(self, config: AdmConfig) -> None:
        super().__init__()
        c = config
        self.config = config
        emb = 4 * c.model_channels
        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))

        def res(channels: int, out: int, **updown: bool) -> ResBlock:
            return ResBlock(channels, emb, out, c.use_scale_shift_norm, **updown)

        def attention(channels: int) -> AttentionBlock:
            return AttentionBlock(channels, c.heads(channels))

        ch = c.model_channels * c.channel_mult[0]
        self.input_blocks = nn.ModuleList([Step([nn.Conv2d(c.in_channels, ch, 3, padding=1)])])
        skips, ds = [ch], 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * c.model_channels)]
                ch = mult * c.model_channels
                if ds in c.attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(Step(layers))
                skips.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(Step([res(ch, ch, down=True) if c.resblock_updown else Downsample(ch, True)]))
                skips.append(ch)
                ds *= 2
        self.middle_block = Step([res(ch, ch), attention(ch), res(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), mult * c.model_channels)]
                ch = mult * c.model_channels
                if ds in c.attention_resolutions:
                    layers.append(attention(ch))
                if level and i == c.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if c.resblock_updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(Step(layers))
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, c.out_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
