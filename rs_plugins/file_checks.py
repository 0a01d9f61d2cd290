"""Checks on files, shared by every command: output paths and plot formats before a run starts, weights-only
``torch.load`` with a message for each way a file can be wrong, and the refusal of a file that needs pickle.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import SourceError

if TYPE_CHECKING:
    pass


TRUST_FLAG = "--trust-model-file"
STATE_DICT_HINT = "save one with torch.save(model.state_dict(), path)"
LOAD_ERRORS = (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


def _creatable(path: Path, option: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                msg = f"{option} {path}: {parent} is a regular file, not a folder; give a path in a writable folder"
                raise ValueError(msg)
            if not os.access(parent, os.W_OK | os.X_OK):
                msg = f"{option} {path}: cannot create it, {parent} is not writable (permission denied); give a path"
                raise ValueError(msg + " in a folder you can write to")
            return


def check_output_file(path: str | os.PathLike | None, option: str) -> None:
    """Before any work: ``path`` can be written as a file (not a folder, not under a file, writable)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file path, e.g. {path / 'results.tsv'}")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ValueError(f"{option} {path} is not writable (permission denied); give a writable file path")
        return
    _creatable(path, option)


PLOT_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".tif", ".tiff", ".webp")


def check_plot_path(path: str | os.PathLike | None, option: str = "--plot") -> None:
    """Before any work: a writable file whose extension names an image format matplotlib writes."""
    if path is None:
        return
    check_output_file(path, option)
    if Path(path).suffix.lower() not in PLOT_FORMATS:
        raise ValueError(f"{option} {path}: the extension must name an image format, one of {', '.join(PLOT_FORMATS)}")


def check_output_dir(path: str | os.PathLike, option: str) -> None:
    """Before any work: ``path`` is or can become a writable folder."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{option} {path} is a regular file; give a folder (an existing one, or one to create)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{option} {path} is not writable (permission denied); give a folder you can write to")
        return
    _creatable(path, option)


def state_dict_diff(model: torch.nn.Module, state: dict[str, Any], show: int = 3) -> str:
    """Which keys and shapes of ``state`` differ from ``model``'s, a few of each, instead of torch's full dump."""
    own = model.state_dict()

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:show]) + (f" and {len(keys) - show} more" if len(keys) > show else "")

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = [f"{len(missing)} keys missing ({some(missing)})"] if missing else []
    parts += [f"{len(unexpected)} unexpected keys ({some(unexpected)})"] if unexpected else []
    parts += [f"{len(shapes)} shapes differ (checkpoint vs model: {some(shapes)})"] if shapes else []
    return "; ".join(parts) or "the values do not load"


class PickledObjectsError(SourceError):
    """A checkpoint holding pickled Python objects, which loads only with full unpickling (a trust flag)."""


def load_weights_only(path: str | os.PathLike, what: str, expected: str) -> Any:
    """``torch.load(path, weights_only=True)`` with a message for an empty, truncated or pickled-object file.

    ``weights_only=True`` unpickles tensors and plain containers only, so a crafted file cannot run code.

    Args:
        path: the file.
        what: the option or role, e.g. ``"--checkpoint"``.
        expected: what the file should hold, for the message.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    if path.stat().st_size == 0:
        raise SourceError(f"{what}: {path} is empty; expected {expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", str(err))
        if not found:
            msg = f"{what}: cannot read {path}; it is damaged or not a torch.save file ({_first_line(err)}); expected "
            msg += expected
            raise SourceError(msg) from err
        msg = (
            f"{what}: {path} holds pickled Python objects ({found[1]}), which are never unpickled because that can "
            f"run code; expected {expected}"
        )
        raise PickledObjectsError(msg) from err
    except LOAD_ERRORS as err:
        msg = f"{what}: cannot read {path}; it is truncated, damaged or not a torch.save file ({_first_line(err)});"
        msg += f" expected {expected}"
        raise SourceError(msg) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def untrusted(path: str, why: str) -> SourceError:
    """The refusal for a file that only loads with code execution, naming the trust flag."""
    return SourceError(
        f"--model {path}: {why}, so a crafted file can run code on this machine. Load it only if you made it or "
        f"trust who did: pass {TRUST_FLAG} (Python: ModelRequest(..., trust=True))"
    )
