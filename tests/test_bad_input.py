"""The bad-input table of docs/guarantees.md, one test per row: each mistake gets one clean message, never a
traceback and never a silently wrong result.

``CASES`` is the table. The doc must list exactly these rows (``test_the_doc_lists_every_case``); after
changing a case, regenerate the rows with ``python tests/test_bad_input.py`` and paste them into the doc.
A CLI case must exit with status 2 and print the excerpt on stderr without a traceback; an API case must
raise a ValueError, an ``RsPluginError`` or an OSError whose message holds the excerpt.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import rs_plugins
from rs_plugins import NoiseSpec, SmoothedClassifier, cli, cohen_certify, cohen_predict, file_checks
from rs_plugins.builtin import adaptive, catrs, consistency, denoisers, gaussian, sources, standard, zoo
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify import execution
from rs_plugins.certify.runner import certify_dataset
from rs_plugins.errors import RsPluginError
from rs_plugins.nets import SmallCNN
from rs_plugins.results.files import CERTIFY_COLUMNS, CONFIDENCE_COLUMNS, ConfidenceRow, ResultsFile
from rs_plugins.train.config import TrainConfig
from rs_plugins.types import Certificate, CertifierSpec, MixerSpec, ModelRequest

DOC = Path(__file__).resolve().parents[1] / "docs" / "guarantees.md"
MODEL = ["--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 4}']
FAST = ["--device", "cpu", "--no-progress"]


# -- components that break their contract, contributed by a plugin ---------------------------------------------


class BadNoise(GaussianNoise):
    """Gaussian noise whose ``sample`` breaks the contract in one way: shape, dtype, device or values."""

    def __init__(self, sigma: float, fault: str = "shape") -> None:
        super().__init__(sigma)
        self.fault = fault

    def sample(self, x, *, generator=None):
        noisy = super().sample(x, generator=generator)
        if self.fault == "shape":
            return noisy[:, :, 1:]
        if self.fault == "dtype":
            return noisy.double()
        if self.fault == "device":
            return noisy.to("meta")
        return noisy * float("nan")


class MeanMixer(nn.Module):
    def __init__(self, base_classifiers, weights=None):
        super().__init__()
        self.models = nn.ModuleList(base_classifiers)

    def forward(self, x):
        return torch.stack([m(x) for m in self.models]).mean(0)


class NaNRadiusCertifier:
    """A certifier that answers class 0 with a NaN radius for every image."""

    def certify(self, model, x, noise, **sampling):
        return [Certificate(0, float("nan"), 0.9) for _ in x]


class BrokenPlugin:
    """A third-party plugin with a noise sampler per contract fault, a broken certifier and a good mixer."""

    name = "broken_plugin"

    @rs_plugins.hookimpl
    def rs_noise_samplers(self):
        for fault in ("shape", "dtype", "device", "nan"):
            yield NoiseSpec(f"bad_{fault}", functools.partial(BadNoise, fault=fault), f"breaks {fault}")

    @rs_plugins.hookimpl
    def rs_mixers(self):
        yield MixerSpec("mean", MeanMixer, "mean of logits")

    @rs_plugins.hookimpl
    def rs_certifiers(self):
        yield CertifierSpec("nan_radius", NaNRadiusCertifier, "radius NaN")


class BrokenDenoiserPlugin:
    """Denoisers that break their contract: output of another shape, or NaNs."""

    name = "broken_denoisers"

    @rs_plugins.hookimpl
    def rs_denoisers(self):
        from rs_plugins.types import DenoiserSpec

        yield DenoiserSpec("bad_shape", functools.partial(BadDenoiser, fault="shape"), "drops a row")
        yield DenoiserSpec("bad_nan", functools.partial(BadDenoiser, fault="nan"), "returns NaN")


class BadDenoiser(nn.Module):
    def __init__(self, sigma: float, fault: str) -> None:
        super().__init__()
        self.fault = fault

    def forward(self, x):
        return x[:, :, 1:] if self.fault == "shape" else x * float("nan")


def host() -> rs_plugins.Host:
    plugins = [gaussian, consistency, standard, sources, zoo, adaptive, catrs, denoisers, BrokenPlugin(),
               BrokenDenoiserPlugin()]  # fmt: skip
    return rs_plugins.Host(entry_points=False, plugins=plugins)


class NaNModel(nn.Module):
    """A model whose weights diverged: every logit is NaN."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float("nan")))

    def forward(self, x):
        return x.flatten(1)[:, :10] * self.scale


class Payload:
    """Unpickling this creates the file ``marker``: what a crafted file could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# -- the files the cases use, made once ---------------------------------------------------------------------------


class Files:
    def __init__(self, root: Path) -> None:
        self.root = root
        torch.manual_seed(0)
        small = SmallCNN(width=4)
        self.ckpt = root / "model.pt"
        torch.save(small.state_dict(), self.ckpt)
        self.module = root / "module.pt"
        torch.save(small, self.module)  # a whole pickled nn.Module
        self.empty = root / "empty.pt"
        self.empty.write_bytes(b"")
        self.truncated = root / "truncated.pt"
        self.truncated.write_bytes(self.ckpt.read_bytes()[:200])
        x = torch.rand(6, 1, 8, 8)
        self.rgb = self._data("rgb.pt", torch.rand(6, 3, 8, 8), torch.zeros(6, dtype=torch.long))
        self.minus_one = self._data("minus_one.pt", x, torch.tensor([0, 1, -1, 2, 3, 4]))
        self.label_42 = self._data("label_42.pt", x, torch.tensor([0, 42, 1, 2, 3, 4]))
        self.minus_three = self._data("minus_three.pt", x, torch.tensor([0, 1, 2, -3, 3, 4]))
        self.npz_truncated = root / "truncated.npz"
        np.savez(root / "ok.npz", x=x.numpy(), y=np.zeros(6, dtype=np.int64))
        self.npz_truncated.write_bytes((root / "ok.npz").read_bytes()[:100])
        self.npz_object = root / "object.npz"
        np.savez(self.npz_object, x=np.array([Payload(root / "npz_marker")], dtype=object), y=np.zeros(1))
        self.folder = root / "a_folder"
        self.folder.mkdir()
        self.file = root / "a_file.txt"
        self.file.write_text("x")
        self.pt2 = root / "m.pt2"
        self.pt2.write_bytes(b"refused before it is read")
        self.ts = root / "m.ts"
        self.ts.write_bytes(b"refused before it is read")
        self.foreign = root / "foreign.tsv"  # a paper repo's log, or one written before sidecars existed
        self.foreign.write_text("\t".join(CERTIFY_COLUMNS) + "\n0\t3\t3\t0.5\t1\t0:00:01\t100\n")
        self.bad_label = self._tsv("bad_label.tsv", "0\t-1\t-1\t0.0\t1\t0:00:01\t100\n")
        self.bad_correct = self._tsv("bad_correct.tsv", "0\t3\t5\t0.5\t1\t0:00:01\t100\n")
        self.bad_class = self._tsv("bad_class.tsv", "0\t3\t42\t0.5\t0\t0:00:01\t100\n")
        (root / "bad_class.tsv.json").write_text('{"provenance": {"num_classes": 10}}')
        self.ckpt_dir_corrupt = root / "corrupt_ckpt"
        self.ckpt_dir_corrupt.mkdir()
        (self.ckpt_dir_corrupt / "checkpoint.pt").write_bytes(b"PK\x03\x04 half a zip")
        self.binary = root / "binary.tsv"
        self.binary.write_bytes(bytes(range(255, -1, -1)))
        self.ckpt_dir_foreign = root / "foreign_ckpt"
        self.ckpt_dir_foreign.mkdir()
        torch.save({"weights": torch.zeros(1)}, self.ckpt_dir_foreign / "checkpoint.pt")

        self.counts_seq = self._counts("seq.tsv", "0\t3\t3:10\t3:100\t50@3:50;100@3:100\t{\"looks_planned\":2}\n")
        self.counts_predict = self._counts("pred.tsv", "0\t3\t-\t3:100\t\t\n")
        self.counts_alone = root / "alone.tsv.counts"  # moved away from its results file and sidecar
        self.counts_alone.write_text(self.counts_predict.read_text())
        self.counts_twice = self._counts("twice.tsv", "0\t3\t3:10\t3:100\t\t\n" * 2)

    def _counts(self, name, lines) -> Path:
        """A counts log and its results file's sidecar (gaussian, sigma 0.25, ten classes)."""
        sidecar = '{"noise": "gaussian", "sigma": 0.25, "alpha": 0.001, "n": 100, "provenance": {"num_classes": 10}}'
        (self.root / f"{name}.json").write_text(sidecar)
        (self.root / f"{name}.counts").write_text("idx\tlabel\tselection\testimation\tlooks\textra\n" + lines)
        return self.root / f"{name}.counts"

    def _data(self, name, x, y) -> Path:
        torch.save({"x": x, "y": y}, self.root / name)
        return self.root / name

    def _tsv(self, name, row) -> Path:
        (self.root / name).write_text("\t".join(CERTIFY_COLUMNS) + "\n" + row)
        return self.root / name

    def resumed_with_other_sigma(self) -> Path:
        out = self.root / "resume.tsv"
        if not out.exists():
            argv = ["certify", *MODEL, "--checkpoint", self.ckpt, "--data", "digits", "--sigma", "0.25"]
            assert (
                cli.main([str(a) for a in [*argv, "--n", "20", "--n0", "10", "--limit", "1", "--out", out, *FAST]]) == 0
            )
        return out


# -- the cases ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    where: str  # the command or function
    given: str  # the bad input, as the doc shows it
    expect: str  # an excerpt of the message the user sees
    run: Callable[[Files], object]  # a CLI case returns its argv; an API case raises


def cli_case(id, command, given, expect, *argv):
    return Case(
        id, f"`rs-plugins {command}`", given, expect, lambda f: [command, *(a(f) if callable(a) else a for a in argv)]
    )


def api_case(id, where, given, expect, run):
    return Case(id, where, given, expect, run)


CERTIFY = [*MODEL, "--factory-weights", "--data", "digits", "--sigma", "0.25", "--n", "20", "--n0", "10",
           "--limit", "2"]
PREDICT = [*MODEL, "--factory-weights", "--data", "digits", "--sigma", "0.25", "--n", "20", "--limit", "2"]
TWO_MODELS = ["--model", "rs_plugins.nets:SmallCNN", "--checkpoint", lambda f: f.ckpt, "--model",
              "rs_plugins.nets:SmallCNN", "--checkpoint", lambda f: f.ckpt, "--model-kwargs", '{"width": 4}']
TRAIN = [*MODEL, "--data", "digits", "--sigma", "0.25", "--epochs", "1", "--checkpoint-dir", lambda f: f.root / "t"]


ZOO_RUN = ["--data", "digits", "--sigma", "0.25", "--n", "20", "--n0", "10", "--limit", "1", "--out",
           lambda f: f.root / "u.tsv"]


def certify_args(f: Files, *extra) -> list:
    return [*CERTIFY, "--checkpoint", f.ckpt, "--out", f.root / "unused.tsv", *extra]


def _denied(check):
    """Run ``check`` as if no path were writable (the tests may run as root, whom permissions do not stop)."""
    from unittest import mock

    with mock.patch("os.access", return_value=False):
        return check()


def certify_args_lazy() -> list:
    return [*CERTIFY, "--checkpoint", lambda f: f.ckpt, "--out", lambda f: f.root / "unused.tsv"]


def x1() -> torch.Tensor:
    return torch.rand(1, 1, 8, 8)


def small() -> nn.Module:
    return SmallCNN(width=4).eval()


def tensor_dataset(labels):
    return torch.utils.data.TensorDataset(torch.rand(len(labels), 1, 8, 8), torch.tensor(labels))


def votes_file(f: Files) -> Path:
    """A predict-confidence file (one row) whose sidecar records a data set other than digits' training split."""
    path = f.root / "votes.tsv"
    identity = {"images": 1, "labels_sha256": "0" * 64}
    with ResultsFile(path, CONFIDENCE_COLUMNS, {"n": 2, "num_classes": 10, "data_identity": identity}) as results:
        results.append(ConfidenceRow(0, 3, ((3, 2),), 0.0))
    return path


def ddpm(f: Files, channels: int = 1) -> Path:
    """A tiny diffusers UNet2DModel + DDPMScheduler folder for ``channels``-channel 8 x 8 images."""
    path = f.root / f"ddpm{channels}"
    if not path.exists():
        from diffusers import DDPMScheduler, UNet2DModel

        torch.manual_seed(0)
        UNet2DModel(sample_size=8, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                    layers_per_block=1, norm_num_groups=4).save_pretrained(path)  # fmt: skip
        DDPMScheduler(num_train_timesteps=1000).save_pretrained(path)
    return path


def diffusion(f: Files, channels: int = 1) -> str:
    return f"diffusion:{ddpm(f, channels)}"


def dncnn_file(f: Files) -> Path:
    """An untrained (identity) 1-channel DnCNN in the format train-denoiser writes."""
    from rs_plugins.train.denoiser import FORMAT, DnCNN

    path = f.root / "dncnn.pt"
    if not path.exists():
        torch.save({"format": FORMAT, "state_dict": DnCNN(1, depth=3, width=4).state_dict()}, path)
    return path


def edited_sidecar(f: Files, name: str, text: str) -> Path:
    """A certify TSV with one row whose sidecar holds ``text``."""
    path = f._tsv(f"{name}.tsv", "0\t3\t3\t0.5\t1\t0:00:01\t100\n")
    (f.root / f"{name}.tsv.json").write_text(text)
    return path


def p_b_file(f: Files, name: str, side: dict | None = None, row: str | None = None) -> Path:
    """A p_b votes file of digits' training split (4 votes for each label), its sidecar's fields replaced by
    ``side``, its first row by ``row`` (idx, label, counts)."""
    from rs_plugins.sources.data import data_identity, load_digits

    data = load_digits("train")
    labels = [int(y) for y in data.tensors[1]]
    path = f.root / f"p_b_{name}.tsv"
    lines = [f"{i}\t{y}\t{y}:4\t0:00:00.1\n" for i, y in enumerate(labels)]
    if row is not None:
        lines[0] = row + "\t0:00:00.1\n"
    path.write_text("\t".join(CONFIDENCE_COLUMNS) + "\n" + "".join(lines))
    record = {"n": 4, "num_classes": 10, "data_identity": data_identity(data)} | (side or {})
    (f.root / f"p_b_{name}.tsv.json").write_text(json.dumps(record))
    return path


def dncnn_edited(f: Files, name: str, state: bool = True, **fields) -> Path:
    """A train-denoiser file with ``fields`` set, without its state dict unless ``state``."""
    from rs_plugins.train.denoiser import FORMAT, DnCNN

    path = f.root / f"dncnn_{name}.pt"
    record = {"format": FORMAT, "sigma": 0.25} | fields
    if state:
        record["state_dict"] = DnCNN(1, depth=3, width=4).state_dict()
    torch.save(record, path)
    return path


def ddpm_edited(f: Files, **fields) -> Path:
    """A copy of ``ddpm(f)`` whose config.json has ``fields`` set."""
    import shutil

    path = f.root / "ddpm_edited"
    if not path.exists():
        shutil.copytree(ddpm(f), path)
    config = json.loads((path / "config.json").read_text()) | fields
    (path / "config.json").write_text(json.dumps(config))
    return path


# fmt: off
CASES: list[Case] = [
    # numbers: every float finite, every range check names its option
    cli_case("sigma-inf", "certify", "`--sigma inf`", "argument --sigma: must be a finite number > 0; got inf",
             *CERTIFY[:-2], "--sigma", "inf"),
    cli_case("sigma-nan", "predict", "`--sigma nan`", "argument --sigma: must be a finite number > 0; got nan",
             *PREDICT[:-2], "--sigma", "nan"),
    cli_case("alpha-nan", "certify", "`--alpha nan`", "argument --alpha: must be a finite number in (0, 1); got nan",
             *CERTIFY, "--alpha", "nan"),
    cli_case("seed-negative", "certify", "`--seed -1`", "argument --seed: must be an integer >= 0; got -1",
             *CERTIFY, "--seed", "-1"),
    cli_case("n-zero", "certify", "`--n 0`", "argument --n: must be a positive integer; got 0", *CERTIFY, "--n", "0"),
    cli_case("start-negative", "certify", "`--start -3`", "argument --start: must be an integer >= 0; got -3",
             *CERTIFY, "--start", "-3"),
    cli_case("batch-size-text", "predict", "`--batch-size abc`",
             "argument --batch-size: must be a positive integer or auto; got abc",
             *PREDICT, "--batch-size", "abc"),
    cli_case("lr-inf", "train", "`--lr inf`", "argument --lr: must be a finite number > 0; got inf",
             *TRAIN, "--lr", "inf"),
    cli_case("momentum-nan", "train", "`--momentum nan`", "argument --momentum: must be a finite number >= 0; got nan",
             *TRAIN, "--momentum", "nan"),
    cli_case("weight-decay-negative", "train", "`--weight-decay -1`",
             "argument --weight-decay: must be a finite number >= 0; got -1", *TRAIN, "--weight-decay", "-1"),
    cli_case("lr-gamma-inf", "train", "`--lr-gamma inf`", "argument --lr-gamma: must be a finite number > 0; got inf",
             *TRAIN, "--lr-gamma", "inf"),
    cli_case("demo-sigma-inf", "demo", "`--sigma inf`", "argument --sigma: must be a finite number > 0; got inf",
             "--sigma", "inf"),
    cli_case("loss-option-infinity", "train", "`--loss consistency --loss-option lbd=Infinity`",
             "lbd must be a finite number >= 0.0; got inf",
             *TRAIN, "--loss", "consistency", "--loss-option", "lbd=Infinity"),
    api_case("api-sigma-inf", "`GaussianNoise`", "`GaussianNoise(sigma=float('inf'))`",
             "sigma must be a finite number > 0; got inf", lambda f: GaussianNoise(float("inf"))),
    api_case("api-host-sigma-nan", "`Host.noise`", "`host.noise('gaussian', sigma=float('nan'))`",
             "failed to build: ValueError: sigma must be a finite number > 0; got nan",
             lambda f: host().noise("gaussian", sigma=float("nan"))),
    api_case("api-alpha-string", "`cohen_certify`", "`alpha='0.01'`",
             "alpha must be a finite number in (0, 1); got '0.01' (str)",
             lambda f: cohen_certify(small(), x1(), GaussianNoise(0.25), n0=10, n=20, alpha="0.01")),
    api_case("api-n-float", "`cohen_predict`", "`n=1.5`", "n must be a positive integer; got 1.5",
             lambda f: cohen_predict(small(), x1(), GaussianNoise(0.25), n=1.5)),
    api_case("api-lr-inf", "`TrainConfig`", "`TrainConfig(lr=float('inf'))`",
             "--lr must be a finite number > 0; got inf",
             lambda f: TrainConfig(lr=float("inf"))),
    api_case("api-seed-negative", "`certify_dataset`", "`seed=-1`", "seed must be an integer >= 0; got -1",
             lambda f: certify_dataset(small(), tensor_dataset([0]), GaussianNoise(0.25), gaussian.CohenCertifier(),
                                       ResultsFile(f.root / "api_seed.tsv"), indices=[0], n0=10, n=20, alpha=0.01,
                                       batch_size=10, seed=-1)),
    api_case("api-loss-option-nan", "`Host.loss`", "`host.loss('consistency', lbd=float('nan'))`",
             "lbd must be a finite number >= 0.0; got nan", lambda f: host().loss("consistency", lbd=float("nan"))),
    # labels: checked against the model's number of classes
    cli_case("data-label-minus-one", "certify", "`--data` file with a label -1",
             "has label -1 (image 2); labels must be integers in 0..K-1, the classes of the model",
             *MODEL, "--factory-weights", "--data", lambda f: f.minus_one, "--sigma", "0.25",
             "--out", lambda f: f.root / "u.tsv"),
    cli_case("data-label-42", "certify", "`--data` file with a label 42, 10-class model",
             "label 42 of image 1 is outside 0..9, the classes of a model with 10 logits",
             *CERTIFY[:-2], "--data", lambda f: f.label_42, "--out", lambda f: f.root / "u.tsv"),
    cli_case("train-label-42", "train", "`--data` file with a label 42, 10-class model",
             "label 42 of image 1 is outside 0..9", *MODEL, "--data", lambda f: f.label_42, "--sigma", "0.25",
             "--epochs", "1", "--checkpoint-dir", lambda f: f.root / "train_42"),
    api_case("api-label-minus-one", "`certify_dataset`", "a data set with label -1",
             "label -1 of image 1 is outside 0..9, the classes of a model with 10 logits (-1 is the abstention value",
             lambda f: certify_dataset(small(), tensor_dataset([0, -1]), GaussianNoise(0.25), gaussian.CohenCertifier(),
                                       ResultsFile(f.root / "api_minus_one.tsv"), indices=[0, 1], n0=10, n=20,
                                       alpha=0.01, batch_size=10)),
    cli_case("report-label-minus-one", "report", "a TSV row with label -1 (an abstention scored as correct)",
             "label -1 is not a class index (-1 means abstain, never a label)", lambda f: f.bad_label),
    cli_case("report-correct-mismatch", "report", "a TSV row with `correct` 1 but predict != label",
             "correct=1 disagrees with predict 5 and label 3", lambda f: f.bad_correct),
    cli_case("report-class-out-of-range", "report", "a TSV row predicting class 42; sidecar says 10 classes",
             "label 3 / predict 42 is not one of the model's 10 classes", lambda f: f.bad_class),
    # models that misbehave
    cli_case("nan-logits", "certify", "a model whose logits are NaN",
             "returned non-finite logits (NaN or inf) on noisy inputs", "--factory-weights",
             "--model", "test_bad_input:NaNModel",
             "--data", "digits", "--sigma", "0.25", "--n", "20", "--n0", "10", "--limit", "1",
             "--out", lambda f: f.root / "nan.tsv"),
    api_case("api-nan-logits", "`cohen_certify`", "a model whose logits are NaN",
             "model NaNModel returned non-finite logits",
             lambda f: cohen_certify(NaNModel(), x1(), GaussianNoise(0.25), n0=10, n=20)),
    cli_case("wrong-channels", "certify", "3-channel `--data` for a 1-channel model",
             "--data images have shape 3x8x8 (CxHxW), but model 'rs_plugins.nets:SmallCNN' takes 1xanyxany",
             *CERTIFY[:-2],
             "--data", lambda f: f.rgb, "--checkpoint", lambda f: f.ckpt, "--out", lambda f: f.root / "rgb.tsv"),
    cli_case("train-wrong-channels", "train", "3-channel `--data` for a 1-channel model",
             "--data images have shape 3x8x8 (CxHxW), but model 'rs_plugins.nets:SmallCNN' takes 1xanyxany", *MODEL,
             "--data", lambda f: f.rgb, "--sigma", "0.25",
             "--epochs", "1", "--checkpoint-dir", lambda f: f.root / "train_rgb"),
    api_case("api-wrong-channels", "`SmoothedClassifier.certify`", "a 3-channel image for a 1-channel model",
             "model SmallCNN failed on images of shape (3, 8, 8)",
             lambda f: SmoothedClassifier(small(), GaussianNoise(0.25)).certify(torch.rand(3, 8, 8), n0=10, n=20)),
    # noise samplers that break the contract, named by plugin
    api_case("noise-wrong-shape", "`cohen_certify`", "a plugin's noise returning another shape",
             "noise sampler 'bad_shape' from plugin broken_plugin broke the noise sampler contract: sample() returned "
             "shape (10, 1, 7, 8) for input shape (10, 1, 8, 8)",
             lambda f: cohen_certify(small(), x1(), host().noise("bad_shape", sigma=0.25), n0=10, n=20)),
    api_case("noise-wrong-dtype", "`cohen_predict`", "a plugin's noise returning float64 for float32",
             "noise sampler 'bad_dtype' from plugin broken_plugin broke the noise sampler contract: sample() returned "
             "dtype torch.float64 for input dtype torch.float32",
             lambda f: cohen_predict(small(), x1(), host().noise("bad_dtype", sigma=0.25), n=20)),
    api_case("noise-wrong-device", "`cohen_certify`", "a plugin's noise returning a tensor on another device",
             "sample() returned a tensor on meta for an input on cpu",
             lambda f: cohen_certify(small(), x1(), host().noise("bad_device", sigma=0.25), n0=10, n=20)),
    cli_case("noise-nan", "certify", "a plugin's noise returning NaN (`--noise bad_nan`)",
             "noise sampler 'bad_nan' from plugin broken_plugin broke the noise sampler contract: sample() returned "
             "NaN or infinite values", *CERTIFY, "--noise", "bad_nan", "--checkpoint", lambda f: f.ckpt,
             "--out", lambda f: f.root / "nan_noise.tsv"),
    cli_case("certifier-nan-radius", "certify", "a plugin's certifier returning a NaN radius",
             "certifier 'nan_radius' from plugin broken_plugin broke the certifier contract: certify() returned "
             "radius nan, not a finite number >= 0", *CERTIFY, "--certifier", "nan_radius",
             "--checkpoint", lambda f: f.ckpt, "--out", lambda f: f.root / "nan_radius.tsv"),
    cli_case("train-noise-wrong-dtype", "train", "a plugin's noise returning float64, called by the loss",
             "noise sampler 'bad_dtype' from plugin broken_plugin broke the noise sampler contract: sample() returned "
             "dtype torch.float64", *TRAIN, "--noise", "bad_dtype"),
    # API arguments of the wrong kind
    api_case("api-numpy-images", "`cohen_certify`", "a numpy array as `x`",
             "x must be a torch.Tensor; got ndarray (convert with torch.from_numpy(x).float())",
             lambda f: cohen_certify(small(), np.zeros((1, 1, 8, 8), np.float32), GaussianNoise(0.25))),
    api_case("api-numpy-image", "`SmoothedClassifier.predict`", "a numpy array as the image",
             "x must be a torch.Tensor; got ndarray",
             lambda f: SmoothedClassifier(small(), GaussianNoise(0.25)).predict(np.zeros((1, 8, 8), np.float32))),
    api_case("api-noise-none", "`SmoothedClassifier`", "`noise=None`",
             "noise must be a NoiseSampler with sample(), radius(), sigma and norm",
             lambda f: SmoothedClassifier(small(), None)),
    api_case("api-noise-none-certify", "`cohen_certify`", "`noise=None`", "noise must be a NoiseSampler",
             lambda f: cohen_certify(small(), x1(), None)),
    # options: unknown keys list the accepted ones
    cli_case("noise-option-unknown", "certify", "`--noise-option scale=2`",
             "noise sampler 'gaussian' from plugin rs_plugins.builtin.gaussian has no option 'scale' "
             "(--noise-option); accepted: sigma",
             *CERTIFY, "--noise-option", "scale=2", "--checkpoint", lambda f: f.ckpt,
             "--out", lambda f: f.root / "o.tsv"),
    cli_case("noise-option-sigma", "train", "`--noise-option sigma=0.5`",
             "--noise-option sigma=0.5: give the noise level with --sigma", *TRAIN, "--noise-option", "sigma=0.5",
             "--checkpoint-dir", lambda f: f.root / "train_sigma"),
    cli_case("train-no-sigma", "train", "`--loss gaussian` without `--sigma`",
             "--loss gaussian trains under noise: give --sigma", *MODEL, "--data", "digits", "--loss", "gaussian",
             "--epochs", "1", "--checkpoint-dir", lambda f: f.root / "train_no_sigma"),
    cli_case("train-noise-option-no-sigma", "train", "`--loss standard --noise-option scale=2`, no `--sigma`",
             "--noise-option given without --sigma", *MODEL, "--data", "digits", "--loss", "standard",
             "--noise-option", "scale=2", "--epochs", "1", "--checkpoint-dir", lambda f: f.root / "train_no_sigma2"),
    cli_case("train-mixer-flag", "train", "`--mixer mix` (a mixture has nothing to train there)",
             "`train` trains one base classifier. Train the adaptive mixer's network with `rs-plugins train-mixer",
             *TRAIN, "--mixer", "mix"),
    cli_case("certifier-option-unknown", "certify", "`--certifier-option n1=5`",
             "certifier 'cohen' from plugin rs_plugins.builtin.gaussian has no option 'n1' (--certifier-option); "
             "accepted: class_selection",
             *CERTIFY, "--certifier-option", "n1=5", "--checkpoint", lambda f: f.ckpt,
             "--out", lambda f: f.root / "o.tsv"),
    cli_case("loss-option-unknown", "train", "`--loss consistency --loss-option lambda=20`",
             "has no option 'lambda' (--loss-option); accepted: m, lbd, eta, variant, adversarial, epsilon, steps",
             *TRAIN, "--loss", "consistency", "--loss-option", "lambda=20", "--checkpoint-dir", lambda f: f.root / "t"),
    cli_case("mixer-option-unknown", "certify", "`--mixer mean --mixer-option weight=2`",
             "mixer 'mean' from plugin broken_plugin has no option 'weight' (--mixer-option); accepted: weights",
             "--model", "rs_plugins.nets:SmallCNN", "--model", "rs_plugins.nets:SmallCNN", "--mixer", "mean",
             "--factory-weights", "--mixer-option", "weight=2", "--data", "digits", "--sigma", "0.25",
             "--out", lambda f: f.root / "o.tsv"),
    cli_case("model-kwargs-unknown", "certify", "`--model-kwargs '{\"depth\": 3}'`",
             "--model-kwargs depth: not an option of --model rs_plugins.nets:SmallCNN; accepted: in_channels, "
             "num_classes, width", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"depth": 3}',
             "--factory-weights", "--data", "digits", "--sigma", "0.25", "--out", lambda f: f.root / "o.tsv"),
    api_case("api-noise-option-unknown", "`Host.noise`", "`host.noise('gaussian', sigma=0.25, scale=2)`",
             "has no option 'scale' (--noise-option); accepted: sigma",
             lambda f: host().noise("gaussian", sigma=0.25, scale=2)),
    # output paths, checked before any work
    cli_case("out-is-folder", "certify", "`--out` an existing folder", "is a folder; give a file path",
             *CERTIFY, "--out", lambda f: f.folder),
    cli_case("out-under-file", "predict", "`--out` under a regular file",
             "is a regular file, not a folder; give a path in a writable folder",
             *PREDICT, "--out", lambda f: f.file / "x.tsv"),
    cli_case("plot-is-folder", "certify", "`--plot` an existing folder", "is a folder; give a file path",
             *CERTIFY, "--out", lambda f: f.root / "o.tsv", "--plot", lambda f: f.folder),
    cli_case("summary-under-file", "certify", "`--summary` under a regular file", "is a regular file, not a folder",
             *CERTIFY, "--out", lambda f: f.root / "o.tsv", "--summary", lambda f: f.file / "s.json"),
    cli_case("plot-extension", "certify", "`--plot curve.txt`", "the extension must name an image format, one of .png",
             *CERTIFY, "--out", lambda f: f.root / "o.tsv", "--plot", lambda f: f.root / "curve.txt"),
    cli_case("checkpoint-dir-is-file", "train", "`--checkpoint-dir` a regular file",
             "is a regular file; give a folder (an existing one, or one to create)",
             *TRAIN, "--checkpoint-dir", lambda f: f.file),
    cli_case("report-plot-folder", "report", "`--plot` an existing folder", "is a folder; give a file path",
             lambda f: f.foreign, "--plot", lambda f: f.folder),
    cli_case("demo-out-dir-file", "demo", "`--out-dir` a regular file",
             "is a regular file; give a folder (an existing one, or one to create)", "--out-dir",
             lambda f: f.file),
    # files: missing, empty, truncated, the wrong kind
    cli_case("checkpoint-module", "certify", "a whole pickled `nn.Module` as `--checkpoint`",
             "holds pickled Python objects (rs_plugins.nets.SmallCNN), which are never unpickled because that can "
             "run code; expected a state dict written by rs-plugins train (model.pt) or torch.save; save one with "
             "torch.save(model.state_dict(), path)", *CERTIFY, "--checkpoint", lambda f: f.module,
             "--out", lambda f: f.root / "o.tsv"),
    cli_case("checkpoint-empty", "certify", "an empty `--checkpoint` file", "is empty; expected a state dict",
             *CERTIFY, "--checkpoint", lambda f: f.empty, "--out", lambda f: f.root / "o.tsv"),
    cli_case("checkpoint-truncated", "predict", "a truncated `--checkpoint` file",
             "it is truncated, damaged or not a torch.save file", *PREDICT, "--checkpoint", lambda f: f.truncated,
             "--out", lambda f: f.root / "o.tsv"),
    cli_case("data-empty", "certify", "an empty `--data` .pt file", "is empty; expected a dict with tensors 'x'",
             *CERTIFY[:-2], "--data", lambda f: f.empty, "--out", lambda f: f.root / "o.tsv"),
    cli_case("data-npz-truncated", "certify", "a truncated `--data` .npz file", "it is truncated, damaged",
             *CERTIFY[:-2], "--data", lambda f: f.npz_truncated, "--out", lambda f: f.root / "o.tsv"),
    cli_case("data-npz-object", "train", "an .npz holding a pickled object array",
             "Object arrays cannot be loaded when allow_pickle=False", *MODEL, "--data", lambda f: f.npz_object,
             "--sigma", "0.25", "--checkpoint-dir", lambda f: f.root / "t"),
    cli_case("train-resume-corrupt", "train", "a damaged `checkpoint.pt` in `--checkpoint-dir`",
             "--checkpoint-dir: cannot read", *TRAIN, "--checkpoint-dir", lambda f: f.ckpt_dir_corrupt),
    cli_case("train-resume-foreign", "train", "a `checkpoint.pt` that holds no training state",
             "holds no training state; it is not a checkpoint this command wrote, or it is damaged",
             *TRAIN, "--checkpoint-dir", lambda f: f.ckpt_dir_foreign),
    cli_case("subset-empty", "certify", "`--start 5 --max 6 --every 4` (no index)",
             "the subset (--start, --max, --every, --limit) selects no image", *CERTIFY,
             "--start", "5", "--max", "6", "--every", "4", "--out", lambda f: f.root / "o.tsv"),
    # files that would run code
    cli_case("pt2-untrusted", "certify", "`--model m.pt2` without `--trust-model-file`",
             "torch.export.load unpickles parts of the archive with weights_only=False, so a crafted file can run "
             "code on this machine. Load it only if you made it or trust who did: pass --trust-model-file",
             "--model", lambda f: f.pt2, "--data", "digits", "--sigma", "0.25", "--out", lambda f: f.root / "o.tsv"),
    cli_case("torchscript-untrusted", "predict", "`--model torchscript:m.ts` without `--trust-model-file`",
             "a TorchScript archive is a program that runs when the model is called",
             "--model", lambda f: f"torchscript:{f.ts}", "--data", "digits", "--sigma", "0.25",
             "--out", lambda f: f.root / "o.tsv"),
    api_case("api-pt2-untrusted", "`Host.load_model`", "`ModelRequest('m.pt2')` (trust=False)",
             "Python: ModelRequest(..., trust=True)", lambda f: host().load_model(ModelRequest(str(f.pt2)))),
    # results files that cannot be proven to be ours
    cli_case("resume-no-sidecar", "certify", "`--out` a TSV with rows but no settings sidecar",
             "has 1 rows but no settings file foreign.tsv.json", *CERTIFY, "--checkpoint", lambda f: f.ckpt,
             "--out", lambda f: f.foreign),
    cli_case("resume-other-sigma", "certify", "`--out` written with --sigma 0.25, rerun with --sigma 0.5",
             "was written with sigma=0.25; this run has sigma=0.5. Use another --out or delete the file",
             *MODEL, "--data", "digits", "--sigma", "0.5", "--n", "20", "--n0", "10", "--limit", "1",
             "--checkpoint", lambda f: f.ckpt, "--out", lambda f: f.resumed_with_other_sigma()),
    api_case("api-resume-no-sidecar", "`ResultsFile`", "a foreign TSV with `settings=`",
             "no settings file", lambda f: ResultsFile(f.foreign, CERTIFY_COLUMNS, {"sigma": 0.25})),
    # adaptive smoothing: two models, each with its own checkpoint, and options in range
    cli_case("checkpoint-count", "certify", "two `--model`, one `--checkpoint`",
             "--checkpoint given 1 times for 2 --model; give one per --model, in the same order",
             *TWO_MODELS[:5], *TWO_MODELS[7:], "--mixer", "mix", *CERTIFY[4:], "--out", lambda f: f.root / "u.tsv"),
    cli_case("mix-one-model", "certify", "`--mixer mix` with one `--model`",
             "mixer 'mix' combines exactly two --model classifiers, the accurate one first and the robust one second",
             *CERTIFY, "--mixer", "mix", "--checkpoint", lambda f: f.ckpt, "--out", lambda f: f.root / "u.tsv"),
    cli_case("mix-alpha-range", "certify", "`--mixer-option alpha=1.5`",
             "--mixer-option alpha must be a number in [0, 1]; got 1.5",
             *TWO_MODELS, "--mixer", "mix", "--mixer-option", "alpha=1.5", *CERTIFY[4:],
             "--out", lambda f: f.root / "u.tsv"),
    cli_case("adaptive-unknown-layer", "predict", "`--mixer adaptive --mixer-option std_layers=stem,body`",
             "--mixer-option std_layers: no layer named 'stem', 'body' in the std model",
             *TWO_MODELS, "--mixer", "adaptive", "--mixer-option", "std_layers=stem,body", *PREDICT[4:],
             "--out", lambda f: f.root / "u.tsv"),
    cli_case("mixed-certifier-no-mixer", "certify", "`--certifier mixed` on one model",
             "certifier 'mixed' certifies a mixture with a smoothed robust member: use --mixer mix or adaptive",
             *CERTIFY, "--certifier", "mixed", "--checkpoint", lambda f: f.ckpt, "--out", lambda f: f.root / "u.tsv"),
    cli_case("mixed-certifier-votes", "certify", "`--certifier mixed --certifier-option votes=maybe`",
             "--certifier-option votes must be one of hard, soft; got 'maybe'",
             *TWO_MODELS, "--mixer", "mix", "--certifier", "mixed", "--certifier-option", "votes=maybe",
             *CERTIFY[4:], "--out", lambda f: f.root / "u.tsv"),
    cli_case("train-mixer-fixed-alpha", "train-mixer", "`--mixer mix`",
             "--mixer mix has nothing to train; train-mixer trains --mixer adaptive",
             *TWO_MODELS, "--mixer", "mix", "--data", "digits", "--device", "cpu", "--no-progress",
             "--checkpoint-dir", lambda f: f.root / "tm"),
    cli_case("tradeoff-alpha-range", "tradeoff", "`--alphas 0.5 2`", "--alphas must lie in [0, 1]; got 2.0",
             *TWO_MODELS, "--alphas", "0.5", "2", "--data", "digits", "--eps", "0.1", "--device", "cpu",
             "--out", lambda f: f.root / "u.csv"),
    api_case("api-mix-scale", "`Host.mixer`", "`mixer('mix', [g, h], rob_scale=0)`",
             "--mixer-option rob_scale must be a finite number > 0; got 0",
             lambda f: host().mixer("mix", [small(), small()], rob_scale=0)),
    cli_case("report-noise-unknown", "report", "`--noise laplac` for a file without a sidecar",
             "--noise 'laplac': no noise sampler named 'laplac'. Did you mean 'laplace'?", "--noise", "laplac",
             lambda f: f.foreign),
    cli_case("report-sigma-zero", "report", "`--sigma 0` for a file without a sidecar",
             "--sigma: must be a finite number > 0", "--sigma", "0", lambda f: f.foreign),
    cli_case("report-same-file-twice", "report", "the same TSV twice, no `--label`",
             "given more than once; give each file once", lambda f: f.foreign, lambda f: f.foreign),
    # CAT-RS: the p_b file must be given and must be of the training data
    cli_case("catrs-no-confidence", "train", "`--loss catrs` without `--loss-option confidence=`",
             "confidence must be the p_b file of `rs-plugins predict-confidence`; got none", *TRAIN, "--loss", "catrs"),
    cli_case("catrs-other-data", "train", "`--loss-option confidence=` a votes file made on other data",
             "was made on other data (1 images, labels sha256 000000000000...) than the training data (1437 images",
             *TRAIN, "--loss", "catrs", "--loss-option", lambda f: f"confidence={votes_file(f)}"),
    cli_case("catrs-confidence-sidecar", "train", "`--loss-option confidence=p_b.tsv.json` (the sidecar, not the TSV)",
             "confidence: p_b.tsv.json is the settings file that sits next to a results file; give the results "
             "file itself, p_b.tsv", *TRAIN, "--loss", "catrs", "--loss-option", "confidence=p_b.tsv.json"),
    cli_case("report-sidecar", "report", "`foreign.tsv.json` (a sidecar) as a results file",
             "is the settings file that sits next to a results file; give the results file itself",
             lambda f: f"{f.foreign}.json"),
    cli_case("denoiser-bare-path", "certify", "`--denoiser stab/denoiser.pt` (no `NAME:`)",
             "--denoiser stab/denoiser.pt: looks like a path, but --denoiser takes NAME or NAME:PATH, e.g. --denoiser "
             "dncnn:stab/denoiser.pt", *certify_args_lazy(), "--denoiser", "stab/denoiser.pt"),
    cli_case("compile-mode-without-compile", "certify", "`--compile-mode max-autotune` without `--compile`",
             "--compile-mode max-autotune needs --compile", *CERTIFY, "--compile-mode", "max-autotune"),
    api_case("api-compile-mode", "`Execution`", "`Execution(compile=True, compile_mode='fast')`",
             "--compile-mode must be one of default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs; got",
             lambda f: execution.Execution(compile=True, compile_mode="fast")),
    # issue 21: untrained or mismatched models
    cli_case("untrained-factory", "certify", "a factory `--model` without `--checkpoint`",
             "has no --checkpoint, so it would run with the weights its factory builds: random initial weights, "
             "unless the factory sets its own. Give --checkpoint FILE",
             *MODEL, "--data", "digits", "--sigma", "0.25", "--out", lambda f: f.root / "u.tsv"),
    cli_case("untrained-factory-predict", "predict", "a factory `--model` without `--checkpoint`",
             "or --factory-weights to use the factory's weights as they are", *MODEL, "--data", "digits",
             "--sigma", "0.25", "--out", lambda f: f.root / "u.tsv"),
    cli_case("data-shape-mismatch", "train", "`--model rs_plugins.nets:cifar_resnet110 --data digits`",
             "--data images have shape 1x8x8 (CxHxW), but model 'rs_plugins.nets:cifar_resnet110' takes 3x32x32",
             "--model", "rs_plugins.nets:cifar_resnet110", "--data", "digits", "--sigma", "0.25", "--epochs", "1",
             "--checkpoint-dir", lambda f: f.root / "t"),
    # issue 17 "clear errors": each names the option, what was found and what is accepted
    api_case("out-unwritable", "`check_output_file` (every `--out`)", "`--out` in a folder without write permission",
             "is not writable (permission denied); give a path in a folder you can write to",
             lambda f: _denied(lambda: file_checks.check_output_file(f.root / "new.tsv", "--out"))),
    api_case("out-file-unwritable", "`check_output_file` (every `--out`)",
             "`--out` an existing file without write permission",
             "is not writable (permission denied); give a writable file path",
             lambda f: _denied(lambda: file_checks.check_output_file(f.file, "--out"))),
    cli_case("plot-under-file", "certify", "`--plot` under a regular file",
             "is a regular file, not a folder; give a path in a writable folder", *CERTIFY,
             "--out", lambda f: f.root / "o.tsv", "--plot", lambda f: f.file / "p.png"),
    cli_case("checkpoint-truncated-expected", "certify", "a truncated `--checkpoint`",
             "expected a state dict written by rs-plugins train (model.pt) or torch.save", *CERTIFY,
             "--checkpoint", lambda f: f.truncated, "--out", lambda f: f.root / "o.tsv"),
    cli_case("data-label-minus-three", "certify", "`--data` file with a label -3, 10-class model",
             "has label -3 (image 3); labels must be integers in 0..K-1", *CERTIFY[:-2],
             "--data", lambda f: f.minus_three,
             "--out", lambda f: f.root / "u.tsv"),
    cli_case("checkpoint-other-kwargs", "certify", "`--checkpoint` of SmallCNN width 4 for `--model-kwargs` width 8",
             "7 shapes differ (checkpoint vs model: features.0.weight (4, 1, 3, 3) vs (8, 1, 3, 3)", "--model",
             "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 8}', "--checkpoint", lambda f: f.ckpt,
             "--data", "digits", "--sigma", "0.25", "--out", lambda f: f.root / "u.tsv"),
    cli_case("checkpoint-other-architecture", "certify", "`--checkpoint` of a SmallCNN for `--model ...:lenet`",
             "keys missing (features.3.weight, features.3.bias, head.0.weight and 3 more); 6 unexpected keys",
             "--model", "rs_plugins.nets:lenet", "--checkpoint", lambda f: f.ckpt, "--data", "digits",
             "--sigma", "0.25", "--out", lambda f: f.root / "u.tsv"),
    cli_case("nan-logits-accepted", "predict", "a model whose logits are NaN",
             "A model must return finite logits for images in [0, 1]", "--factory-weights", "--model",
             "test_bad_input:NaNModel", "--data", "digits", "--sigma", "0.25", "--n", "20", "--limit", "1",
             "--out", lambda f: f.root / "nan_predict.tsv"),
    api_case("api-nan-logits-accepted", "`SmoothedClassifier.predict`", "a model whose logits are NaN",
             "A model must return finite logits for images in [0, 1]",
             lambda f: SmoothedClassifier(NaNModel(), GaussianNoise(0.25)).predict(x1()[0], n=20)),
    api_case("api-certifier-noise-pair", "`SmoothedClassifier`",
             "`SmoothedClassifier(model, host.noise('laplace', sigma=0.25), host.certifier('mixed'))`",
             "supports noise ['gaussian']; got noise sampler 'laplace'",
             lambda f: SmoothedClassifier(small(), rs_plugins.Host().noise("laplace", sigma=0.25),
                                          rs_plugins.Host().certifier("mixed"))),
    api_case("api-adaptive-net", "`Host.mixer`", "`mixer('adaptive', [g, h], net='v5')`",
             "--mixer-option net must be one of v3, v4, small; got 'v5'",
             lambda f: host().mixer("adaptive", [small(), small()], net="v5")),
    api_case("api-adaptive-width-paper-net", "`Host.mixer`", "`mixer('adaptive', [g, h], net='v3', width=8)`",
             "--mixer-option width sets net=small only; net=v3 has the paper's widths",
             lambda f: host().mixer("adaptive", [small(), small()], net="v3", width=8)),
    api_case("api-adaptive-torchscript", "`Host.mixer`", "`mixer('adaptive', [g, h])` with TorchScript bases",
             "the std model is TorchScript, whose layers cannot be hooked",
             lambda f: host().mixer("adaptive", [torch.jit.script(small()), torch.jit.script(small())])),
    # denoised smoothing (--denoiser)
    cli_case("denoiser-missing-dir", "certify", "`--denoiser diffusion:no_such_dir`",
             "--denoiser diffusion:PATH: no file or directory 'no_such_dir'",
             *certify_args_lazy(), "--denoiser", "diffusion:no_such_dir"),
    cli_case("denoiser-not-diffusers", "certify", "`--denoiser diffusion:DIR`, DIR without diffusers configs",
             "is not a diffusers folder (no config.json + scheduler_config.json)",
             *certify_args_lazy(), "--denoiser", lambda f: f"diffusion:{f.folder}"),
    cli_case("denoiser-pt-file", "certify", "`--denoiser diffusion:model.pt`, a classifier's state dict",
             "is not an improved-/guided-diffusion UNetModel state dict",
             *certify_args_lazy(), "--denoiser", lambda f: f"diffusion:{f.ckpt}"),
    cli_case("denoiser-sigma-too-large", "certify", "`--sigma 100 --denoiser diffusion:DIR`",
             "2 sigma = 200 exceeds the largest noise level of the diffusion schedule",
             *MODEL, "--factory-weights", "--data", "digits", "--sigma", "100", "--n", "20", "--n0", "10",
             "--limit", "1", "--out", lambda f: f.root / "u.tsv", "--denoiser", diffusion),
    cli_case("denoiser-wrong-channels", "certify", "an RGB diffusion model on 1-channel digits",
             "the UNet takes 3-channel images; the data has 1 channels",
             *certify_args_lazy(), "--denoiser", lambda f: diffusion(f, 3)),
    cli_case("denoiser-option-unknown", "certify", "`--denoiser-option stride=4`",
             "has no option 'stride' (--denoiser-option); accepted: sigma, path, classifier_size, noise, schedule",
             *certify_args_lazy(), "--denoiser", diffusion, "--denoiser-option", "stride=4"),
    cli_case("denoiser-option-for-pt", "certify", "`--denoiser-option steps=4` with a diffusers folder",
             "--denoiser-option steps: only for an improved-/guided-diffusion .pt",
             *certify_args_lazy(), "--denoiser", diffusion, "--denoiser-option", "steps=4"),
    cli_case("denoiser-noise-unknown", "certify", "`--denoiser-option noise=q_sample`",
             "--denoiser-option noise must be one of exact, authors; got 'q_sample'",
             *certify_args_lazy(), "--denoiser", diffusion, "--denoiser-option", "noise=q_sample"),
    cli_case("denoiser-empty-path", "predict", "`--denoiser diffusion:`",
             "--denoiser takes NAME or NAME:PATH", *PREDICT, "--out", lambda f: f.root / "u.tsv",
             "--denoiser", "diffusion:"),
    cli_case("denoiser-no-sigma", "attack", "`--denoiser` without `--sigma`",
             "--denoiser denoises the smoothing noise: give --sigma",
             *MODEL, "--factory-weights", "--data", "digits", "--attack", "PGD", "--eps", "0.1", "--limit", "1",
             "--denoiser",
             "bad_shape", "--device", "cpu", "--no-progress", "--out", lambda f: f.root / "u.tsv"),
    cli_case("denoiser-bad-shape", "certify", "a plugin denoiser whose output has another shape",
             "denoiser 'bad_shape' from plugin broken_denoisers returned (1, 1, 7, 8) for input (1, 1, 8, 8)",
             *certify_args_lazy(), "--denoiser", "bad_shape"),
    cli_case("denoiser-nan", "certify", "a plugin denoiser that returns NaN",
             "denoiser 'bad_nan' from plugin broken_denoisers returned NaN or infinite values",
             *certify_args_lazy(), "--denoiser", "bad_nan"),
    # the trained DnCNN (--denoiser dncnn:PATH, train-denoiser)
    cli_case("dncnn-missing-file", "certify", "`--denoiser dncnn:no_such.pt`",
             "--denoiser dncnn:PATH: no file 'no_such.pt'", *certify_args_lazy(), "--denoiser", "dncnn:no_such.pt"),
    cli_case("dncnn-other-architecture", "certify", "`--denoiser dncnn:model.pt`, a classifier's state dict",
             "--denoiser dncnn:PATH: another architecture's weights in", *certify_args_lazy(), "--denoiser",
             lambda f: f"dncnn:{f.ckpt}"),
    cli_case("dncnn-no-path", "certify", "`--denoiser dncnn` without weights",
             "--denoiser dncnn:PATH: give the trained weights", *certify_args_lazy(), "--denoiser", "dncnn"),
    cli_case("train-denoiser-objective", "train-denoiser", "`--objective l1`",
             "argument --objective: invalid choice: 'l1'", "--data", "digits",
             "--sigma", "0.25", "--objective", "l1", *FAST),
    cli_case("train-denoiser-stability-no-model", "train-denoiser", "`--objective stability` without `--model`",
             "--objective stability needs --model: the frozen classifier", "--data", "digits", "--sigma", "0.25",
             "--objective", "stability", "--checkpoint-dir", lambda f: f.root / "d", *FAST),
    cli_case("train-denoiser-classification-no-model", "train-denoiser",
             "`--objective classification` without `--model`",
             "--objective classification needs --model: the frozen classifier", "--data", "digits", "--sigma",
             "0.25", "--objective", "classification", "--checkpoint-dir", lambda f: f.root / "d", *FAST),
    cli_case("train-denoiser-classification-labels", "train-denoiser",
             "`--objective classification`, labels beyond the classifier's classes",
             "--data: label 9 of image 1 is outside 0..3", "--data", "digits", "--sigma", "0.25", "--objective",
             "classification", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"num_classes": 4}',
             "--factory-weights", "--checkpoint-dir", lambda f: f.root / "d", *FAST),
    cli_case("train-lr-schedule", "train", "`--lr-schedule late`",
             "argument --lr-schedule: invalid choice: 'late'", "--model",
             "rs_plugins.nets:SmallCNN", "--data", "digits", "--sigma", "0.25", "--lr-schedule", "late"),
    cli_case("train-denoiser-init-other", "train-denoiser", "`--init model.pt`, a classifier's state dict",
             "--init: another architecture's weights in", "--data", "digits", "--sigma", "0.25", "--init",
             lambda f: f.ckpt, "--checkpoint-dir", lambda f: f.root / "d", *FAST),
    # certifying from stored counts (recertify) and the soundness bench
    cli_case("counts-log-choice", "certify", "`--counts-log off`", "argument --counts-log: invalid choice: 'off'",
             *certify_args_lazy(), "--counts-log", "off"),
    cli_case("recertify-no-counts", "recertify", "a results file without its counts log",
             "no counts log", lambda f: f.root / "no_such.tsv", "--out", lambda f: f.root / "u.tsv"),
    cli_case("recertify-no-sidecar", "recertify", "a counts log moved away from its results file's `.json`",
             "is missing or records no noise, sigma and alpha, which recertify needs",
             lambda f: f.counts_alone, "--out", lambda f: f.root / "u.tsv"),
    cli_case("recertify-fresh-only", "recertify", "`--certifier NAME` whose certifier has no certify_counts()",
             "has no certify_counts(): it needs fresh samples", lambda f: f.counts_predict, "--certifier",
             "nan_radius", "--out", lambda f: f.root / "u.tsv"),
    cli_case("recertify-sequential-counts", "recertify", "a sequential run's counts with `--certifier cohen`",
             "would not be valid on them (optional stopping): recertify them with sequential",
             lambda f: f.counts_seq, "--out", lambda f: f.root / "u.tsv"),
    cli_case("recertify-no-selection", "recertify", "a predict run's counts with `--certifier cohen` (class from n0)",
             "these counts have none (the run used class_selection=label, or was a predict run)",
             lambda f: f.counts_predict, "--out", lambda f: f.root / "u.tsv"),
    cli_case("recertify-mixed-soft", "recertify", "`--certifier mixed --certifier-option votes=soft`",
             "votes=soft averages the robust member's softmax outputs, which no counts log holds",
             lambda f: f.counts_predict, "--certifier", "mixed", "--certifier-option", "votes=soft", "--out",
             lambda f: f.root / "u.tsv"),
    cli_case("recertify-image-twice", "recertify", "a counts log with an image twice (edited)",
             "image 0 appears twice; the file was edited", lambda f: f.counts_twice, "--out",
             lambda f: f.root / "u.tsv"),
    api_case("recertify-options-with-built", "`rs.recertify`", "`options=` with a built certifier",
             "options are for a certifier given by name",
             lambda f: rs_plugins.recertify(f.counts_predict, gaussian.CohenCertifier(), options={"x": 1})),
    cli_case("check-certifier-unknown", "check-certifier", "`check-certifier cohn`",
             "no certifier named 'cohn'. Did you mean 'cohen'?", "cohn"),
    cli_case("mixed-with-denoiser", "certify", "`--certifier mixed` with `--denoiser`",
             "--certifier mixed with --denoiser: the mixed certificate smooths the mixture's robust member",
             *TWO_MODELS, "--mixer", "mix", "--mixer-option", "alpha=0.8", "--certifier", "mixed", "--data",
             "digits", "--sigma", "0.25", "--n", "20", "--n0", "10", "--limit", "1", "--out",
             lambda f: f.root / "u.tsv", "--denoiser", lambda f: f"dncnn:{dncnn_file(f)}"),
    # issue 25: untrained models everywhere, files edited by hand or foreign (one schema per file kind)
    cli_case("untrained-factory-confidence", "predict-confidence", "a factory `--model` without `--checkpoint`",
             "has no --checkpoint, so it would run with the weights its factory builds", *MODEL, "--data", "digits",
             "--sigma", "0.25", "--out", lambda f: f.root / "u.tsv", *FAST),
    api_case("api-untrained-factory", "`Host.load_model`", "`host.load_model('rs_plugins.nets:SmallCNN')`",
             "Python: ModelRequest(source, checkpoint=FILE) or host.load_model(source, factory_weights=True)",
             lambda f: host().load_model("rs_plugins.nets:SmallCNN")),
    cli_case("untrained-mixing-network", "certify", "`--mixer adaptive --certifier mixed` without its checkpoint",
             "--mixer adaptive has no --mixer-option checkpoint=MIXING_PT, so its mixing network would run with "
             "random initial weights", *TWO_MODELS, "--mixer", "adaptive", "--mixer-option", "width=4",
             "--certifier", "mixed", "--data", "digits", "--sigma", "0.25", "--out", lambda f: f.root / "u.tsv"),
    cli_case("report-sidecar-not-json", "report", "a sidecar that is not JSON",
             "bad_json.tsv.json is not valid JSON (Expecting", lambda f: edited_sidecar(f, "bad_json", "{")),
    cli_case("report-sidecar-provenance", "report", 'a sidecar with `"provenance": "x"`',
             "field 'provenance' is 'x'; expected a JSON object",
             lambda f: edited_sidecar(f, "prov", '{"sigma": 0.25, "provenance": "x"}')),
    cli_case("report-sidecar-resumed", "report", 'a sidecar with `"resumed": 5`',
             "field 'resumed' is 5; expected a list, each a JSON object",
             lambda f: edited_sidecar(f, "resumed", '{"sigma": 0.25, "resumed": 5}')),
    cli_case("report-header-only", "report", "a TSV with its header and no rows",
             "has its header but no rows yet", "--noise", "gaussian", lambda f: f._tsv("header_only.tsv", "")),
    cli_case("report-binary", "report", "a binary file", "is not a results file: it is not text (byte 0xff",
             "--noise", "gaussian", lambda f: f.binary),
    cli_case("report-duplicate-index", "report", "a TSV with image 0 on two rows with different radii",
             "image index 0 is on 2 rows with different results (1 image index appears more than once)",
             "--noise", "gaussian", lambda f: f._tsv("twice.tsv", "0\t3\t3\t0.5\t1\t0:00:01\t100\n"
                                                     "0\t3\t3\t0.7\t1\t0:00:01\t100\n")),
    cli_case("catrs-votes-n-text", "train", 'a p_b sidecar with `"n": "16"`',
             "p_b_n_text.tsv.json: field 'n' is '16'; expected an integer > 0", *TRAIN, "--loss", "catrs",
             "--loss-option", lambda f: f"confidence={p_b_file(f, 'n_text', side={'n': '16'})}"),
    cli_case("catrs-votes-identity-text", "train", 'a p_b sidecar with `"data_identity": "digits"`',
             "field 'data_identity' is 'digits'; expected a JSON object with images, labels_sha256", *TRAIN,
             "--loss", "catrs",
             "--loss-option", lambda f: f"confidence={p_b_file(f, 'identity', side={'data_identity': 'digits'})}"),
    cli_case("catrs-votes-class-99", "train", "a p_b row voting for class 99",
             "image 0: votes 99:4; each must be class:count with a class in 0..9 and a count > 0", *TRAIN,
             "--loss", "catrs",
             "--loss-option", lambda f: "confidence=" + str(p_b_file(f, 'c99', row='0\t3\t99:4'))),
    cli_case("catrs-votes-class-minus-one", "train", "a p_b row moving a vote to class -1",
             "image 0: votes -1:1; each must be class:count with a class in 0..9", *TRAIN, "--loss", "catrs",
             "--loss-option", lambda f: "confidence=" + str(p_b_file(f, 'cm1', row='0\t3\t3:3,-1:1'))),
    cli_case("catrs-votes-index-out-of-range", "train", "a p_b row for image 99999",
             "image 99999: the index is outside the data set's 0..1436", *TRAIN, "--loss", "catrs",
             "--loss-option", lambda f: "confidence=" + str(p_b_file(f, 'i99999', row='99999\t0\t0:4'))),
    cli_case("catrs-votes-index-twice", "train", "a p_b file with image 1 twice and image 0 missing",
             "covers 1436 of 1437 images (first missing: 0)", *TRAIN, "--loss", "catrs",
             "--loss-option", lambda f: "confidence=" + str(p_b_file(f, 'twice', row='1\t9\t9:4'))),
    cli_case("catrs-votes-folder", "train", "`--loss-option confidence=` a folder",
             "is a folder; give the votes file, write it with `rs-plugins predict-confidence`", *TRAIN,
             "--loss", "catrs", "--loss-option",
             lambda f: f"confidence={f.folder}"),
    cli_case("dncnn-no-state-dict", "certify", "a `denoiser.pt` without `state_dict`",
             "field 'state_dict' is missing; expected a state dict (parameter names to tensors)",
             *certify_args_lazy(), "--denoiser", lambda f: f"dncnn:{dncnn_edited(f, 'no_state', state=False)}"),
    cli_case("dncnn-sigma-text", "certify", 'a `denoiser.pt` with `"sigma": "abc"`',
             "field 'sigma' is 'abc'; expected a finite number > 0 or null",
             *certify_args_lazy(), "--denoiser", lambda f: f"dncnn:{dncnn_edited(f, 'sigma_text', sigma='abc')}"),
    cli_case("diffusers-config-type", "certify", 'a diffusers `config.json` with `"in_channels": "1"`',
             "config.json: field 'in_channels' is '1'; expected an integer > 0",
             *certify_args_lazy(), "--denoiser", lambda f: f"diffusion:{ddpm_edited(f, in_channels='1')}"),
    cli_case("train-mixer-eps-range", "train-mixer", "`--eps-range 1.1 0.4`",
             "--eps-range LOW HIGH: LOW (1.1) must not exceed HIGH (0.4)", *TWO_MODELS, "--eps-range", "1.1", "0.4",
             "--data", "digits", "--checkpoint-dir", lambda f: f.root / "tm"),
    # the zoo of released models and the data sets fetched on demand (downloads are off in the tests)
    cli_case("zoo-unknown-entry", "certify", "`--model zoo:cohen-cifar10-resnet110-0.52`",
             "--model zoo:cohen-cifar10-resnet110-0.52: no such zoo entry; did you mean cohen-cifar10-resnet110-0.5",
             "--model", "zoo:cohen-cifar10-resnet110-0.52", *ZOO_RUN),
    cli_case("zoo-weights-not-published", "certify", "`--model zoo:consistency-cifar10-resnet110-0.25`",
             "the authors did not publish this model's weights (only its certification logs)",
             "--model", "zoo:consistency-cifar10-resnet110-0.25", *ZOO_RUN),
    cli_case("zoo-denoiser-as-model", "certify", "`--model zoo:salman2020-dncnn-cifar10-mse-0.25`",
             "--model zoo:salman2020-dncnn-cifar10-mse-0.25 is a denoiser; use it as --denoiser dncnn:zoo:NAME",
             "--model", "zoo:salman2020-dncnn-cifar10-mse-0.25", *ZOO_RUN),
    cli_case("zoo-model-kwargs", "certify", "`--model zoo:NAME --model-kwargs '{\"depth\": 20}'`",
             "--model-kwargs is not used with --model zoo:NAME", "--model", "zoo:cohen-cifar10-resnet110-0.25",
             "--model-kwargs", '{"depth": 20}', *ZOO_RUN),
    cli_case("zoo-dir-without-the-file", "certify", "`--zoo-dir DIR` that lacks the entry's checkpoint",
             "has no models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar (nor any tail of that path)",
             "--model", "zoo:cohen-cifar10-resnet110-0.25", "--zoo-dir", lambda f: f.root, *ZOO_RUN),
    cli_case("zoo-certify-imagenet-no-data", "zoo", "`certify cohen-imagenet-resnet50-0.5` without `--data`",
             "give --data imagenet:ROOT", "certify", "cohen-imagenet-resnet50-0.5"),
    cli_case("zoo-certify-no-sigma", "zoo", "`certify carlini2023-diffusion-cifar10` without `--sigma`",
             "it was not trained for one noise level; give --sigma", "certify", "carlini2023-diffusion-cifar10"),
    cli_case("data-imagenet-no-root", "certify", "`--data imagenet` (no folder)",
             "its licence forbids redistribution, so nothing downloads it", *MODEL, "--factory-weights", "--data",
             "imagenet", "--sigma", "0.25", "--out", lambda f: f.root / "u.tsv"),
]
# fmt: on


# -- the tests ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    return Files(tmp_path_factory.mktemp("bad_input"))


def message_of(case: Case, files: Files, capsys, monkeypatch) -> str:
    """The message the user sees; asserts a clean failure (exit 2 and no traceback, or a user-facing error)."""
    monkeypatch.chdir(files.root)  # a default output path (certify.tsv, checkpoints/) lands there, if anywhere
    if case.where.startswith("`rs-plugins"):
        monkeypatch.setattr(cli.shared, "Host", host)  # the commands build theirs there
        monkeypatch.syspath_prepend(str(Path(__file__).parent))  # for --model test_bad_input:NaNModel
        argv = [str(a) for a in case.run(files)]
        try:
            code = cli.main([*argv, *FAST] if argv[0] in ("certify", "predict", "train") else argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err
        return err
    with pytest.raises((ValueError, RsPluginError, OSError)) as info:
        case.run(files)
    return str(info.value)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clear_message(case, files, capsys, monkeypatch):
    message = message_of(case, files, capsys, monkeypatch)
    assert case.expect in " ".join(message.split()), message


def test_no_work_and_no_marker_after_refusals(files):
    """The refused cases left nothing behind: no results file, no unpickled payload."""
    assert not (files.root / "npz_marker").exists()
    assert not (files.root / "u.tsv").exists() and not (files.root / "unused.tsv").exists()


def markdown_rows() -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| id | where | bad input | message the user sees (excerpt) |", "|---|---|---|---|"]
    lines += [f"| {c.id} | {c.where} | {cell(c.given)} | {cell(c.expect)} |" for c in CASES]
    return "\n".join(lines) + "\n"


def test_the_doc_lists_every_case():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert markdown_rows() in DOC.read_text(encoding="utf-8"), "regenerate with python tests/test_bad_input.py"


if __name__ == "__main__":
    sys.stdout.write(markdown_rows())
