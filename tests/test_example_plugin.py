"""The example third-party plugin in docs/examples/rs-example-plugin: installing it is all it takes.

The first tests pip-install the folder (offline, into a temporary directory) and ask a fresh
``python -m rs_plugins plugins --json`` what it sees. The rest import ``rs_example`` from the docs folder and
check its components in-process.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rs_plugins
from rs_plugins import cli
from rs_plugins.builtin import gaussian as gaussian_module
from rs_plugins.builtin import sources as sources_module
from rs_plugins.results.files import read_results
from rs_plugins.testing import check_mixer, check_noise, tiny_classifier

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "docs" / "examples" / "rs-example-plugin"
DIST = "rs-example-plugin"
OURS = {("mixer", "ensemble"), ("noise", "example_uniform"), ("loss", "needs_missing")}


# -- pip install makes the components appear ------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The plugin installed by pip into its own directory, once per module."""
    tmp = tmp_path_factory.mktemp("example-plugin")
    # Build from a copy: pip builds a local project in place and would leave build/ and *.egg-info in the repo.
    src = shutil.copytree(PLUGIN_DIR, tmp / "src", ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    target = tmp / "site"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run([*command, "--target", str(target), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    assert (target / "rs_example.py").is_file()
    return target


def _env(pythonpath: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RS_PLUGINS_DISABLE", "RS_PLUGINS_TRACE")}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH", "")]))
    return env | extra


def _plugins_json(env: dict[str, str], cwd: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "rs_plugins", "plugins", "--json"], env=env, cwd=cwd, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _ours(listing: dict) -> dict[tuple[str, str], dict]:
    return {(c["kind"], c["name"]): c for c in listing["components"] if (c["kind"], c["name"]) in OURS}


def test_pip_install_makes_the_components_appear(site, tmp_path):
    listing = _plugins_json(_env(site), tmp_path)
    plugin = next(p for p in listing["plugins"] if p["name"] == DIST)
    assert (plugin["distribution"], plugin["version"], plugin["status"]) == (DIST, "0.1.0", "loaded")
    assert plugin["hooks"] == ["rs_mixers", "rs_noise_samplers", "rs_training_losses"]
    found = _ours(listing)
    assert set(found) == OURS
    assert all(c["plugin"] == DIST for c in found.values())
    assert found["mixer", "ensemble"]["available"] and found["noise", "example_uniform"]["available"]
    missing = found["loss", "needs_missing"]
    assert missing["available"] is False
    assert "rs-example-plugin[fancy]" in missing["install"]
    assert "arXiv:2002.08118" in found["noise", "example_uniform"]["reference"]


def test_without_the_install_the_components_are_absent(site, tmp_path):
    try:
        importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        pytest.skip(f"{DIST} is installed in this environment, so there is no 'before' to compare with")
    listing = _plugins_json(_env(), tmp_path)
    assert DIST not in {p["name"] for p in listing["plugins"]}
    assert _ours(listing) == {}
    assert {"gaussian", "sources"} <= {p["name"] for p in listing["plugins"]}  # the built-ins still load


def test_disabled_plugin_is_listed_without_components(site, tmp_path):
    listing = _plugins_json(_env(site, RS_PLUGINS_DISABLE=DIST), tmp_path)
    plugin = next(p for p in listing["plugins"] if p["name"] == DIST)
    assert plugin["status"] == "disabled"
    assert plugin["components"] == [] and plugin["hooks"] == []
    assert _ours(listing) == {}


@pytest.fixture
def fresh_import(monkeypatch):
    """``rs_example`` is imported afresh in the test (from the docs folder or the pip target) and forgotten after."""
    monkeypatch.delitem(sys.modules, "rs_example", raising=False)
    yield
    sys.modules.pop("rs_example", None)


def test_installed_plugin_names_its_extra_when_a_dependency_is_missing(site, monkeypatch, fresh_import):
    """In-process, through entry points: the install hint names the distribution and its extra."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("RS_PLUGINS_DISABLE", raising=False)
    host = rs_plugins.Host()
    with pytest.raises(rs_plugins.MissingDependencyError) as err:
        host.loss("needs_missing")
    assert "rs_example_missing_dependency" in str(err.value)
    assert "pip install 'rs-example-plugin[fancy]'" in str(err.value)


# -- the components, in-process ---------------------------------------------------------------------------------


@pytest.fixture
def rs_example(monkeypatch, fresh_import):
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    import rs_example

    return rs_example


@pytest.fixture
def host(rs_example) -> rs_plugins.Host:
    return rs_plugins.Host(entry_points=False, plugins=[gaussian_module, rs_example])


def _members(num_classes: int = 3) -> list[torch.nn.Module]:
    return [tiny_classifier(num_classes=num_classes, seed=seed).eval() for seed in range(3)]


def test_hosts_lists_the_components(host):
    assert host.names("mixer") == ["ensemble"]
    assert host.names("noise") == ["example_uniform", "gaussian"]
    assert host.component("loss", "needs_missing").missing == ("rs_example_missing_dependency",)


def test_ensemble_passes_the_mixer_contract(host):
    check_mixer(host.mixer("ensemble", _members()))
    check_mixer(host.mixer("ensemble", _members(), weights=[1, 2, 3]))


@pytest.mark.parametrize("weights", [None, [3.0, 1.0, 0.5]])
def test_ensemble_is_the_averaged_softmax_vote(host, weights):
    members = _members()
    mixed = host.mixer("ensemble", members, weights=weights)
    x = torch.rand(16, 1, 8, 8)
    w = torch.tensor(weights or [1.0, 1.0, 1.0])
    with torch.no_grad():
        expected = sum(wi * m(x).softmax(-1) for wi, m in zip(w, members)) / w.sum()  # (B, K), computed directly
        out = mixed(x)
    torch.testing.assert_close(out.exp(), expected)
    assert torch.equal(out.argmax(1), expected.argmax(1))


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0], "weights must be 3"),
        ([1.0, 0.0, 1.0], "weights"),
        ([1.0, -1.0, 1.0], "weights"),
        ([1, math.nan, 1], "weights"),
        ("2,1", "weights"),
        (2.0, "weights"),
    ],
)
def test_ensemble_rejects_bad_weights(rs_example, host, weights, message):
    with pytest.raises(ValueError, match=message):
        rs_example.SoftmaxEnsemble(_members(), weights=weights)
    with pytest.raises((ValueError, rs_plugins.PluginBuildError), match="weights"):
        host.mixer("ensemble", _members(), weights=weights)


def test_ensemble_needs_a_classifier(rs_example):
    with pytest.raises(ValueError, match="base_classifiers"):
        rs_example.SoftmaxEnsemble([])


def test_uniform_noise_passes_the_noise_contract(host):
    for sigma in (0.12, 0.5, 1.0):
        check_noise(host.noise("example_uniform", sigma=sigma))


def test_uniform_noise_has_std_sigma_and_stays_in_its_cube(host):
    sigma = 0.25
    noise = host.noise("example_uniform", sigma=sigma)
    x = torch.full((64, 3, 32, 32), 0.5, dtype=torch.float64)
    delta = noise.sample(x, generator=torch.Generator().manual_seed(1)) - x  # 196,608 draws
    assert abs(float(delta.std()) / sigma - 1) < 0.01
    assert float(delta.abs().max()) <= math.sqrt(3) * sigma
    assert float(delta.abs().max()) > 0.99 * math.sqrt(3) * sigma


def test_uniform_radius_is_yangs_l1_certificate(host):
    noise = host.noise("example_uniform", sigma=0.5)  # lambda = sqrt(3) / 2
    assert noise.norm == "l1"
    radii = noise.radius(torch.tensor([0.2, 0.5, 0.75, 0.9]))
    # 2 lambda (p - 1/2) by hand: 0 and 0 at or below 1/2; sqrt(3)/2 * 1/2 = 0.4330127; sqrt(3) * 0.4 = 0.6928203.
    torch.testing.assert_close(
        radii, torch.tensor([0.0, 0.0, 0.4330127018922193, 0.6928203230275509], dtype=torch.float64)
    )


def test_cohen_certifies_uniform_noise_with_its_l1_radius(host):
    """The certifier takes the radius from the noise, so a constant classifier gets 2 lambda (p_lower - 1/2)."""

    class AlwaysZero(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.flatten(1).sum(1) * 0 + 1, x.flatten(1).sum(1) * 0], dim=1)

    noise = host.noise("example_uniform", sigma=0.5)
    certs = host.certifier("cohen").certify(
        AlwaysZero(), torch.rand(2, 1, 4, 4), noise, n0=10, n=500, alpha=0.01, batch_size=250
    )
    for cert in certs:
        assert cert.prediction == 0
        assert cert.radius == pytest.approx(2 * math.sqrt(3) * 0.5 * (cert.p_lower - 0.5))


def test_needs_missing_is_unavailable_and_says_how_to_install(host):
    (entry,) = [c for p in host.describe() if p["name"] == "rs_example" for c in p["components"] if c["kind"] == "loss"]
    assert entry["name"] == "needs_missing" and entry["available"] is False
    with pytest.raises(rs_plugins.MissingDependencyError, match="pip install") as err:
        host.loss("needs_missing")
    assert "rs_example_missing_dependency" in str(err.value)


def test_hooks_work_without_a_host(rs_example):
    """Registry hooks yield plain specs, so a plugin can be tested with no host at all."""
    (mixer,) = rs_example.rs_mixers()
    (noise,) = rs_example.rs_noise_samplers()
    assert (mixer.name, noise.name) == ("ensemble", "example_uniform")
    assert isinstance(noise.build(sigma=0.5), rs_plugins.NoiseSampler)


# -- end to end through the CLI ---------------------------------------------------------------------------------


def test_cli_certifies_an_ensemble_with_uniform_noise(rs_example, monkeypatch, tmp_path, capsys):
    plugins = [gaussian_module, sources_module, rs_example]  # what the CLI's Host() sees
    monkeypatch.setattr(cli.shared, "Host", functools.partial(rs_plugins.Host, entry_points=False, plugins=plugins))
    models = []
    for seed in range(2):
        path = tmp_path / f"m{seed}.pt"
        torch.jit.script(tiny_classifier(num_classes=10, seed=seed).eval()).save(str(path))
        models += ["--model", f"torchscript:{path}"]
    out = tmp_path / "ensemble.tsv"
    argv = [
        "certify", *models, "--mixer", "ensemble", "--mixer-option", "weights=[2,1]",
        "--noise", "example_uniform", "--sigma", "0.25", "--data", "digits", "--limit", "2",
        "--n0", "10", "--n", "200", "--alpha", "0.01", "--batch-size", "100",
        "--device", "cpu", "--no-progress", "--out", str(out), "--trust-model-file",
    ]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert len(read_results(out)) == 2

    assert cli.main(["ensemble_" if arg == "ensemble" else arg for arg in argv]) == 2
    assert "Did you mean 'ensemble'?" in capsys.readouterr().err
