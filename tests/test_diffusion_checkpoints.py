"""The authors' improved-diffusion and guided-diffusion checkpoints under ``--denoiser diffusion:FILE.pt``.

Golden values (``tests/golden/``, made once by running the authors' own code; see its README): a small random
UNet of each code base, its outputs at two timesteps, the schedule, t* at four sigmas, and ``p_sample``'s
``pred_xstart`` for a noisy image; plus the parameter names and shapes of the released CIFAR-10 and ImageNet
256 x 256 UNets as the authors' code builds them. Nothing here imports diffusers or downloads anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import rs_plugins
from rs_plugins import cli
from rs_plugins.builtin.denoisers import adm_files
from rs_plugins.builtin.denoisers.adm import AdmUNet
from rs_plugins.builtin.denoisers.diffusion import AuthorsNoise, DiffusionDenoiser, timestep_for
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.denoising import DenoisedClassifier, smoothing_noise

GOLDEN = Path(__file__).resolve().parent / "golden"
KINDS = ("improved", "guided")
FAST = ["--device", "cpu", "--no-progress"]


def golden(kind: str) -> dict:
    return torch.load(GOLDEN / f"{kind}_diffusion_tiny.pt", weights_only=True)


def checkpoint(kind: str, tmp_path: Path) -> tuple[str, dict]:
    """The fixture's weights written as the authors' .pt (a bare state dict of float32 tensors)."""
    g = golden(kind)
    state = {k: v.float() * g["weight_scales"][k] for k, v in g["weights_int8"].items()}
    path = tmp_path / f"{kind}.pt"
    torch.save(state, path)
    return str(path), g


@pytest.mark.parametrize("kind", KINDS)
def test_the_unet_and_the_denoiser_equal_the_authors_code(kind, tmp_path):
    path, g = checkpoint(kind, tmp_path)
    denoiser = DiffusionDenoiser(g["sigma"], path, **g["options"])
    abar = adm_files.alphas_cumprod(g["options"]["schedule"], g["options"]["steps"])
    assert torch.allclose(abar, g["alphas_cumprod"], rtol=0, atol=1e-12)
    assert [timestep_for(abar, s) for s in g["sigmas"]] == g["t_star"]
    assert denoiser.t == g["t"] and denoiser.alpha_bar == pytest.approx(float(g["alphas_cumprod"][g["t"]]), abs=1e-15)
    with torch.no_grad():
        for t, out in (("unet_t", "unet_out"), ("unet_t2", "unet_out2")):  # t * 1000 / 4000 under rescale
            assert (denoiser.unet(g["x_t"], g[t]) - g[out]).abs().max() <= 1e-5
        # their DRM: q_sample(2x - 1, t*, eps) then p_sample's pred_xstart; here x + sigma_t* eps is the input
        noisy = (g["x"].double() + denoiser.level * g["eps"].double()).float()
        assert (denoiser(noisy) - (g["pred_xstart"] + 1) / 2).abs().max() <= 1e-5
    settings = denoiser.settings()
    assert settings["format"] == "adm" and settings["preset"] is None
    assert {k: settings[k] for k in adm_files.SETTINGS} == {k: g["options"][k] for k in adm_files.SETTINGS}


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_heads_or_timesteps_do_not_match(kind, tmp_path):
    """The golden comparison can fail: one flag off and the outputs differ by far more than 1e-5."""
    path, g = checkpoint(kind, tmp_path)
    wrong = dict(g["options"])
    if "heads" in wrong:
        wrong["heads"] = 1
    else:
        wrong["head_channels"] = 32
    with torch.no_grad():
        assert (DiffusionDenoiser(0.25, path, **wrong).unet(g["x_t"], g["unet_t"]) - g["unet_out"]).abs().max() > 1e-3
        if kind == "improved":  # 4000 steps: without the rescale the UNet sees t, not t / 4
            plain = DiffusionDenoiser(0.25, path, **(g["options"] | {"rescale_timesteps": False}))
            noisy = (g["x"].double() + plain.level * g["eps"].double()).float()
            assert (plain(noisy) - (g["pred_xstart"] + 1) / 2).abs().max() > 1e-3


@pytest.mark.parametrize(("kind", "preset", "settings"), [
    ("improved", "CIFAR-10 32x32", {"schedule": "cosine", "steps": 4000, "rescale_timesteps": True}),
    ("guided", "ImageNet 256x256", {"schedule": "linear", "steps": 1000, "rescale_timesteps": False}),
])  # fmt: skip
def test_the_released_architectures_are_read_and_recognised(kind, preset, settings):
    shapes = golden(kind)["released_shapes"]  # the authors' UNetModel at the released flags, names and shapes
    state = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    config, found, name = adm_files.settle(adm_files.infer_config(state, "x.pt"), {}, "x.pt")
    assert preset in name and found == settings
    with torch.device("meta"):
        built = AdmUNet(config)
    assert {k: tuple(v.shape) for k, v in built.state_dict().items()} == shapes
    params = sum(math.prod(s) for s in shapes.values())
    assert params == {"improved": 52_546_438, "guided": 552_814_086}[kind]


def test_an_unknown_checkpoint_needs_the_flags_it_was_trained_with(tmp_path):
    path, _ = checkpoint("improved", tmp_path)
    with pytest.raises(ValueError, match="give --denoiser-option schedule, steps, rescale_timesteps, heads"):
        DiffusionDenoiser(0.25, path)
    with pytest.raises(ValueError, match="schedule must be one of linear, cosine; got 'sqrt'"):
        DiffusionDenoiser(0.25, path, schedule="sqrt", steps=10, rescale_timesteps=False, heads=2)
    with pytest.raises(ValueError, match="64|32 channels do not split into 3 heads"):
        DiffusionDenoiser(0.25, path, schedule="linear", steps=1000, rescale_timesteps=False, heads=3)


def test_other_state_dicts_are_refused_in_one_line(tmp_path):
    path, _ = checkpoint("improved", tmp_path)
    state = torch.load(path, weights_only=True)
    torch.save(state | {"label_emb.weight": torch.zeros(10, 128)}, tmp_path / "cond.pt")
    with pytest.raises(ValueError, match="class-conditional"):
        DiffusionDenoiser(0.25, str(tmp_path / "cond.pt"))
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an improved-/guided-diffusion UNetModel state dict"):
        DiffusionDenoiser(0.25, str(tmp_path / "other.pt"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        DiffusionDenoiser(0.25, str(tmp_path / "missing.pt"))


def test_t_star_is_never_zero():
    abar = adm_files.alphas_cumprod("linear", 1000)  # noise level at t = 0 is 0.01 in [-1, 1] units
    assert timestep_for(abar, 0.001) == 1  # the authors' loop starts at t = 1
    assert timestep_for(abar, 0.25) == 145 and timestep_for(adm_files.alphas_cumprod("cosine", 4000), 0.25) == 1158


def test_noise_authors_draws_at_the_diffusions_level_and_certifies_with_sigma(tmp_path):
    path, g = checkpoint("improved", tmp_path)
    exact = DiffusionDenoiser(0.25, path, **g["options"])
    authors = DiffusionDenoiser(0.25, path, noise="authors", **g["options"])
    noise = GaussianNoise(0.25)
    assert smoothing_noise(noise, DenoisedClassifier(torch.nn.Flatten(), exact)) is noise
    drawn = smoothing_noise(noise, DenoisedClassifier(torch.nn.Flatten(), authors))
    level = math.sqrt((1 - authors.alpha_bar) / authors.alpha_bar) / 2
    assert isinstance(drawn, AuthorsNoise) and drawn.level == level and 0.25 < level < 0.25 * 1.006
    x = torch.zeros(2, 3, 8, 8)
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(drawn.sample(x, generator=a), GaussianNoise(level).sample(x, generator=b))
    p = torch.tensor([0.6, 0.99])
    assert torch.equal(drawn.radius(p), noise.radius(p))  # the radii of sigma, not of sigma_t*
    assert authors.settings()["noise"] == "authors" and authors.settings()["smoothing_sigma"] == level
    assert exact.settings()["smoothing_sigma"] == 0.25
    with pytest.raises(ValueError, match="noise must be one of exact, authors"):
        DiffusionDenoiser(0.25, path, noise="q_sample", **g["options"])


def test_certify_with_an_authors_checkpoint_records_it(capsys, tmp_path):
    """The CLI end to end: a 3-channel .pt in front of a classifier on 8 x 8 images, noise=authors in the sidecar."""
    path, g = checkpoint("improved", tmp_path)
    images = torch.rand(3, 3, 8, 8)
    torch.save({"x": images, "y": torch.tensor([0, 1, 2])}, tmp_path / "data.pt")
    options = [f"{k}={json.dumps(v)}" for k, v in g["options"].items()] + ["noise=authors"]
    argv = ["certify", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs",
            '{"width": 4, "in_channels": 3, "num_classes": 3}', "--random-weights", "--data", str(tmp_path / "data.pt"),
            "--sigma", "0.25", "--n0", "4", "--n", "8", "--alpha", "0.1", "--batch-size", "6", "--limit", "2",
            "--denoiser", f"diffusion:{path}", *[a for o in options for a in ("--denoiser-option", o)],
            "--out", str(tmp_path / "c.tsv"), *FAST]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    capsys.readouterr()
    sidecar = json.loads((tmp_path / "c.tsv.json").read_text())
    denoiser = sidecar["denoiser"]
    assert denoiser["format"] == "adm" and denoiser["noise"] == "authors" and denoiser["t"] == 1158
    assert denoiser["smoothing_sigma"] > 0.25 and denoiser["options"]["noise"] == "authors"
    assert denoiser["sha256"] == rs_plugins.results.provenance.weights_sha256(
        DiffusionDenoiser(0.25, path, **g["options"])
    )
    assert len((tmp_path / "c.tsv").read_text().splitlines()) == 3


def test_the_denoised_path_runs_with_certifys_execution_options(tmp_path):
    """bf16 autocast and channels_last, as --precision/--channels-last run the composed model (the UNet included)."""
    from rs_plugins.certify.execution import Execution, prepare_model

    path, g = checkpoint("guided", tmp_path)
    model = DenoisedClassifier(torch.nn.Flatten(), DiffusionDenoiser(0.25, path, **g["options"]))
    noisy = (g["x"].double() + 0.25 * g["eps"].double()).float()
    with torch.no_grad():
        exact = model(noisy)
        fast = prepare_model(model, "cpu", Execution(precision="bf16", channels_last=True))(noisy)
    assert fast.shape == exact.shape and (fast.float() - exact).abs().max() < 0.1  # bf16: ~3 significant digits
    assert not torch.equal(fast.float(), exact)  # it did run in bf16


def test_report_puts_the_papers_row_beside_a_run(capsys, tmp_path, monkeypatch):
    """A run whose diffusion checkpoint is the released CIFAR-10 one (here: the tiny fixture standing in for it)."""
    path, g = checkpoint("improved", tmp_path)
    name = next(n for n in adm_files.PRESETS if "CIFAR-10" in n)
    tiny = adm_files.infer_config(torch.load(path, weights_only=True), path)
    monkeypatch.setitem(adm_files.PRESETS, name, (replace(tiny, num_heads=2), adm_files.PRESETS[name][1]))
    torch.save({"x": torch.rand(2, 3, 8, 8), "y": torch.tensor([0, 1])}, tmp_path / "data.pt")
    argv = ["certify", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs",
            '{"width": 4, "in_channels": 3, "num_classes": 10}', "--random-weights", "--data",
            str(tmp_path / "data.pt"),
            "--sigma", "0.25", "--n0", "2", "--n", "8", "--alpha", "0.1", "--denoiser", f"diffusion:{path}",
            "--out", str(tmp_path / "c.tsv"), *FAST]  # fmt: skip
    assert cli.main(argv) == 0
    assert json.loads((tmp_path / "c.tsv.json").read_text())["denoiser"]["preset"] == name
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "c.tsv")]) == 0
    out = capsys.readouterr().out
    assert "published: Carlini et al., ICLR 2023" in out and "CIFAR-10: r=0.25: 79.3, r=1: 36.4" in out
    assert "this run (2 images): r=0.25: " in out and "the paper's classifier is --model hf:aaraki/" in out
