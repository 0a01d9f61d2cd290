"""Certification in reduced precision and channels_last: still valid certificates, of the model as run.

The closed form of a linear base classifier under Gaussian noise (see test_smoothing.py) gives the exact radius
d; run in bf16 or fp16, the classifier is that hyperplane up to rounding, so Cohen's radius must still not
exceed d by more than the rounding can move the boundary, and must approach it.
"""

import copy
import json

import pytest
import torch
from torch import nn

from rs_plugins import ABSTAIN, cohen_certify
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.execution import (
    Execution,
    RunAs,
    auto_batch_size,
    batch_size_arg,
    fold_batchnorm,
    prepare_model,
    resolve_precision,
)
from rs_plugins.cli import build_parser, main
from rs_plugins.errors import ResultsFileError
from rs_plugins.nets import CifarResNet
from rs_plugins.testing import LinearClassifier, tiny_classifier

SIGMA = 0.5


def float_linear(model: LinearClassifier) -> nn.Module:
    """``LinearClassifier``'s hyperplane as an fp32 ``nn.Linear``, which autocast runs in bf16/fp16 (the
    double-precision original it leaves alone)."""
    layer = nn.Linear(len(model.w), 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([-model.w, model.w]).float())
        layer.bias.copy_(torch.tensor([-model.b, model.b]))
    return nn.Sequential(nn.Flatten(), layer)


@pytest.fixture
def linear():
    w = torch.tensor([1.0, -1.0] * 8).reshape(1, 4, 4)
    centre = torch.full((1, 4, 4), 0.5)
    exact = LinearClassifier(w, b=-float((w * centre).sum()))
    unit = w / w.norm()
    return float_linear(exact), exact, lambda d: (centre + d * unit)[None]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("d", [0.2, 0.6])
def test_reduced_precision_certificates_match_the_closed_form(linear, precision, d):
    model, exact, at = linear
    seen = []
    model[1].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    prepared = prepare_model(model, "cpu", Execution(precision, channels_last=True))
    x = at(d)
    assert float(exact.distance(x)) == pytest.approx(d)
    cert = cohen_certify(
        prepared,
        x,
        GaussianNoise(SIGMA),
        n=100_000,
        alpha=0.001,
        batch_size=10_000,
        generator=[torch.Generator().manual_seed(0)],
    )[0]
    assert seen and set(seen) == {PRECISION_DTYPES[precision]}  # the layer really ran in reduced precision
    rounding = 0.01  # inputs rounded to 8 (bf16) or 11 (fp16) mantissa bits move the boundary by less than this
    assert cert.prediction == 1
    assert cert.radius <= d + rounding
    assert d - cert.radius < 0.05 * SIGMA + rounding  # the confidence-bound gap at n = 100 000


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def test_reduced_precision_abstains_on_the_boundary(linear):
    model, _, at = linear
    prepared = prepare_model(model, "cpu", Execution("bf16"))
    generators = [torch.Generator().manual_seed(i) for i in range(20)]
    certs = cohen_certify(
        prepared, at(0.0).expand(20, 1, 4, 4), GaussianNoise(SIGMA), n=2_000, batch_size=2_000, generator=generators
    )
    assert sum(c.prediction != ABSTAIN for c in certs) <= 1  # alpha = 0.001 per image


def test_wrapper_returns_fp32_logits_in_channels_last_and_keeps_gradients():
    model = tiny_classifier(channels=3)
    formats = []
    model[0].register_forward_pre_hook(
        lambda m, a: formats.append(a[0].is_contiguous(memory_format=torch.channels_last))
    )
    prepared = prepare_model(model, "cpu", Execution("bf16", channels_last=True))
    assert not prepared.training  # certify's eval_mode restores the wrapper's mode, so it must be eval too
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    logits = prepared(x)
    assert logits.dtype == torch.float32 and formats == [True]
    logits.sum().backward()  # attacks run through the wrapper
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_fp16_failure_on_the_cpu_is_named():
    class NoHalf(nn.Module):
        def forward(self, x):
            if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16:
                raise RuntimeError("\"some_kernel\" not implemented for 'Half'")
            return x.flatten(1)[:, :2]

    with pytest.raises(ValueError, match="--precision fp16 .*CPU.*use --precision bf16"):
        prepare_model(NoHalf(), "cpu", Execution("fp16"))(torch.rand(2, 1, 2, 2))


def test_compile_compiles_a_folded_copy_inside_the_wrapper_with_frozen_weights(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append((m, kw)) or nn.Sequential(m))  # slow
    model = CifarResNet(8)
    prepared = prepare_model(model, "cpu", Execution(compile=True, compile_mode="max-autotune"))
    ((inner, options),) = compiled
    assert isinstance(prepared, RunAs) and prepared.model[0] is inner and inner is not model
    assert options["options"]["freezing"] and options["options"]["max_autotune"]
    assert prepared.folded == 9 and not any(isinstance(m, nn.BatchNorm2d) for m in inner.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 9  # the caller's model is left as it was
    prepare_model(model, "cpu", Execution(compile=True))
    assert compiled[-1][1] == {"options": {"freezing": True}}


def trained_like(model: nn.Module, steps: int = 2) -> nn.Module:
    """A few SGD steps in train mode (running statistics move), then BatchNorm parameters and statistics set
    far from their initial values, as training leaves them; returned in eval mode."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        x = torch.rand(16, 3, 32, 32, generator=generator)
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 10, (16,), generator=generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=generator))
                m.bias.copy_(0.1 * torch.randn(c, generator=generator))
                m.running_mean.add_(0.1 * torch.randn(c, generator=generator))
                m.running_var.mul_(0.5 + 1.5 * torch.rand(c, generator=generator))
    return model.eval()


def test_folding_keeps_a_trained_resnet110_to_1e5_in_fp32():
    torch.manual_seed(0)
    model = trained_like(CifarResNet(110))
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == 111  # stem, 2 per block (54 blocks), 2 projection shortcuts
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert expected.abs().max() > 0.1 and expected.std(0).max() > 0.01  # logits that depend on the input
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_folding_leaves_a_batchnorm_whose_convolution_is_read_elsewhere():
    class Branch(nn.Module):  # conv output read twice: folding would change the second reader
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    class Shared(nn.Module):  # one convolution called twice, once before the BatchNorm
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.conv(self.bn(self.conv(x)))

    class Direct(nn.Module):  # the convolution's weight also read directly
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) + nn.functional.conv2d(x, self.conv.weight)

    class Untraceable(nn.Module):  # data-dependent control flow at the top: its parts are traced instead
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2))

        def forward(self, x):
            return self.inner(x) if x.sum() > 0 else -self.inner(x)

    x = torch.rand(2, 1, 6, 6)
    for model, count, shape in ((Branch(), 0, 1), (Shared(), 0, 2), (Direct(), 0, 2), (Untraceable(), 1, 2)):
        model = trained_like_small(model)
        inputs = x.expand(2, shape, 6, 6)
        with torch.no_grad():
            expected = model(inputs)
            assert fold_batchnorm(model) == count
            torch.testing.assert_close(model(inputs), expected, rtol=1e-5, atol=1e-6)


def trained_like_small(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1), m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def test_precision_auto_is_the_fastest_the_device_supports(monkeypatch):
    assert resolve_precision("fp16", "cpu") == "fp16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    for native, expected in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n)
        assert resolve_precision("auto", torch.device("cuda", 0)) == expected


def test_bad_precision_and_batch_size_are_named():
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16, fp16, auto; got 'fp8'"):
        Execution("fp8")
    assert batch_size_arg("auto") == "auto" and batch_size_arg("12") == 12
    for bad in ("0", "-3", "big"):
        with pytest.raises(Exception, match=f"positive integer or auto; got {bad}"):
            batch_size_arg(bad)
    assert auto_batch_size(tiny_classifier(), (1, 8, 8), "cpu", limit=10_000) == 400
    assert auto_batch_size(tiny_classifier(), (1, 8, 8), "cpu", limit=100) == 100


def test_cli_records_the_execution_and_refuses_to_mix_precisions(tmp_path, capsys):
    out = tmp_path / "c.tsv"
    common = [
        "certify",
        "--factory-weights",
        "--model",
        "rs_plugins.nets:SmallCNN",
        "--data",
        "digits",
        "--sigma",
        "0.25",
        "--n",
        "200",
        "--n0",
        "20",
        "--limit",
        "3",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main([*common, "--precision", "bf16", "--channels-last", "--batch-size", "auto"]) == 0
    assert "--batch-size auto: 200" in capsys.readouterr().out
    settings = json.loads((tmp_path / "c.tsv.json").read_text())
    assert (settings["precision"], settings["channels_last"], settings["compile"]) == ("bf16", True, False)
    assert len(out.read_text().splitlines()) == 4
    args = build_parser().parse_args([*common, "--precision", "fp32", "--channels-last"])
    with pytest.raises(ResultsFileError, match="precision=bf16.*precision=fp32"):
        args.func(args)  # main() would print the error; the command itself raises it


def test_attacks_accept_channels_last_batches():
    """`train --loss smoothmix --channels-last` feeds NHWC batches to torchattacks, which reshapes with .view."""
    from rs_plugins.train.losses import draw_deltas
    from rs_plugins.train.smoothed_pgd import smoothed_pgd

    model = tiny_classifier(channels=3).to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    deltas = draw_deltas(GaussianNoise(0.25), x, 2)
    adv = smoothed_pgd(model, x, torch.arange(4) % 3, deltas, epsilon=0.5, step_size=0.25, steps=2, extra="smoothmix")
    assert adv.shape == x.shape and 0 < float((adv - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5


def test_cli_records_the_precision_auto_resolved_to(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # as if the CPU had native bf16
    out = tmp_path / "a.tsv"
    argv = ["certify", "--model", "rs_plugins.nets:SmallCNN", "--factory-weights", "--data", "digits",
            "--sigma", "0.25"]
    argv += ["--n", "300"]
    argv += ["--n0", "20", "--limit", "2", "--device", "cpu", "--no-progress", "--certifier", "sequential"]
    torch.manual_seed(0)  # the same random weights both times
    assert main([*argv, "--precision", "auto", "--channels-last", "--out", str(out)]) == 0
    sidecar = json.loads((tmp_path / "a.tsv.json").read_text())
    assert sidecar["precision"] == "bf16" and sidecar["provenance"]["precision_requested"] == "auto"
    assert sidecar["provenance"]["batchnorm_folded"] == 0 and "compile_mode" not in sidecar
    args = build_parser().parse_args([*argv, "--precision", "bf16", "--channels-last", "--out", str(out)])
    torch.manual_seed(0)
    assert args.func(args) == 0  # auto on this device is bf16: the same model as run, so the file resumes
