"""The zoo of the papers' released models: the authors' layouts load into networks that compute what theirs do, and
``zoo certify`` downloads (from a web server on 127.0.0.1 serving synthetic archives in the authors' layouts),
verifies, loads, certifies with the authors' protocol, and prints the run beside the published row."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rs_plugins
from rs_plugins.cli import main
from rs_plugins.errors import SourceError
from rs_plugins.host import Host
from rs_plugins.nets import CifarResNet, Normalize
from rs_plugins.results.files import Row
from rs_plugins.sources import fetch, locations, zoo
from rs_plugins.sources.zoo import layouts
from rs_plugins.sources.zoo.compare import accuracy_interval, compare
from rs_plugins.train.denoiser import DnCNN
from rs_plugins.types import ModelRequest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from authors_layouts import bearpaw_state, cohen_checkpoint, legacy_bytes, tar_bytes  # noqa: E402
from local_server import Drive, Page  # noqa: E402
from served_data import serve_cifar10  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "zoo.md"
NAME = "cohen-cifar10-resnet110-0.25"
MEMBER = "models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar"

# The authors' ResNet (locuslab/smoothing code/archs/cifar_resnet.py, depth 8) run once on bearpaw_state(8, seed=0)
# and on torch.rand(2, 3, 32, 32) from a generator seeded with 1, in eval mode: its logits.
AUTHORS_LOGITS = torch.tensor([
    [1.6568478345870972, 0.9707584977149963, -3.625462770462036, -2.919022560119629, 2.225860118865967,
     -3.301905632019043, 4.471745014190674, -2.1242048740386963, 1.1148167848587036, -0.7655704617500305],
    [1.4682743549346924, 0.7861624360084534, -3.321531295776367, -2.6938672065734863, 2.304598331451416,
     -3.0526602268218994, 4.225337028503418, -2.1916134357452393, 0.9953141808509827, -0.7003801465034485],
])  # fmt: skip


def test_the_authors_resnet_weights_compute_the_authors_logits_in_ours():
    state, depth, classes = layouts.from_bearpaw(bearpaw_state(8, seed=0))
    net = CifarResNet(depth, classes)
    net.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), AUTHORS_LOGITS, atol=1e-5)


@pytest.mark.parametrize("data_parallel", [False, True], ids=["cifar-1.", "imagenet-1.module."])
def test_cohens_sequential_layout_loads_behind_the_entrys_normalisation(data_parallel):
    entry = zoo.entry(NAME)
    state = bearpaw_state(110, seed=2)
    model = layouts.build(entry, cohen_checkpoint(state, data_parallel=data_parallel), "--model zoo:x", "f")
    assert isinstance(model[0], Normalize)
    assert torch.allclose(model[0].std.flatten(), torch.tensor(entry.normalization[2]))
    x = torch.rand(3, 3, 32, 32)
    reference = CifarResNet(110, 10)
    reference.load_state_dict(layouts.from_bearpaw(state)[0])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in entry.normalization[1:])
    with torch.no_grad():
        assert torch.allclose(model(x), reference.eval()((x - mean) / std), atol=1e-5)


def test_salmans_input_center_layer_subtracts_the_mean_only_and_macer_normalises_nothing():
    smoothadv = zoo.entry("smoothadv-cifar10-resnet110-0.25")
    model = layouts.build(smoothadv, cohen_checkpoint(bearpaw_state(110)), "x", "f")
    assert torch.equal(model[0].std.flatten(), torch.ones(3))
    assert torch.allclose(model[0].mean.flatten(), torch.tensor(smoothadv.normalization[1]))
    macer_checkpoint = {"net": bearpaw_state(110), "epoch": 440}
    macer = layouts.build(zoo.entry("macer-cifar10-resnet110-0.25"), macer_checkpoint, "x", "f")
    assert isinstance(macer, CifarResNet)


def test_an_imagenet_resnet50_in_dataparallel_loads():
    pytest.importorskip("torchvision")
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    entry = zoo.entry("cohen-imagenet-resnet50-0.5")
    model = layouts.build(entry, cohen_checkpoint(net.state_dict(), arch="resnet50", data_parallel=True), "x", "f")
    assert all(torch.equal(a, b) for a, b in zip(model[1].state_dict().values(), net.state_dict().values()))


def test_a_checkpoint_of_another_layout_is_refused_naming_the_entry():
    entry = zoo.entry(NAME)
    with pytest.raises(SourceError, match=r"--model zoo:x: f holds keys \['net'\]; expected the authors' checkpoint"):
        layouts.build(entry, {"net": {}}, "--model zoo:x", "f")
    wrong = cohen_checkpoint(bearpaw_state(20))
    wrong["state_dict"]["1.extra.weight"] = torch.zeros(1)
    with pytest.raises(SourceError, match="does not fit|unexpected"):
        layouts.build(entry, wrong, "--model zoo:x", "f")


def test_the_table_is_consistent_and_every_archive_is_data_in_locations():
    names = [e.name for e in zoo.ENTRIES]
    assert len(names) == len(set(names)) and NAME in names
    for e in zoo.ENTRIES:
        assert re.fullmatch(r"[a-z0-9.-]+", e.name), e.name
        assert e.archive is None or e.archive in locations.ARCHIVES, e.name
        assert e.kind != "denoiser" or e.classifier is None or e.classifier in names or ":" in e.classifier
        if e.published:
            radii = list(e.published.accuracy)
            assert radii == sorted(radii) and radii[0] == 0
            values = list(e.published.accuracy.values())
            assert values == sorted(values, reverse=True), e.name  # certified accuracy falls with the radius
            assert e.sigma is None or radii[-1] <= 3.82 * e.sigma  # N = 100 000 certifies at most 3.81 sigma
    assert locations.ARCHIVES["cohen2019"]["drive"] == "1h_TpbXm5haY5f-l4--IKylmdz6tvPoR4"


def test_docs_zoo_md_holds_the_table(capsys):
    assert main(["zoo", "--format", "markdown"]) == 0
    table = capsys.readouterr().out
    assert table in DOCS.read_text(), "docs/zoo.md is stale: paste `rs-plugins zoo --format markdown` into it"


def test_the_comparison_interval_is_clopper_pearson():
    statsmodels = pytest.importorskip("statsmodels.stats.proportion")
    for k, n in ((0, 10), (3, 10), (37, 100), (100, 100)):
        expected = statsmodels.proportion_confint(k, n, alpha=0.05, method="beta")
        assert accuracy_interval(k, n) == pytest.approx(tuple(float(v) for v in expected), abs=1e-12)
    rows = [Row(i, 0, 0 if i < 6 else 1, 0.3 if i < 3 else 0.1, int(i < 6), 0.0) for i in range(10)]
    found = compare(rows, {"accuracy": {0.0: 60.0, 0.25: 90.0}, "acr": 0.15, "source": "s", "images": 10})
    assert [c["measured"] for c in found[:2]] == pytest.approx([60.0, 30.0])
    assert found[0]["within"] and not found[1]["within"] and found[2]["measured"] == pytest.approx(0.12)


# -- end to end, against the local server -------------------------------------------------------------------


@pytest.fixture
def cohen_archive(local_server, monkeypatch):
    """Cohen et al.'s models archive on a Google-Drive-like server: their layout (a tar of models/...)."""
    checkpoints = {MEMBER: legacy_bytes(cohen_checkpoint(bearpaw_state(110, seed=3))),
                   "models/cifar10/resnet110/noise_0.50/checkpoint.pth.tar":
                       legacy_bytes(cohen_checkpoint(bearpaw_state(110, seed=4)))}  # fmt: skip
    archive = tar_bytes(checkpoints)
    local_server.routes["/uc"] = Drive({locations.ARCHIVES["cohen2019"]["drive"]: archive})
    serve_cifar10(local_server, monkeypatch)
    return local_server, archive, checkpoints


def test_zoo_certify_downloads_verifies_loads_certifies_and_compares(cohen_archive, tmp_path, capsys):
    server, archive, checkpoints = cohen_archive
    out = tmp_path / "z.tsv"
    code = main(["zoo", "certify", NAME, "--every", "3", "--n0", "8", "--n", "64", "--batch-size", "64",
                 "--device", "cpu", "--no-progress", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "n0=100, N=100,000, alpha=0.001, every 20th image" in printed  # the authors' protocol, then the overrides
    assert f"--model zoo:{NAME} --data cifar10 --sigma 0.25 --n0 8 --n 64 --alpha 0.001 --start 0 --every 3" in printed
    assert f"SHA-256 {fetch.sha256_of(fetch.home() / 'zoo/archives/cohen2019')}" in printed and "unverified" in printed
    table = printed[printed.index("beside the published row"):]
    assert re.search(r"radius\s+0\.00\s+0\.25\s+0\.50\s+0\.75\s+ACR", table)
    assert re.search(r"published %\s+74\.8\s+60\.0\s+42\.8\s+26\.6\s+0\.429", table)
    assert "this run %" in table and "difference" in table and "in 95% interval" in table
    assert "this run: 2 images" in table
    sidecar = json.loads(Path(f"{out}.json").read_text())
    (entry,) = sidecar["provenance"]["zoo"]
    assert entry["entry"] == NAME and entry["published"]["acr"] == 0.429 and entry["protocol"]["every"] == 20
    member = fetch.home() / "zoo" / NAME / "checkpoint.pth.tar"
    assert member.read_bytes() == checkpoints[MEMBER]
    hashes = {f["path"]: f["sha256"] for f in entry["files"]}
    assert hashes[str(member)] == fetch.sha256_of(member) and not any(f.get("verified") for f in entry["files"])
    sibling = fetch.home() / "zoo" / "cohen-cifar10-resnet110-0.5" / "checkpoint.pth.tar"
    assert sibling.is_file()  # the archive is read once for every entry it holds
    asked = len(server.requests)
    assert main(["report", str(out)]) == 0  # report shows the published row beside the run
    assert re.search(r"published %\s+74\.8", capsys.readouterr().out)
    model = Host().load_model(ModelRequest(f"zoo:{NAME}"))
    assert len(server.requests) == asked  # from the cache
    expected = layouts.build(zoo.entry(NAME), cohen_checkpoint(bearpaw_state(110, seed=3)), "x", "f")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), expected(x))


def test_offline_the_cache_serves_and_a_missing_entry_says_so(cohen_archive, monkeypatch):
    server = cohen_archive[0]
    monkeypatch.setenv("RS_PLUGINS_OFFLINE", "1")
    with pytest.raises(SourceError, match=r"is not in the cache and downloads are off \(--offline"):
        Host().load_model(ModelRequest(f"zoo:{NAME}"))
    assert server.requests == []


def test_an_archive_with_the_wrong_checksum_is_refused_and_nothing_is_left(cohen_archive, monkeypatch):
    monkeypatch.setitem(locations.ARCHIVES, "cohen2019", locations.ARCHIVES["cohen2019"] | {"sha256": "0" * 64})
    with pytest.raises(fetch.DownloadError, match="SHA-256 .* expected 0000"):
        Host().load_model(ModelRequest(f"zoo:{NAME}"))
    assert not any(p.is_file() for p in (fetch.home() / "zoo").rglob("*"))


@pytest.mark.parametrize("page", ["quota", "login"])
def test_a_web_page_instead_of_the_archive_is_reported_not_unpickled(local_server, monkeypatch, page):
    drive_id = locations.ARCHIVES["cohen2019"]["drive"]
    if page == "quota":
        local_server.routes["/uc"] = Drive({}, quota={drive_id})
        match = "quota page"
    else:
        local_server.routes["/uc"] = Page("<html><head><title>Sign in - Google Accounts</title></head></html>")
        match = r"returned a web page \(Sign in - Google Accounts\) instead of the file"
    with pytest.raises(fetch.DownloadError, match=match):
        Host().load_model(ModelRequest(f"zoo:{NAME}"))
    assert not any(p.is_file() for p in (fetch.home() / "zoo").rglob("*"))


def test_zoo_dir_points_at_the_unpacked_archive_and_nothing_is_downloaded(local_server, tmp_path, capsys):
    unpacked = tmp_path / "smoothing"
    (unpacked / MEMBER).parent.mkdir(parents=True)
    (unpacked / MEMBER).write_bytes(legacy_bytes(cohen_checkpoint(bearpaw_state(110, seed=5))))
    torch.save({"x": torch.rand(1, 3, 32, 32), "y": torch.tensor([1])}, tmp_path / "one.pt")
    for folder in (unpacked, unpacked / "models"):  # the archive's root, or a folder inside it
        code = main(["certify", "--model", f"zoo:{NAME}", "--zoo-dir", str(folder), "--data", str(tmp_path / "one.pt"),
                     "--sigma", "0.25", "--n0", "2", "--n", "8", "--alpha", "0.5", "--batch-size", "8", "--device",
                     "cpu", "--no-progress", "--out", str(tmp_path / f"{folder.name}.tsv")])  # fmt: skip
        assert code == 0, capsys.readouterr().err
    assert local_server.requests == []


def test_an_entry_published_where_no_program_can_download_it_takes_checkpoint(local_server, tmp_path):
    with pytest.raises(SourceError, match=r"which a program cannot download.*--zoo-dir FOLDER .* or --checkpoint"):
        Host().load_model(ModelRequest("zoo:macer-cifar10-resnet110-0.25"))
    torch.save({"net": bearpaw_state(110), "epoch": 440}, tmp_path / "macer.pth")
    model = Host().load_model(ModelRequest("zoo:macer-cifar10-resnet110-0.25", checkpoint=str(tmp_path / "macer.pth")))
    assert isinstance(model, CifarResNet)
    with pytest.raises(SourceError, match="did not publish this model's weights"):
        Host().load_model(ModelRequest("zoo:consistency-cifar10-resnet110-0.25"))
    with pytest.raises(SourceError, match=r"no such zoo entry; did you mean cohen-cifar10-resnet110-0.5, "):
        Host().load_model(ModelRequest("zoo:cohen-cifar10-resnet110-0.52"))


def test_a_third_party_plugin_adds_an_entry_through_rs_load_model(tmp_path):
    mine = zoo.ZooEntry("mylab-cifar10-0.25", "Me et al., 2025", "cifar10", "cifar_resnet110", 0.25, "cohen",
                        ("standardize", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), None, None)  # fmt: skip

    class MyZoo:
        @rs_plugins.hookimpl
        def rs_load_model(self, request):
            if request.source == f"zoo:{mine.name}":
                return zoo.load_entry(mine, request)

    torch.save(cohen_checkpoint(bearpaw_state(20)), tmp_path / "mine.pth")
    host = Host(plugins=[MyZoo()])
    model = host.load_model(ModelRequest(f"zoo:{mine.name}", checkpoint=str(tmp_path / "mine.pth")))
    assert isinstance(model, nn.Sequential) and torch.equal(model[0].mean.flatten(), torch.full((3,), 0.5))


def test_the_authors_dncnn_certifies_through_dncnn_zoo(local_server, monkeypatch, tmp_path, capsys):
    torch.manual_seed(0)
    dncnn = DnCNN()
    authors = {"arch": "cifar_dncnn", "epoch": 90,
               "state_dict": {k.replace("layers.", "dncnn.", 1): v for k, v in dncnn.state_dict().items()}}  # fmt: skip
    clean = zoo.entry("salman2020-cifar10-resnet110-clean").member
    denoiser = zoo.entry("salman2020-dncnn-cifar10-mse-0.25").member
    archive = tar_bytes({clean: legacy_bytes(cohen_checkpoint(bearpaw_state(110))), denoiser: legacy_bytes(authors)},
                        mode="w:gz")  # fmt: skip
    local_server.routes["/uc"] = Drive({locations.ARCHIVES["salman2020"]["drive"]: archive})
    serve_cifar10(local_server, monkeypatch)
    out = tmp_path / "d.tsv"
    code = main(["zoo", "certify", "salman2020-dncnn-cifar10-mse-0.25", "--every", "5", "--n0", "4", "--n", "16",
                 "--batch-size", "16", "--device", "cpu", "--no-progress", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "--model zoo:salman2020-cifar10-resnet110-clean" in printed and "--denoiser dncnn:zoo:" in printed
    assert "no published row to compare with" in printed
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["denoiser"]["path"] == "zoo:salman2020-dncnn-cifar10-mse-0.25"
    assert [e["entry"] for e in sidecar["provenance"]["zoo"]] == ["salman2020-cifar10-resnet110-clean",
                                                                  "salman2020-dncnn-cifar10-mse-0.25"]


def test_offline_on_the_command_line_holds_for_that_command_only(cohen_archive, tmp_path, capsys):
    server = cohen_archive[0]
    torch.save({"x": torch.rand(1, 3, 32, 32), "y": torch.tensor([1])}, tmp_path / "one.pt")
    argv = ["certify", "--model", f"zoo:{NAME}", "--data", str(tmp_path / "one.pt"), "--sigma", "0.25", "--n0", "2",
            "--n", "8", "--alpha", "0.5", "--batch-size", "8", "--device", "cpu", "--no-progress", "--out"]  # fmt: skip
    assert main([*argv, str(tmp_path / "a.tsv"), "--offline"]) == 2
    assert "downloads are off (--offline" in capsys.readouterr().err and server.requests == []
    assert not fetch.offline()  # the switch was for that command
    assert main([*argv, str(tmp_path / "b.tsv")]) == 0 and server.requests


def test_the_authors_diffusion_checkpoint_loads_through_diffusion_zoo(local_server, monkeypatch):
    from rs_plugins.builtin.denoisers import adm_files
    from rs_plugins.builtin.denoisers.adm import AdmConfig, AdmUNet

    # the released CIFAR-10 checkpoint's preset, pointed at a tiny architecture of the same kind (as the docs test)
    tiny = AdmConfig(3, 32, 6, 1, (2,), (1, 1), True, False, num_heads=4)
    name = next(n for n in adm_files.PRESETS if "CIFAR-10" in n)
    monkeypatch.setitem(adm_files.PRESETS, name, (tiny, adm_files.PRESETS[name][1]))
    buffer = __import__("io").BytesIO()
    torch.save(AdmUNet(tiny).state_dict(), buffer)
    local_server.routes["/cifar10_uncond_50M_500K.pt"] = buffer.getvalue()
    url = local_server.url("/cifar10_uncond_50M_500K.pt")
    archive = locations.ARCHIVES["carlini2023-cifar10"] | {"url": url}
    monkeypatch.setitem(locations.ARCHIVES, "carlini2023-cifar10", archive)
    denoiser = Host().denoiser("diffusion", sigma=0.25, path="zoo:carlini2023-diffusion-cifar10")
    assert denoiser.settings()["preset"] == name
    cached = fetch.home() / "zoo" / "carlini2023-diffusion-cifar10" / "cifar10_uncond_50M_500K.pt"
    assert cached.read_bytes() == buffer.getvalue()
    entry = zoo.entry("carlini2023-diffusion-cifar10")
    args = __import__("argparse").Namespace(sigma=0.5, data=None, n0=None, n=None, alpha=None, start=None, every=None,
                                            batch_size=None, device="cpu", seed=0, out=None, limit=None, max=None,
                                            checkpoint=None, trust_model_file=False, no_progress=True)  # fmt: skip
    from rs_plugins.cli.zoo import certify_argv

    argv = certify_argv(entry, args)
    assert argv[argv.index("--model") + 1] == "hf:aaraki/vit-base-patch16-224-in21k-finetuned-cifar10"
    assert "--denoiser-option" in argv and argv[argv.index("--denoiser-option") + 1] == "classifier_size=224"


def test_zoo_dir_finds_an_entry_published_as_a_single_file(local_server, tmp_path, monkeypatch):
    """An entry downloaded from a URL (the diffusion checkpoints) is found in --zoo-dir under its file name."""
    from rs_plugins.sources.zoo import files

    found = zoo.entry("carlini2023-diffusion-cifar10", kind="denoiser")
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "cifar10_uncond_50M_500K.pt").write_bytes(b"weights")
    monkeypatch.setenv(files.ZOO_DIR_ENV, str(folder))
    assert files.checkpoint(found, what="test") == folder / "cifar10_uncond_50M_500K.pt"
    assert local_server.requests == []
