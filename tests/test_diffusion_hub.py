"""``--denoiser diffusion:OWNER/NAME``: a Hugging Face hub id, fetched into the hub's cache (the one diffusers'
``from_pretrained`` uses) on first use, read from that cache when offline, and today's message when it is not
there. No network: the cache is laid out here as the hub client writes it, and the download call is observed."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
import huggingface_hub  # noqa: E402
from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

from rs_plugins.builtin.denoisers import diffusion  # noqa: E402
from rs_plugins.builtin.denoisers.diffusion import DiffusionDenoiser  # noqa: E402

REPO = "google/ddpm-cifar10-32"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=4,
    ).eval()  # fmt: skip


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """The hub cache with REPO in it: models--google--ddpm-cifar10-32/{refs/main, snapshots/<commit>/...}."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--google--ddpm-cifar10-32" / "snapshots" / COMMIT
    tiny_unet().save_pretrained(snapshot)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(snapshot)
    (cache / "models--google--ddpm-cifar10-32" / "refs").mkdir()
    (cache / "models--google--ddpm-cifar10-32" / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return snapshot


def test_offline_a_hub_id_loads_from_the_hub_cache(hub_cache):
    denoiser = DiffusionDenoiser(sigma=0.25, path=REPO)  # conftest: downloads are off
    reference = DiffusionDenoiser(sigma=0.25, path=str(hub_cache))
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(denoiser(x), reference(x)) and denoiser.t == 145


def test_offline_a_hub_id_not_in_the_cache_keeps_todays_message(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ValueError) as caught:
        DiffusionDenoiser(sigma=0.25, path=REPO)
    assert str(caught.value) == f"{diffusion.OPTION}: no file or directory {REPO!r}; give {diffusion.LOADS}"


def test_online_a_hub_id_is_fetched_into_the_cache_diffusers_uses(hub_cache, monkeypatch):
    monkeypatch.delenv("RS_PLUGINS_OFFLINE")
    calls = []

    def snapshot_download(repo_id, **options):  # the client, without the network: answers from the cache
        calls.append((repo_id, options))
        return str(hub_cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert DiffusionDenoiser(sigma=0.5, path=REPO).t == 259
    assert calls == [(REPO, {"allow_patterns": diffusion.HUB_FILES, "local_files_only": False})]


def test_a_local_folder_is_never_taken_for_a_hub_id(tmp_path, monkeypatch):
    folder = tmp_path / "owner" / "name"
    tiny_unet().save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("asked the hub"))
    assert DiffusionDenoiser(sigma=0.25, path="owner/name").t == 145
