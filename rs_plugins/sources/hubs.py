"""Classifiers from the model hubs: ``--model timm:NAME`` (timm) and ``--model hf:OWNER/NAME`` (transformers).

Each is wrapped with its own preprocessing, read from its configuration (timm's ``pretrained_cfg``, the Hugging
Face image processor): resize to the input size it was trained at (with its interpolation, antialiased) and
normalise with its mean and std. Inputs therefore stay (B, C, H, W) images in [0, 1] like every other source,
and the smoothing noise is added before the model's own preprocessing. No centre crop is taken: cropping after
the noise would change what is certified; the data source decides the crop. Weights come through the libraries'
own caches; ``offline()`` keeps both off the network.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rs_plugins.errors import MissingDependencyError, SourceError
from rs_plugins.file_checks import state_dict_diff, untrusted
from rs_plugins.sources.fetch import offline  # the one offline switch: --offline, RS_PLUGINS_OFFLINE, HF_HUB_OFFLINE

HUB_PREFIXES = ("timm:", "hf:")
INTERPOLATIONS = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic", "area": "area"}
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic", 4: "area"}  # PIL.Image.Resampling values (BOX ~ area)


class Preprocessed(nn.Module):
    """``model(normalize(resize(x)))``: a hub classifier that takes [0, 1] images and returns logits (B, K).

    Args:
        model: the network; a transformers model is called with ``pixel_values=`` and its ``.logits`` returned.
        size: (H, W) the model takes; inputs of another size are resized (None: never).
        interpolation: ``bicubic``, ``bilinear``, ``nearest`` or ``area``.
        mean, std: per-channel normalisation applied after resizing.
    """

    def __init__(self, model: nn.Module, size: tuple[int, int] | None, interpolation: str, mean, std,
                 transformers: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.model, self.size, self.interpolation, self.transformers = model, size, interpolation, transformers
        # in the state dict, so the weights' hash in the results' sidecar covers the normalisation too
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.mean.shape[1]:
            msg = f"the hub model normalises {self.mean.shape[1]}-channel images; the data has {x.shape[1]} channels"
            raise ValueError(msg)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            smooth = self.interpolation in ("bilinear", "bicubic")
            x = F.interpolate(x, size=self.size, mode=self.interpolation, antialias=smooth,
                              **({"align_corners": False} if smooth else {}))  # fmt: skip
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.model(pixel_values=x).logits if self.transformers else self.model(x)

    def preprocessing(self) -> dict[str, Any]:
        """What the wrapper does to an input, for the results' sidecar."""
        return {"size": self.size, "interpolation": self.interpolation, "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist()}  # fmt: skip


def _import(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError as err:
        msg = f"--model {extra}:... needs {module}: pip install 'rs-plugins[{extra}]' ({err})"
        raise MissingDependencyError(msg) from err


def _timm_cached_weights(timm, name: str) -> str:
    """The cached weights file of timm model ``name`` for an offline load, or a refusal saying how to fill the cache."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name) if hasattr(timm.models, "get_pretrained_cfg") else None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        for filename in (getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename) if filename else None
            if isinstance(found, str):
                return found
    msg = (f"--model timm:{name}: offline (RS_PLUGINS_OFFLINE / HF_HUB_OFFLINE) and its weights "
           f"({hub_id or 'no hub id'}) are not in the Hugging Face cache; run once online, or give --checkpoint FILE")
    raise SourceError(msg)


def load_timm(name: str, *, checkpoint: str | None = None, kwargs: dict[str, Any] | None = None) -> Preprocessed:
    """``timm.create_model(name, pretrained=True, **kwargs)``, or ``checkpoint``'s weights; preprocessing inside."""
    from .models import load_state_dict_file  # a sibling: the same state-dict reader as the factory form

    timm = _import("timm", "timm")
    from timm.data import resolve_data_config

    kwargs = dict(kwargs or {})
    if name not in timm.list_models(pretrained=False) and not name.startswith("hf-hub:"):
        base = name.partition(".")[0]
        if base not in timm.list_models(pretrained=False):
            close = difflib.get_close_matches(base, timm.list_models(pretrained=False), n=5, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise SourceError(f"--model timm:{name}: timm {timm.__version__} has no model {base!r}.{hint}")
    if checkpoint is None and offline():
        kwargs["pretrained_cfg_overlay"] = {"file": _timm_cached_weights(timm, name)}
    try:
        model = timm.create_model(name, pretrained=checkpoint is None, **kwargs)
    except TypeError as err:
        raise SourceError(f"--model timm:{name}: --model-kwargs {kwargs} do not fit it: {err}") from err
    except (OSError, RuntimeError, ValueError) as err:  # a failed download, a damaged cache file
        msg = f"--model timm:{name}: cannot load its pretrained weights ({type(err).__name__}: {err})"
        raise SourceError(msg.splitlines()[0]) from err
    if checkpoint is not None:
        state = load_state_dict_file(checkpoint)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            diff = state_dict_diff(model, state)
            raise SourceError(f"--checkpoint {checkpoint} does not fit --model timm:{name}: {diff}") from err
    config = resolve_data_config({}, model=model)
    size = kwargs.get("img_size") or tuple(config["input_size"][1:])  # timm keeps its cfg's size under img_size=
    size = (size, size) if isinstance(size, int) else tuple(size)
    interpolation = INTERPOLATIONS.get(config.get("interpolation", "bilinear"), "bilinear")
    return Preprocessed(model.eval(), size, interpolation, config["mean"], config["std"])


def _processor_size(processor: Any) -> tuple[int, int] | None:
    """The (H, W) a Hugging Face image processor resizes to, or None if it does not resize."""
    if not getattr(processor, "do_resize", True):
        return None
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None)
    size = dict(size) if size is not None and not isinstance(size, int) else size
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, dict) and "height" in size and "width" in size:
        return (int(size["height"]), int(size["width"]))
    if isinstance(size, dict) and "shortest_edge" in size:
        return (int(size["shortest_edge"]),) * 2
    return None


def load_hf(name: str, *, kwargs: dict[str, Any] | None = None) -> Preprocessed:
    """``AutoModelForImageClassification.from_pretrained(name)`` with its image processor's resize and normalisation."""
    _import("transformers", "hf")
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    local = offline()
    try:
        model = AutoModelForImageClassification.from_pretrained(name, local_files_only=local, **(kwargs or {}))
        processor = AutoImageProcessor.from_pretrained(name, local_files_only=local)
    except TypeError as err:
        raise SourceError(f"--model hf:{name}: --model-kwargs {kwargs} do not fit it: {err}") from err
    except (OSError, ValueError, KeyError) as err:  # not on the hub or in the cache, offline, no image processor
        where = "in the local cache (offline: RS_PLUGINS_OFFLINE / HF_HUB_OFFLINE)" if local else "on the hub or disk"
        msg = f"--model hf:{name}: no image-classification model with an image processor {where} ({err})"
        raise SourceError(msg.splitlines()[0]) from err
    mean = list(getattr(processor, "image_mean", None) or [0.0] * model.config.num_channels)
    std = list(getattr(processor, "image_std", None) or [1.0] * model.config.num_channels)
    if not getattr(processor, "do_normalize", True):
        mean, std = [0.0] * len(mean), [1.0] * len(std)
    resample = getattr(processor, "resample", 2)
    interpolation = PIL_RESAMPLE.get(int(getattr(resample, "value", resample)), "bilinear")
    return Preprocessed(model.eval(), _processor_size(processor), interpolation, mean, std, transformers=True)


def load_hub_model(
    source: str, *, checkpoint: str | None, kwargs: dict[str, Any], trust: bool = False
) -> nn.Module | None:
    """A ``timm:`` or ``hf:`` model (CPU, eval mode), or None for other forms."""
    if source.startswith(HUB_PREFIXES) and kwargs.get("trust_remote_code") and not trust:
        raise untrusted(source, "trust_remote_code runs the Python code the model repository ships")
    if source.startswith("timm:"):
        return load_timm(source.removeprefix("timm:"), checkpoint=checkpoint, kwargs=kwargs).cpu()
    if source.startswith("hf:"):
        if checkpoint is not None:
            raise SourceError(f"--checkpoint is not used with --model {source}; give a saved model folder as hf:DIR")
        return load_hf(source.removeprefix("hf:"), kwargs=kwargs).cpu()
    return None
