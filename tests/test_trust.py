"""Files that would run code when loaded: refused without the trust flag, and the refusal happens before any
unpickling. Each crafted file creates a marker file when unpickled; the marker must not appear."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

from rs_plugins import cli
from rs_plugins.errors import SourceError
from rs_plugins.sources.models import load_model, load_state_dict_file
from rs_plugins.types import ModelRequest


class Payload:
    """Unpickling this opens (creates) ``marker`` for writing: a stand-in for any code an attacker wants run."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_pt2(tmp_path):
    """A real torch.export archive whose first weight is re-declared as pickled and replaced by the payload."""
    good, bad, marker = tmp_path / "good.pt2", tmp_path / "crafted.pt2", tmp_path / "marker"
    torch.export.save(torch.export.export(torch.nn.Linear(4, 2), (torch.rand(1, 4),)), good)
    payload = io.BytesIO()
    torch.save(Payload(marker), payload)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as out:
        (config_name,) = [n for n in src.namelist() if n.endswith("model_weights_config.json")]
        config = json.loads(src.read(config_name))
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == config_name:
                data = json.dumps(config).encode()
            elif info.filename.endswith(f"weights/{first['path_name']}"):
                data = payload.getvalue()
            out.writestr(info, data)
    return bad, marker


def test_crafted_pt2_is_refused_without_trust_and_runs_code_with_it(tmp_path):
    path, marker = crafted_pt2(tmp_path)
    with pytest.raises(SourceError, match="weights_only=False, so a crafted file can run code.*--trust-model-file"):
        load_model(ModelRequest(str(path)))
    assert not marker.exists()
    # the control: with trust, torch.export.load does unpickle the payload, so the file really is malicious
    with pytest.raises(SourceError):
        load_model(ModelRequest(str(path), trust=True))
    assert marker.exists()


def test_crafted_pt2_through_the_cli(tmp_path, capsys):
    path, marker = crafted_pt2(tmp_path)
    argv = ["certify", "--model", str(path), "--data", "digits", "--sigma", "0.25", "--out", str(tmp_path / "o.tsv")]
    assert cli.main(argv) == 2
    assert "pass --trust-model-file" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "o.tsv").exists()


def test_checkpoint_with_a_payload_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload(marker)}, path)
    with pytest.raises(SourceError, match=r"holds pickled Python objects \(io.open\)"):
        load_state_dict_file(str(path))
    assert not marker.exists()


def test_training_resume_never_unpickles(tmp_path):
    from rs_plugins.builtin.gaussian import GaussianAugmentation, GaussianNoise
    from rs_plugins.nets import SmallCNN
    from rs_plugins.train.config import TrainConfig
    from rs_plugins.train.loop import train

    marker = tmp_path / "marker"
    torch.save({"epoch": 1, "config": {}, "model": Payload(marker)}, tmp_path / "checkpoint.pt")
    data = torch.utils.data.TensorDataset(torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))
    with pytest.raises(SourceError, match="--checkpoint-dir: .*holds pickled Python objects"):
        train(SmallCNN(width=4), data, GaussianAugmentation(), GaussianNoise(0.25), config=TrainConfig(epochs=1),
              checkpoint_dir=tmp_path, progress=False)  # fmt: skip
    assert not marker.exists()


def test_robustbench_checkpoint_with_a_payload_is_refused_without_trust(tmp_path):
    """robustbench calls torch.load without weights_only; its files are checked with weights_only=True first."""
    pytest.importorskip("pyautoattack")
    name = "Sehwag2021Proxy_R18"
    marker = tmp_path / "marker"
    folder = tmp_path / "cifar10" / "L2"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {}, "extra": Payload(marker)}, folder / f"{name}.pt")
    request = ModelRequest(f"robustbench:{name}", model_dir=str(tmp_path), dataset="cifar10", threat_model="L2")
    with pytest.raises(SourceError, match="holds pickled Python objects.*pass --trust-model-file"):
        load_model(request)
    assert not marker.exists()
    # with trust, robustbench's own torch.load unpickles it (then fails on the empty state dict)
    with pytest.raises(Exception):  # noqa: B017, PT011  (whatever robustbench raises on a wrong state dict)
        load_model(ModelRequest(**{**request.__dict__, "trust": True}))
    assert marker.exists()


def test_torchscript_needs_trust(tmp_path):
    path = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(SourceError, match="a TorchScript archive is a program that runs when the model is called"):
        load_model(ModelRequest(f"torchscript:{path}"))
    assert isinstance(load_model(ModelRequest(f"torchscript:{path}", trust=True)), torch.nn.Module)


def test_npz_object_arrays_are_never_unpickled(tmp_path):
    import numpy as np

    from rs_plugins.sources.data import load_tensor_file

    marker = tmp_path / "marker"
    np.savez(tmp_path / "d.npz", x=np.array([Payload(marker)], dtype=object), y=np.zeros(1, dtype=np.int64))
    with pytest.raises(SourceError, match="allow_pickle=False"):
        load_tensor_file(str(tmp_path / "d.npz"))
    assert not marker.exists()
