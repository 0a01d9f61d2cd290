"""Built-in model sources: factories with checkpoints, TorchScript, torch.export, and RobustBench offline."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rs_plugins.errors import MissingDependencyError, SourceError
from rs_plugins.nets import Normalize, SmallCNN
from rs_plugins.sources.models import (
    MODEL_FORMS,
    ExportedModule,
    import_robustbench,
    load_factory,
    load_model,
    load_state_dict_file,
)
from rs_plugins.types import ModelRequest

FACTORY = "rs_plugins.nets:SmallCNN"


@pytest.fixture
def small():
    torch.manual_seed(0)
    return SmallCNN(width=4).eval()


def _same_outputs(a, b, shape=(5, 1, 8, 8)):
    x = torch.rand(shape)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


# -- nets -------------------------------------------------------------------------------------------------


def test_small_cnn_shapes():
    assert SmallCNN()(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert SmallCNN(in_channels=3, num_classes=4, width=8)(torch.rand(3, 3, 32, 32)).shape == (3, 4)
    assert SmallCNN()(torch.rand(1, 1, 2, 2)).shape == (1, 10)


def test_normalize():
    norm = Normalize([0.5, 0.0], [0.5, 2.0])
    out = norm(torch.ones(1, 2, 1, 1))
    assert out.flatten().tolist() == [1.0, 0.5]
    assert set(norm.state_dict()) == {"mean", "std"}
    with pytest.raises(ValueError, match="one value per channel"):
        Normalize([0.5], [0.5, 0.5])


# -- factories and checkpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict_ddp"])
def test_factory_with_checkpoint(tmp_path, small, wrap):
    sd = small.state_dict()
    saved = {
        "bare": sd,
        "model": {"model": sd, "epoch": 3},  # our training checkpoints
        "state_dict_ddp": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    }[wrap]
    path = str(tmp_path / "ckpt.pt")
    torch.save(saved, path)
    assert set(load_state_dict_file(path)) == set(sd)
    model = load_model(ModelRequest(FACTORY, checkpoint=path, kwargs={"width": 4}))
    assert isinstance(model, SmallCNN) and not model.training
    assert _same_outputs(model, small)


def test_factory_without_checkpoint_uses_kwargs():
    model = load_model(ModelRequest(FACTORY, kwargs={"in_channels": 3, "num_classes": 4}, factory_weights=True))
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 4)


def test_checkpoint_mismatch_is_a_source_error(tmp_path, small):
    path = str(tmp_path / "ckpt.pt")
    torch.save(small.state_dict(), path)
    match = r"--checkpoint .* does not fit --model rs_plugins.nets:SmallCNN --model-kwargs {.width.: 8}: \d+ shapes"
    with pytest.raises(SourceError, match=match):
        load_model(ModelRequest(FACTORY, checkpoint=path, kwargs={"width": 8}))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--checkpoint: no such file"):
        load_state_dict_file(str(tmp_path / "nope.pt"))
    path = str(tmp_path / "list.pt")
    torch.save([torch.zeros(1)], path)
    with pytest.raises(SourceError, match="--checkpoint: .* holds a list; expected a state dict"):
        load_state_dict_file(path)


@pytest.mark.parametrize(
    ("target", "kwargs", "match"),
    [
        ("rs_plugins.nets", {}, "not of the form package.module:factory"),
        ("rs_plugins.nets:Small-CNN", {}, "not of the form package.module:factory"),
        ("no_such_module_xyz:make", {}, "cannot import module 'no_such_module_xyz'"),
        ("rs_plugins.nets:LargeCNN", {}, "module 'rs_plugins.nets' has no attribute 'LargeCNN'"),
        (FACTORY, {"depth": 3}, r"--model-kwargs depth: not an option of .*accepted: in_channels, num_classes, width"),
        ("collections:OrderedDict", {}, "returned a OrderedDict; expected a torch.nn.Module"),
    ],
)
def test_factory_errors(target, kwargs, match):
    with pytest.raises(SourceError, match=match):
        load_factory(target, checkpoint=None, kwargs=kwargs)


def test_unknown_forms_are_left_to_other_plugins(tmp_path):
    assert load_model(ModelRequest("hub:org/model", checkpoint=str(tmp_path / "x.pt"))) is None
    assert load_model(ModelRequest("./weights.pt")) is None
    assert "package.module:factory" in MODEL_FORMS


# -- TorchScript and torch.export -------------------------------------------------------------------------


def test_torchscript_round_trip(tmp_path, small):
    path = str(tmp_path / "m.ts")
    torch.jit.save(torch.jit.script(small), path)
    model = load_model(ModelRequest(f"torchscript:{path}", trust=True))
    assert not model.training and _same_outputs(model, small)
    with pytest.raises(FileNotFoundError, match="--model torchscript:.*no such file"):
        load_model(ModelRequest(f"torchscript:{tmp_path / 'nope.ts'}", trust=True))


def test_exported_program_round_trip(tmp_path, small):
    path = str(tmp_path / "m.pt2")
    program = torch.export.export(small, (torch.rand(4, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)
    model = load_model(ModelRequest(path, trust=True))
    assert isinstance(model, ExportedModule) and not model.training
    assert model.train() is model and model.training
    model.eval()  # the exported graph itself would raise NotImplementedError here
    assert _same_outputs(model, small, (3, 1, 8, 8)) and _same_outputs(model, small, (7, 1, 8, 8))


@pytest.mark.parametrize("name", ["m.ts", "m.pt2"])
def test_unreadable_model_files(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not a model")
    source = f"torchscript:{path}" if name.endswith(".ts") else str(path)
    with pytest.raises(SourceError, match=f"--model {source}: cannot load it"):
        load_model(ModelRequest(source, trust=True))


@pytest.mark.parametrize("source", ["torchscript:m.ts", "m.pt2", "robustbench:Standard"])
def test_checkpoint_and_kwargs_only_for_factories(source):
    with pytest.raises(SourceError, match="--checkpoint is only used with --model package.module:factory"):
        load_model(ModelRequest(source, checkpoint="ckpt.pt"))
    with pytest.raises(SourceError, match="--model-kwargs is only used with"):
        load_model(ModelRequest(source, kwargs={"width": 4}))


# -- RobustBench ------------------------------------------------------------------------------------------

# Run in a fresh interpreter, as importing torch and timm takes seconds: first robustbench's own import, for
# which any pkg_resources will do (it is called only to load ImageNet); then, without pkg_resources, ours.
ROBUSTBENCH_SCRIPT = """
import os, sys, types
sys.modules['pkg_resources'] = types.ModuleType('pkg_resources')
try:
    import robustbench.utils
except ModuleNotFoundError as err:
    print('plain:', type(err).__name__, err.name)
for name in [m for m in sys.modules if m.split('.')[0] in ('robustbench', 'pkg_resources')]:
    del sys.modules[name]  # what the failed import left behind
sys.modules['pkg_resources'] = None  # as with setuptools >= 81
from rs_plugins.sources.models import import_robustbench
print('ours:', import_robustbench().__name__)
import robustbench.loaders
shim = robustbench.loaders.pkg_resources
path = shim.resource_filename('robustbench.loaders', 'helper_files/imagenet_test_image_ids.txt')
print('shim:', os.path.isfile(path), sys.modules.get('pkg_resources') is None)
"""


@pytest.fixture(scope="module")
def robustbench_script():
    pytest.importorskip("pyautoattack")
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", ROBUSTBENCH_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_robustbench_plain_import_fails_but_ours_works(robustbench_script):
    assert robustbench_script[:2] == ["plain: ModuleNotFoundError autoattack", "ours: robustbench.utils"]


def test_robustbench_without_pkg_resources(robustbench_script):
    # the shim serves robustbench but is not left in sys.modules, where other code would take it for the real one
    assert robustbench_script[1:] == ["ours: robustbench.utils", "shim: True True"]


def test_robustbench_with_pkg_resources_in_process(robustbench_zoo):
    loaders = sys.modules["robustbench.loaders"]
    assert callable(loaders.pkg_resources.resource_filename)
    shim_left = "pkg_resources" in sys.modules and not hasattr(sys.modules["pkg_resources"], "working_set")
    assert not shim_left  # the real pkg_resources or none, never our shim


@pytest.fixture(scope="module")
def robustbench_zoo():
    pytest.importorskip("pyautoattack")
    from rs_plugins.sources.models import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset.cifar_10][ThreatModel.L2]


def test_robustbench_offline_load(tmp_path, robustbench_zoo):
    name = "Sehwag2021Proxy_R18"  # a ResNet-18: 11M parameters, 45 MB
    torch.manual_seed(0)
    original = robustbench_zoo[name]["model"]().eval()
    folder = tmp_path / "cifar10" / "L2"
    folder.mkdir(parents=True)
    # the layout of checkpoints trained with DataParallel, which robustbench unwraps itself
    torch.save({"state_dict": {f"module.{k}": v for k, v in original.state_dict().items()}}, folder / f"{name}.pt")
    request = ModelRequest(f"robustbench:{name}", model_dir=str(tmp_path), dataset="cifar10", threat_model="L2")
    model = load_model(request)
    assert model is not original and not model.training
    assert _same_outputs(model, original, (2, 3, 32, 32))


def test_robustbench_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'rs-plugins\[robustbench\]'"):
        import_robustbench()


@pytest.mark.usefixtures("robustbench_zoo")
@pytest.mark.parametrize(
    ("source", "options", "match"),
    [
        ("robustbench:Sehwag2021Proxy_R18", {}, r"no checkpoint at .*L2/Sehwag2021Proxy_R18\.pt, .*cannot download"),
        ("robustbench:Sehwag2021Proxy_R19", {}, r"no cifar10 L2 model named 'Sehwag2021Proxy_R19'\. Did you mean Sehw"),
        ("robustbench:Standard", {"dataset": "mnist"}, "--dataset must be one of cifar10, cifar100, imagenet"),
        ("robustbench:Standard", {"threat_model": "L1"}, "--threat-model must be one of Linf, L2, corruptions"),
    ],
)
def test_robustbench_errors(tmp_path, source, options, match):
    with pytest.raises(SourceError, match=match):
        load_model(ModelRequest(source, model_dir=str(tmp_path), **options))
