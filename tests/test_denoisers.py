"""Denoised smoothing: the rs_denoisers hook, the composed classifier, and the built-in diffusion denoiser.

The closed form: a denoiser that returns its input makes denoised smoothing plain smoothing, row for row on the
same seeds. The diffusion denoiser is checked against the authors' timestep loop (transcribed below) and against
``DDPMScheduler.step(...).pred_original_sample`` on tiny UNets the tests build and save; nothing is downloaded.
"""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from torch import nn

import rs_plugins
from rs_plugins import DenoisedClassifier, DenoiserSpec, cli
from rs_plugins.errors import PluginBuildError
from rs_plugins.nets import SmallCNN
from rs_plugins.testing import IdentityDenoiser, check_denoiser

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

from rs_plugins.builtin.denoisers.diffusion import DiffusionDenoiser, timestep_for  # noqa: E402

FAST = ["--device", "cpu", "--no-progress"]


class BadDenoiser(nn.Module):
    def __init__(self, sigma: float, fault: str = "shape") -> None:
        super().__init__()
        self.fault = fault

    def forward(self, x):
        return x[:, :, 1:] if self.fault == "shape" else x * float("nan")


class DenoiserPlugin:
    name = "denoiser_plugin"

    @rs_plugins.hookimpl
    def rs_denoisers(self):
        yield DenoiserSpec("identity", IdentityDenoiser, summary="returns its input")
        for fault in ("shape", "nan"):
            yield DenoiserSpec(f"bad_{fault}", functools.partial(BadDenoiser, fault=fault), summary=f"breaks {fault}")


def tiny_unet(channels: int = 1, out_channels: int | None = None, size: int = 8, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=out_channels or channels, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=4,
    ).eval()  # fmt: skip


def save_checkpoint(path, unet: UNet2DModel, scheduler: DDPMScheduler, *, layout: str = "flat"):
    """A diffusers folder: config.json + scheduler_config.json at the root (the hub's google/ddpm-cifar10-32
    layout), or unet/ + scheduler/ (a saved DDPMPipeline)."""
    unet.save_pretrained(path if layout == "flat" else path / "unet")
    scheduler.save_pretrained(path if layout == "flat" else path / "scheduler")
    return path


@pytest.fixture(scope="module")
def ddpm_dir(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ddpm"), tiny_unet(), DDPMScheduler(num_train_timesteps=1000))


# -- the hook and the composition ---------------------------------------------------------------------------------


def test_the_hook_lists_denoisers_and_the_builtin_diffusion():
    host = rs_plugins.Host(plugins=[DenoiserPlugin()])
    assert {"identity", "diffusion"} <= set(host.names("denoiser"))
    listed = {c["name"]: c for p in host.describe() for c in p["components"] if c["kind"] == "denoiser"}
    assert listed["diffusion"]["options"] == {
        "sigma": "<required>", "path": "<required>", "classifier_size": None, "noise": "exact", "schedule": None,
        "steps": None, "rescale_timesteps": None, "heads": None, "head_channels": None,
    }  # fmt: skip


@pytest.mark.parametrize(("fault", "expect"), [("shape", "must keep the shape"), ("nan", "NaN or infinite")])
def test_a_broken_denoiser_is_named_in_the_error(fault, expect):
    host = rs_plugins.Host(entry_points=False, plugins=[DenoiserPlugin()])
    model = DenoisedClassifier(SmallCNN(width=4), host.denoiser(f"bad_{fault}", sigma=0.25))
    with pytest.raises(PluginBuildError, match=expect) as info:
        model(torch.rand(2, 1, 8, 8))
    assert f"denoiser 'bad_{fault}' from plugin denoiser_plugin" in str(info.value)


def run(capsys, *argv) -> int:
    code = cli.main([str(a) for a in argv])
    capsys.readouterr()
    return code


@pytest.mark.parametrize("command", ["certify", "predict"])
def test_identity_denoiser_gives_plain_smoothing_row_for_row(command, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.shared, "Host", functools.partial(rs_plugins.Host, plugins=[DenoiserPlugin()]))
    torch.manual_seed(0)
    torch.save(SmallCNN(width=4).state_dict(), tmp_path / "m.pt")
    argv = [command, "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 4}', "--checkpoint",
            tmp_path / "m.pt", "--data", "digits", "--sigma", "0.5", "--n", "100", "--limit", "6", *FAST]  # fmt: skip
    argv += ["--n0", "10"] if command == "certify" else []
    assert run(capsys, *argv, "--out", tmp_path / "plain.tsv") == 0
    assert run(capsys, *argv, "--denoiser", "identity", "--out", tmp_path / "denoised.tsv") == 0

    def rows(name):  # without the timing column
        return [line.split("\t")[:4] for line in (tmp_path / name).read_text().splitlines()]

    assert rows("plain.tsv") == rows("denoised.tsv") and len(rows("plain.tsv")) == 7
    settings = json.loads((tmp_path / "denoised.tsv.json").read_text())
    assert settings["denoiser"]["name"] == "identity" and settings["denoiser"]["path"] is None
    assert len(settings["denoiser"]["sha256"]) == 64
    assert "denoiser" not in json.loads((tmp_path / "plain.tsv.json").read_text())


# -- the diffusion denoiser ---------------------------------------------------------------------------------------


def authors_timestep(alphas_cumprod, sigma: float) -> int:
    """The loop of ethz-spylab/diffusion_denoised_smoothing cifar10/certify.py, transcribed (float64)."""
    sqrt_a, sqrt_1ma = alphas_cumprod.double().sqrt(), (1 - alphas_cumprod.double()).sqrt()
    target, real, t = 2 * sigma, 0.0, 0
    while real < target:
        t += 1
        real = float(sqrt_1ma[t] / sqrt_a[t])
    return t


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_timestep_rule_matches_the_authors_and_hand_values(schedule):
    abar = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule).alphas_cumprod
    level = ((1 - abar.double()) / abar.double()).sqrt()
    for sigma in (0.05, 0.12, 0.25, 0.5, 1.0, 2.0):
        t = timestep_for(abar, sigma)
        assert t == authors_timestep(abar, sigma)
        assert level[t] >= 2 * sigma > level[t - 1]  # the first t that reaches 2 sigma
    if schedule == "linear":  # by hand from beta_t = 1e-4 + (0.02 - 1e-4) t / 999: the docs' worked numbers
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        hand = torch.cumprod(1 - betas, 0)
        for sigma, t in ((0.25, 145), (0.5, 259), (1.0, 396)):
            assert timestep_for(hand, sigma) == t == timestep_for(abar, sigma)


@pytest.mark.parametrize("learned_variance", [False, True])
def test_x0_equals_the_schedulers_pred_original_sample(learned_variance, tmp_path):
    channels = 3
    unet = tiny_unet(channels, 2 * channels if learned_variance else channels, seed=1)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, variance_type="learned_range" if learned_variance else "fixed_small"
    )
    denoiser = DiffusionDenoiser(0.25, str(save_checkpoint(tmp_path, unet, scheduler)))
    x = torch.rand(4, channels, 8, 8) + 0.25 * torch.randn(4, channels, 8, 8)
    with torch.no_grad():
        out = denoiser(x)
        x_t = math.sqrt(float(scheduler.alphas_cumprod[denoiser.t])) * (2 * x - 1)
        step = scheduler.step(unet(x_t, denoiser.t).sample, denoiser.t, x_t).pred_original_sample  # clipped
    assert denoiser.t == timestep_for(scheduler.alphas_cumprod, 0.25)
    assert torch.allclose(out, (step + 1) / 2, atol=1e-5)
    check_denoiser(denoiser, shape=(2, channels, 8, 8))


def test_both_layouts_load_and_settings_record_the_timestep(tmp_path, ddpm_dir):
    nested = save_checkpoint(tmp_path, tiny_unet(), DDPMScheduler(num_train_timesteps=1000), layout="nested")
    a, b = DiffusionDenoiser(0.5, str(ddpm_dir)), DiffusionDenoiser(0.5, str(nested))
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    abar = float(DDPMScheduler(num_train_timesteps=1000).alphas_cumprod[259])
    level = math.sqrt((1 - abar) / abar)
    assert a.settings() == {"t": 259, "alpha_bar": abar, "noise_level": level, "classifier_size": None,
                            "noise": "exact", "smoothing_sigma": 0.5, "format": "diffusers"}  # fmt: skip


def test_classifier_size_upsamples_before_the_classifier(ddpm_dir):
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x.flatten(1)[:, :3]

    model = DenoisedClassifier(Probe(), DiffusionDenoiser(0.25, str(ddpm_dir), classifier_size=24))
    with torch.no_grad():
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    assert seen == [(2, 1, 24, 24)]


def test_certify_through_the_diffusion_denoiser_records_it(capsys, tmp_path, ddpm_dir):
    argv = ["certify", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 4}', "--random-weights",
            "--data", "digits", "--sigma", "0.25", "--n0", "5", "--n", "20", "--limit", "2",
            "--denoiser", f"diffusion:{ddpm_dir}", "--out", tmp_path / "c.tsv", *FAST]  # fmt: skip
    assert run(capsys, *argv) == 0
    sidecar = json.loads((tmp_path / "c.tsv.json").read_text())
    denoiser = sidecar["denoiser"]
    assert denoiser["name"] == "diffusion" and denoiser["path"] == str(ddpm_dir) and denoiser["t"] == 145
    assert denoiser["sha256"] == rs_plugins.results.provenance.weights_sha256(DiffusionDenoiser(0.25, str(ddpm_dir)))
    assert sidecar["provenance"]["denoiser"]["plugin"] == "denoisers"


def test_attack_through_the_identity_denoiser_equals_the_plain_attack(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.shared, "Host", functools.partial(rs_plugins.Host, plugins=[DenoiserPlugin()]))
    torch.manual_seed(0)
    torch.save(SmallCNN(width=4).state_dict(), tmp_path / "m.pt")
    argv = ["attack", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 4}', "--checkpoint",
            tmp_path / "m.pt", "--data", "digits", "--attack", "PGDL2", "--eps", "0.5", "--sigma", "0.25", "--m", "2",
            "--n", "20", "--limit", "3", *FAST]  # fmt: skip
    assert run(capsys, *argv, "--out", tmp_path / "plain.tsv") == 0
    assert run(capsys, *argv, "--denoiser", "identity", "--out", tmp_path / "denoised.tsv") == 0

    def rows(name):  # without the timing column
        return [line.split("\t")[:6] for line in (tmp_path / name).read_text().splitlines()]

    assert rows("plain.tsv") == rows("denoised.tsv") and len(rows("plain.tsv")) == 4
    assert json.loads((tmp_path / "denoised.tsv.json").read_text())["denoiser"]["name"] == "identity"
