"""Provenance: every results sidecar and summary records what reproduces the rows and what describes the run;
a resumed run must match the first kind and may differ in the second; ``report`` shows both."""

from __future__ import annotations

import json
import platform

import pytest
import torch

import rs_plugins
from rs_plugins import cli
from rs_plugins.nets import SmallCNN
from rs_plugins.results.provenance import weights_sha256

MODEL = ["--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 4}']


def certify(tmp_path, checkpoint, *extra):
    out = tmp_path / "c.tsv"
    argv = [*MODEL, "--checkpoint", checkpoint, "--data", "digits", "--sigma", "0.25", "--n", "20", "--n0", "10"]
    argv += ["--out", out, "--device", "cpu", "--no-progress", *extra]
    return cli.main(["certify", *map(str, argv)]), out


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save(SmallCNN(width=4).state_dict(), path)
    return path


def test_weights_hash_identifies_the_weights_not_the_format():
    torch.manual_seed(0)
    model = SmallCNN(width=4)
    same = SmallCNN(width=4)
    same.load_state_dict(model.state_dict())
    assert weights_sha256(model) == weights_sha256(same) == weights_sha256(torch.jit.script(model))
    with torch.no_grad():
        same.head.bias[0] += 1e-6
    assert weights_sha256(same) != weights_sha256(model)


def test_sidecar_and_summary_record_settings_and_provenance(tmp_path, checkpoint, capsys):
    code, out = certify(tmp_path, checkpoint, "--limit", "2", "--every", "3", "--summary", tmp_path / "s.json")
    assert code == 0, capsys.readouterr().err
    sidecar = json.loads((tmp_path / "c.tsv.json").read_text())
    torch.manual_seed(0)
    assert sidecar["model_sha256"] == weights_sha256(SmallCNN(width=4))
    for key, value in {"sigma": 0.25, "noise": "gaussian", "certifier": "cohen", "n0": 10, "n": 20, "alpha": 0.001,
                       "seed": 0, "data": "digits", "split": "test"}.items():  # fmt: skip
        assert sidecar[key] == value, key
    prov = sidecar["provenance"]
    assert prov["rs_plugins"] == rs_plugins.__version__ and prov["torch"] == torch.__version__
    assert prov["python"] == platform.python_version() and prov["device"] == "cpu" and prov["precision"] == "fp32"
    assert prov["subset"] == {"start": 0, "max": None, "every": 3, "limit": 2} and prov["images"] == 2
    assert prov["num_classes"] == 10 and prov["date"].startswith("20")
    assert prov["noise"]["name"] == "gaussian" and prov["noise"]["distribution"] == "rs-plugins"
    assert prov["certifier"]["version"] == rs_plugins.__version__
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["run"] == sidecar and summary["images"] == 2


def test_resume_ignores_provenance_but_refuses_other_weights(tmp_path, checkpoint, capsys):
    assert certify(tmp_path, checkpoint, "--limit", "1")[0] == 0
    sidecar_path = tmp_path / "c.tsv.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["provenance"] |= {"torch": "1.0", "date": "2020-01-01T00:00:00+00:00", "hostname": "elsewhere"}
    sidecar_path.write_text(json.dumps(sidecar))
    assert certify(tmp_path, checkpoint, "--limit", "2")[0] == 0  # another torch, date, host: resumes
    resumed = json.loads(sidecar_path.read_text())
    assert resumed["provenance"]["torch"] == "1.0" and len(resumed["resumed"]) == 1
    assert resumed["resumed"][0]["images"] == 2
    capsys.readouterr()

    torch.manual_seed(1)
    torch.save(SmallCNN(width=4).state_dict(), checkpoint)  # retrained in place: the rows would mix
    code, _ = certify(tmp_path, checkpoint, "--limit", "3")
    assert code == 2 and "model_sha256=" in capsys.readouterr().err


def test_report_shows_the_provenance_of_each_file(tmp_path, checkpoint, capsys):
    assert certify(tmp_path, checkpoint, "--limit", "1")[0] == 0
    foreign = tmp_path / "paper.tsv"
    foreign.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.3\t1\t0:00:01\n")
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "c.tsv"), str(foreign)]) == 0
    out = capsys.readouterr().out
    assert "model: ['rs_plugins.nets:SmallCNN'] checkpoint=" in out and "(10 classes)" in out
    assert "smoothing: gaussian sigma=0.25 {} [rs-plugins" in out and "n0=10 n=20 alpha=0.001 seed=0" in out
    assert f"run: rs-plugins {rs_plugins.__version__}, torch {torch.__version__}" in out
    assert f"provenance: none ({foreign}.json is missing)" in out
