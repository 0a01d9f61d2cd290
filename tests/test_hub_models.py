"""``--model timm:NAME`` and ``--model hf:OWNER/NAME``: hub classifiers with their own preprocessing inside.

Every model here is a tiny randomly initialised one of the real classes, built and saved by the test (timm's
``test_vit``; a one-layer transformers ``ViTForImageClassification``); offline loads read a Hugging Face cache the
test lays out. Nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from rs_plugins import cli
from rs_plugins.errors import SourceError
from rs_plugins.results.provenance import weights_sha256
from rs_plugins.sources import fetch, hubs

FAST = ["--device", "cpu", "--no-progress"]


def images(tmp_path, size: int = 16, count: int = 3):
    torch.manual_seed(0)
    x = torch.rand(count, 3, size, size)
    torch.save({"x": x, "y": torch.arange(count) % 3}, tmp_path / "data.pt")
    return x


def certify(capsys, tmp_path, *model_args: str) -> dict:
    argv = ["certify", *model_args, "--data", str(tmp_path / "data.pt"), "--sigma", "0.25", "--n0", "4", "--n", "8",
            "--alpha", "0.1", "--batch-size", "12", "--limit", "2", "--out", str(tmp_path / "c.tsv"),
            *FAST]  # fmt: skip
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert len((tmp_path / "c.tsv").read_text().splitlines()) == 3
    return json.loads((tmp_path / "c.tsv.json").read_text())


def test_offline_is_one_decision(monkeypatch):
    for name in fetch.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not hubs.offline()
    for name in fetch.OFFLINE_VARIABLES:
        monkeypatch.setenv(name, "1")
        assert hubs.offline()
        monkeypatch.setenv(name, "0")
        assert not hubs.offline()


class TestTimm:
    timm = pytest.importorskip("timm")

    def model(self, **kwargs):
        torch.manual_seed(1)
        return self.timm.create_model("test_vit", pretrained=False, **kwargs).eval()

    def test_preprocessing_is_the_models_own(self, tmp_path):
        net = self.model(num_classes=3)
        torch.save(net.state_dict(), tmp_path / "w.pt")
        wrapped = hubs.load_timm("test_vit", checkpoint=str(tmp_path / "w.pt"), kwargs={"num_classes": 3})
        cfg = net.pretrained_cfg
        assert wrapped.size == tuple(cfg["input_size"][1:]) == (160, 160) and wrapped.interpolation == "bicubic"
        x = torch.rand(2, 3, 32, 32)
        by_hand = F.interpolate(x, size=(160, 160), mode="bicubic", antialias=True, align_corners=False)
        by_hand = (by_hand - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        with torch.no_grad():
            assert torch.allclose(wrapped(x), net(by_hand), atol=1e-5)
            assert not torch.allclose(wrapped(x), net(F.interpolate(x, size=(160, 160))), atol=1e-3)

    def test_certify_with_a_local_checkpoint(self, capsys, tmp_path):
        images(tmp_path)
        torch.save(self.model(num_classes=3).state_dict(), tmp_path / "w.pt")
        sidecar = certify(capsys, tmp_path, "--model", "timm:test_vit", "--model-kwargs", '{"num_classes": 3}',
                          "--checkpoint", str(tmp_path / "w.pt"))  # fmt: skip
        wrapped = hubs.load_timm("test_vit", checkpoint=str(tmp_path / "w.pt"), kwargs={"num_classes": 3})
        assert sidecar["model"] == ["timm:test_vit"] and sidecar["checkpoint"] == str(tmp_path / "w.pt")
        assert sidecar["model_sha256"] == weights_sha256(wrapped)  # the weights and the normalisation as run
        assert "mean" in wrapped.state_dict() and wrapped.preprocessing()["size"] == (160, 160)

    def test_offline_reads_the_hugging_face_cache_and_never_the_network(self, tmp_path, monkeypatch):
        from huggingface_hub import constants
        from safetensors.torch import save_file

        net = self.model()
        hub_id = net.pretrained_cfg["hf_hub_id"]  # timm/test_vit.r160_in1k
        snapshot = tmp_path / f"models--{hub_id.replace('/', '--')}" / "snapshots" / "0123abcd"
        snapshot.mkdir(parents=True)
        save_file(net.state_dict(), snapshot / "model.safetensors")
        (tmp_path / f"models--{hub_id.replace('/', '--')}" / "refs").mkdir()
        (tmp_path / f"models--{hub_id.replace('/', '--')}" / "refs" / "main").write_text("0123abcd")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
        monkeypatch.setenv("RS_PLUGINS_OFFLINE", "1")
        loaded = hubs.load_timm("test_vit")
        for key, value in net.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[key], value)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
        with pytest.raises(SourceError, match="offline .* not in the Hugging Face cache"):
            hubs.load_timm("test_vit")

    def test_an_unknown_name_is_refused_with_close_ones(self):
        with pytest.raises(SourceError, match="has no model 'test_vitt'. Did you mean test_vit"):
            hubs.load_timm("test_vitt")


class TestTransformers:
    transformers = pytest.importorskip("transformers")

    @pytest.fixture
    def saved(self, tmp_path):
        """A one-layer ViT for 3 classes at 16 x 16 and a bicubic, mean = std = 0.5 image processor, as the DDS
        CIFAR-10 classifier's (224 x 224 there)."""
        from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

        torch.manual_seed(2)
        config = ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, num_labels=3)  # fmt: skip
        net = ViTForImageClassification(config).eval()
        folder = tmp_path / "vit"
        net.save_pretrained(folder)
        ViTImageProcessor(size={"height": 16, "width": 16}, resample=3, image_mean=[0.5] * 3,
                          image_std=[0.5] * 3).save_pretrained(folder)  # fmt: skip
        return folder, net

    def test_preprocessing_is_the_processors(self, saved):
        from transformers import ViTImageProcessor

        folder, net = saved
        wrapped = hubs.load_hf(str(folder))
        assert wrapped.size == (16, 16) and wrapped.interpolation == "bicubic"
        x = torch.rand(2, 3, 16, 16)
        processor = ViTImageProcessor.from_pretrained(folder)
        pixels = processor(images=list(x.numpy()), do_resize=False, do_rescale=False, return_tensors="pt",
                           input_data_format="channels_first").pixel_values  # fmt: skip
        with torch.no_grad():
            assert torch.allclose(wrapped(x), net(pixel_values=pixels).logits, atol=1e-5)
            small = torch.rand(2, 3, 8, 8)
            up = F.interpolate(small, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
            assert torch.allclose(wrapped(small), net(pixel_values=(up - 0.5) / 0.5).logits, atol=1e-5)

    def test_certify_with_a_saved_model_folder(self, capsys, tmp_path, saved):
        images(tmp_path, size=8)
        certify(capsys, tmp_path, "--model", f"hf:{saved[0]}")

    def test_offline_never_reaches_the_hub(self, monkeypatch):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(SourceError, match="no image-classification model .* in the local cache"):
            hubs.load_hf("someone/not-cached-anywhere")

    def test_remote_code_needs_trust(self, saved):
        with pytest.raises(SourceError, match="trust_remote_code"):
            hubs.load_hub_model(f"hf:{saved[0]}", checkpoint=None, kwargs={"trust_remote_code": True})
        with pytest.raises(SourceError, match="--checkpoint is not used with --model hf:"):
            hubs.load_hub_model(f"hf:{saved[0]}", checkpoint="w.pt", kwargs={})
