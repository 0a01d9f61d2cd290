"""``rs-plugins``: list plugins, train (classifiers, denoisers), certify, predict, recertify, check a certifier, attack,
report, and a demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

from .. import __version__
from ..errors import RsPluginError
from ..sources import fetch
from ..sources.zoo import ZOO_DIR_ENV
from . import adaptive, attack, certify, confidence, denoiser, plugins, recertify, report, train, zoo
from .attack import cmd_attack
from .certify import cmd_certify
from .plugins import cmd_demo, cmd_plugins
from .report import cmd_report
from .train import cmd_train, train_config

__all__ = [
    "build_parser",
    "cmd_attack",
    "cmd_certify",
    "cmd_demo",
    "cmd_plugins",
    "cmd_report",
    "cmd_train",
    "main",
    "train_config",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rs-plugins", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rs-plugins {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    plugins.add_plugins(sub)
    certify.add_certify(sub)
    recertify.add_commands(sub)  # recertify (from a counts log) and check-certifier (the soundness bench)
    attack.add_attack(sub)
    train.add_train(sub)
    confidence.add_confidence(sub)  # predict-confidence (CAT-RS's p_b)
    adaptive.add_commands(sub)  # train-mixer and tradeoff (adaptive smoothing)
    denoiser.add_train_denoiser(sub)  # train-denoiser (denoised smoothing's DnCNN)
    report.add_report(sub)
    zoo.add_zoo(sub)  # the papers' released models
    plugins.add_demo(sub)
    return parser


PACKAGE = str(Path(__file__).resolve().parents[1])
_PYTHON_FORMAT = warnings.formatwarning


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning that rs-plugins raised as one line, ``rs-plugins: warning: ...``; any other as Python shows it."""
    if str(Path(filename).resolve()).startswith(PACKAGE):
        return f"rs-plugins: warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


SWITCHES = (*fetch.OFFLINE_VARIABLES, ZOO_DIR_ENV)
"""The environment variables through which --offline and --zoo-dir reach every loader, plugins' included."""


def main(argv: list[str] | None = None) -> int:
    """Run a command. Mistakes in the input (RsPluginError, ValueError, OSError such as a missing or unwritable
    file) print one line and exit 2; Ctrl-C exits 130 (finished rows and checkpoints are kept); anything else is
    a bug, shown with its traceback and exit 3."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m rs_plugins -- certify --n ...`: the `--` keeps torchrun off our flags
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    shown_as = warnings.formatwarning
    warnings.formatwarning = one_line_warning  # how a warning shows, not whether: recording (pytest.warns) still works
    fetch.forget()  # the downloads this command records in its results' provenance
    saved = {name: os.environ.get(name) for name in SWITCHES}  # --offline and --zoo-dir hold for this command only
    if getattr(args, "offline", False) or fetch.offline():  # either switch: the Hugging Face libraries' own too,
        fetch.go_offline()  # set before they are imported (they make requests of their own that only it stops)
    if getattr(args, "zoo_dir", None):
        os.environ[ZOO_DIR_ENV] = args.zoo_dir
    try:
        return args.func(args)
    except (RsPluginError, ValueError, OSError) as err:
        print(f"rs-plugins: error: {err}", file=sys.stderr)
        tell_torchrun(f"rs-plugins: error: {err}")
        return 2
    except KeyboardInterrupt:
        print("rs-plugins: interrupted; finished results are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(
            "rs-plugins: internal error: the traceback above is a bug in rs-plugins or in a plugin it names, not a "
            "mistake in your input; please report it with the command line",
            file=sys.stderr,
        )
        return 3
    finally:
        warnings.formatwarning = shown_as
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def tell_torchrun(message: str) -> None:
    """Under torchrun, hand the one-line refusal to the launcher (its per-process error file), so that its failure
    summary shows the message instead of "To enable traceback see ..."; torchrun still prints its own summary."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"message": {"message": message, "extraInfo": {"timestamp": str(int(time.time()))}}}, f)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
