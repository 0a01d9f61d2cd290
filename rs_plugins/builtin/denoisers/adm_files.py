"""openai's improved-diffusion and guided-diffusion ``.pt`` checkpoints for ``--denoiser diffusion:FILE.pt``.

A checkpoint is a bare state dict of the authors' ``UNetModel``: it holds the architecture (read from the
tensors' names and shapes here) but neither the diffusion schedule nor the number of attention heads. Those come
from ``--denoiser-option`` (``schedule``, ``steps``, ``rescale_timesteps``, ``heads`` or ``head_channels``) or,
for the released checkpoints whose architecture is recognised, from the flags the authors published with them.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import Tensor

from rs_plugins.file_checks import load_weights_only, state_dict_diff

from .adm import AdmConfig, AdmUNet

OPTION = "--denoiser diffusion:FILE.pt"
SCHEDULES = ("linear", "cosine")
SETTINGS = ("schedule", "steps", "rescale_timesteps")

# The released unconditional checkpoints, by architecture, with the diffusion flags of their READMEs (and, for the
# two Carlini et al. use, of their DRM.py). Heads are not in a state dict, so they are part of the preset.
PRESETS: dict[str, tuple[AdmConfig, dict[str, Any]]] = {
    "improved-diffusion CIFAR-10 32x32 (cifar10_uncond_50M_500K.pt, cifar10_uncond_vlb_50M_500K.pt)": (
        AdmConfig(3, 128, 6, 3, (2, 4), (1, 2, 2, 2), True, False, num_heads=4),
        {"schedule": "cosine", "steps": 4000, "rescale_timesteps": True},
    ),
    "improved-diffusion ImageNet 64x64 (imagenet64_uncond_100M_1500K.pt, imagenet64_uncond_vlb_100M_1500K.pt)": (
        AdmConfig(3, 128, 6, 3, (4, 8), (1, 2, 3, 4), True, False, num_heads=4),
        {"schedule": "cosine", "steps": 4000, "rescale_timesteps": True},
    ),
    "guided-diffusion ImageNet 256x256 unconditional (256x256_diffusion_uncond.pt)": (
        AdmConfig(3, 256, 6, 2, (8, 16, 32), (1, 1, 2, 2, 4, 4), True, True, num_head_channels=64),
        {"schedule": "linear", "steps": 1000, "rescale_timesteps": False},
    ),
}


def alphas_cumprod(schedule: str, steps: int) -> Tensor:
    """abar_t for t = 0 .. steps - 1 in float64: the linear schedule of Ho et al. (beta from 1e-4 to 0.02, scaled
    by 1000 / steps) or the cosine schedule of Nichol & Dhariwal (abar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2,
    beta_t = min(1 - abar((t + 1) / T) / abar(t / T), 0.999))."""
    if schedule == "linear":
        scale = 1000 / steps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    else:

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - abar((i + 1) / steps) / abar(i / steps), 0.999) for i in range(steps)],
                             dtype=torch.float64)  # fmt: skip
    return torch.cumprod(1 - betas, dim=0)


def _indices(state: dict[str, Tensor], prefix: str) -> list[int]:
    found = {int(m.group(1)) for key in state if (m := re.match(rf"{prefix}\.(\d+)\.", key))}
    return sorted(found)


def infer_config(state: dict[str, Tensor], path: str) -> AdmConfig:
    """The architecture of an ADM state dict (heads left at 1: they are not stored), or a one-line refusal."""
    if "label_emb.weight" in state:
        msg = f"{OPTION}: {path} is class-conditional (it has label_emb); a denoiser has no label, so give an "
        raise ValueError(msg + "unconditional checkpoint (e.g. 256x256_diffusion_uncond.pt)")
    needed = ("input_blocks.0.0.weight", "out.2.weight", "input_blocks.1.0.emb_layers.1.weight")
    if not all(key in state for key in needed):
        msg = f"{OPTION}: {path} is not an improved-/guided-diffusion UNetModel state dict (no {', '.join(needed)})"
        raise ValueError(msg)
    model_channels, in_channels = state["input_blocks.0.0.weight"].shape[:2]
    outputs = _indices(state, "output_blocks")
    upsamplers = [i for i in outputs if any(re.match(rf"output_blocks\.{i}\.[12]\.(conv|in_layers)\.", k)
                                            for k in state)]  # fmt: skip
    levels = len(upsamplers) + 1
    if not outputs or len(outputs) % levels:
        raise ValueError(f"{OPTION}: {path}: cannot read the UNet's levels from its output_blocks")
    per_level = len(outputs) // levels  # num_res_blocks + 1
    mult = [state[f"output_blocks.{outputs[j * per_level]}.0.out_layers.3.weight"].shape[0]
            for j in range(levels)]  # fmt: skip
    channel_mult = tuple(int(m) // int(model_channels) for m in reversed(mult))
    attention, block = [], 1
    for level in range(levels):
        for _ in range(per_level - 1):
            if f"input_blocks.{block}.1.qkv.weight" in state:
                attention.append(2**level)
            block += 1
        block += 1  # the downsampler
    emb_out = state["input_blocks.1.0.emb_layers.1.weight"].shape[0]
    first_out = state["input_blocks.1.0.out_layers.3.weight"].shape[0]
    # residual up/downsampling: the upsampler after a level's last block is a ResBlock (in_layers), not a conv
    updown = bool(upsamplers) and any(re.match(rf"output_blocks\.{upsamplers[0]}\.[12]\.in_layers\.", k) for k in state)
    return AdmConfig(
        in_channels=int(in_channels),
        model_channels=int(model_channels),
        out_channels=int(state["out.2.weight"].shape[0]),
        num_res_blocks=per_level - 1,
        attention_resolutions=tuple(sorted(set(attention))),
        channel_mult=channel_mult,
        use_scale_shift_norm=emb_out == 2 * first_out,
        resblock_updown=updown,
    )


def preset_for(config: AdmConfig) -> str | None:
    """The name of the released checkpoint with this architecture (heads aside), or None."""
    for name, (known, _) in PRESETS.items():
        if replace(known, num_heads=1, num_head_channels=-1) == config:
            return name
    return None


def settle(config: AdmConfig, options: dict[str, Any], path: str) -> tuple[AdmConfig, dict[str, Any], str | None]:
    """Heads and the diffusion settings: the options given, else the recognised preset's, else a refusal."""
    preset = preset_for(config)
    settings: dict[str, Any] = {}
    if preset is not None:
        known, settings = PRESETS[preset]
        config = replace(config, num_heads=known.num_heads, num_head_channels=known.num_head_channels)
        settings = dict(settings)
    heads, head_channels = options.get("heads"), options.get("head_channels")
    if heads is not None and head_channels is not None:
        raise ValueError("--denoiser-option: give heads or head_channels, not both")
    for key, value in (("heads", heads), ("head_channels", head_channels), ("steps", options.get("steps"))):
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"--denoiser-option {key} must be a positive integer; got {value!r}")
    if heads is not None:
        config = replace(config, num_heads=heads, num_head_channels=-1)
    if head_channels is not None:
        config = replace(config, num_heads=1, num_head_channels=head_channels)
    settings |= {k: options[k] for k in SETTINGS if options.get(k) is not None}
    missing = [k for k in SETTINGS if k not in settings]
    if preset is None and heads is None and head_channels is None:
        missing.append("heads (or head_channels)")
    if missing:
        msg = (f"{OPTION}: {path} is not a released checkpoint whose settings are known ({describe(config)}); give "
               f"--denoiser-option {', '.join(missing)}, as the flags it was trained with "
               "(e.g. schedule=cosine steps=4000 rescale_timesteps=true heads=4)")  # fmt: skip
        raise ValueError(msg)
    if settings["schedule"] not in SCHEDULES:
        msg = f"--denoiser-option schedule must be one of {', '.join(SCHEDULES)}; got {settings['schedule']!r}"
        raise ValueError(msg)
    if not isinstance(settings["rescale_timesteps"], bool):
        msg = f"--denoiser-option rescale_timesteps must be true or false; got {settings['rescale_timesteps']!r}"
        raise ValueError(msg)
    for channels in {config.model_channels * m for m in config.channel_mult}:
        if channels % config.heads(channels):
            raise ValueError(f"--denoiser-option: {channels} channels do not split into {config.heads(channels)} heads")
    return config, settings, preset


def describe(config: AdmConfig) -> str:
    return (f"{config.model_channels} channels x {config.channel_mult}, {config.num_res_blocks} res blocks, attention "
            f"at {config.attention_resolutions}")  # fmt: skip


def load_adm(path: str, options: dict[str, Any]) -> tuple[AdmUNet, Tensor, float, dict[str, Any]]:
    """The UNet (eval mode, CPU), abar in float64, the factor the UNet's timestep is multiplied by, and what to
    record in the sidecar."""
    state = load_weights_only(path, OPTION, "an improved-/guided-diffusion UNetModel state dict")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{OPTION}: {path} holds a {type(state).__name__}, not a state dict of tensors")
    config, settings, preset = settle(infer_config(state, path), options, path)
    unet = AdmUNet(config)
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError:
        diff = state_dict_diff(unet, state)
        raise ValueError(f"{OPTION}: {path} does not load into the ADM UNet read from it ({diff})") from None
    steps = settings["steps"]
    scale = 1000.0 / steps if settings["rescale_timesteps"] else 1.0
    record = {"format": "adm", "preset": preset, **settings, "architecture": asdict(config)}
    return unet.eval(), alphas_cumprod(settings["schedule"], steps), scale, record
