"""``--model robustbench:NAME`` without preparing anything: the checkpoint is fetched by RobustBench's own Google
Drive id from a web server on 127.0.0.1 imitating Drive (its virus-scan confirmation, its quota page), checked
with weights_only=True, and loaded by RobustBench's ``load_model``."""

import io
import json
import sys
from pathlib import Path

import pytest
import torch

from rs_plugins.cli import main
from rs_plugins.errors import SourceError
from rs_plugins.sources import fetch
from rs_plugins.sources.models import load_model
from rs_plugins.types import ModelRequest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from local_server import Drive  # noqa: E402


@pytest.fixture(scope="module")
def linf_zoo():
    pytest.importorskip("pyautoattack")
    from rs_plugins.sources.models import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]


def saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_certify_robustbench_carmon2019_downloads_it_on_first_use(local_server, linf_zoo, tmp_path, capsys):
    name = "Carmon2019Unlabeled"  # WRN-28-10 trained with DataParallel: {'state_dict': {'module.*': ...}}
    torch.manual_seed(0)
    original = linf_zoo[name]["model"]().eval()
    checkpoint = saved({"state_dict": {f"module.{k}": v for k, v in original.state_dict().items()}})
    local_server.routes["/uc"] = Drive({linf_zoo[name]["gdrive_id"]: checkpoint})
    torch.save({"x": torch.rand(1, 3, 32, 32), "y": torch.tensor([3])}, tmp_path / "one.pt")
    out = tmp_path / "c.tsv"
    code = main(["certify", "--model", f"robustbench:{name}", "--threat-model", "Linf", "--model-dir",
                 str(tmp_path / "models"), "--data", str(tmp_path / "one.pt"), "--sigma", "0.25", "--n0", "2",
                 "--n", "4", "--alpha", "0.5", "--batch-size", "4", "--device", "cpu", "--no-progress",
                 "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    file = tmp_path / "models" / "cifar10" / "Linf" / f"{name}.pt"
    assert file.read_bytes() == checkpoint
    sidecar = json.loads(out.with_name("c.tsv.json").read_text())
    downloads = sidecar["provenance"]["downloads"]
    assert downloads[0]["sha256"] == fetch.sha256_of(file) and downloads[0]["downloaded"]
    model = load_model(ModelRequest(f"robustbench:{name}", model_dir=str(tmp_path / "models"), threat_model="Linf"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))


def test_robustbench_quota_page_is_reported_as_such(local_server, linf_zoo, tmp_path):
    name = "Carmon2019Unlabeled"
    local_server.routes["/uc"] = Drive({}, quota={linf_zoo[name]["gdrive_id"]})
    request = ModelRequest(f"robustbench:{name}", model_dir=str(tmp_path), threat_model="Linf")
    with pytest.raises(fetch.DriveQuotaError, match="quota page"):
        load_model(request)
    assert not (tmp_path / "cifar10" / "Linf" / f"{name}.pt").exists()


def test_a_downloaded_checkpoint_that_needs_unpickling_is_refused_without_trust(local_server, linf_zoo, tmp_path):
    name = "Carmon2019Unlabeled"
    payload = saved({"state_dict": {}, "args": __import__("argparse").Namespace(lr=0.1)})
    local_server.routes["/uc"] = Drive({linf_zoo[name]["gdrive_id"]: payload})
    request = ModelRequest(f"robustbench:{name}", model_dir=str(tmp_path), threat_model="Linf")
    with pytest.raises(SourceError, match=r"argparse\.Namespace.*--trust-model-file"):
        load_model(request)


def test_offline_keeps_todays_message(local_server, linf_zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("RS_PLUGINS_OFFLINE", "1")
    with pytest.raises(SourceError, match=r"this environment cannot download it .*robustbench\.utils\.load_model"):
        load_model(ModelRequest("robustbench:Carmon2019Unlabeled", model_dir=str(tmp_path), threat_model="Linf"))
    assert local_server.requests == []
