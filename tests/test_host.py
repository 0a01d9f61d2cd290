"""Plugin discovery and the component registry: every error branch, with the message a user would see."""

import logging
import textwrap

import pytest
import torch

import rs_plugins
from rs_plugins import (
    ComponentConflictError,
    Host,
    IncompatibleComponentsError,
    MissingDependencyError,
    NoiseSpec,
    PluginBuildError,
    SourceError,
    UnknownComponentError,
)
from rs_plugins.builtin import gaussian
from rs_plugins.cli import main
from rs_plugins.types import CertifierSpec, DataRequest, LossSpec


class Plugin:
    """A fixture plugin contributing the noise specs it is given."""

    def __init__(self, name, *specs):
        self.name = name
        self.specs = specs

    @rs_plugins.hookimpl
    def rs_noise_samplers(self):
        yield from self.specs


def noise_spec(name, build=gaussian.GaussianNoise, **kwargs):
    return NoiseSpec(name, build, summary=f"{name} noise", **kwargs)


def test_builtins_arrive_through_entry_points_of_rs_plugins():
    host = Host()
    loaded = {r.name: r for r in host.records if r.distribution == "rs-plugins"}
    assert loaded["gaussian"].status == "loaded"
    assert loaded["gaussian"].hooks == ("rs_certifiers", "rs_noise_samplers", "rs_training_losses")
    assert loaded["sources"].hooks == ("rs_load_data", "rs_load_model")
    assert "gaussian" in host.names("noise") and "cohen" in host.names("certifier")
    assert host.component("noise", "gaussian").plugin.label == f"rs-plugins {rs_plugins.__version__} (gaussian)"


def test_without_entry_points_only_given_plugins_are_seen():
    assert Host(entry_points=False).names("noise") == []
    assert Host(entry_points=False, plugins=[gaussian]).names("noise") == ["gaussian"]


def test_unknown_name_suggests_the_nearest_and_lists_all():
    host = Host(entry_points=False, plugins=[gaussian, Plugin("extra", noise_spec("laplace"))])
    with pytest.raises(
        UnknownComponentError, match=r"no noise sampler named 'guassian'\. Did you mean 'gaussian'\?"
    ) as err:
        host.noise("guassian", sigma=0.5)
    assert "Available: gaussian, laplace" in str(err.value)
    with pytest.raises(UnknownComponentError, match="no certifier named 'zzz'.\n  Available: cohen"):
        host.certifier("zzz")
    with pytest.raises(ValueError, match="kind must be one of noise, loss, mixer, certifier"):
        host.names("attack")


def test_duplicate_names_are_an_error_naming_both_providers():
    host = Host(entry_points=False, plugins=[gaussian, Plugin("rs-fastnoise", noise_spec("gaussian"))])
    with pytest.raises(
        ComponentConflictError, match="noise sampler 'gaussian' is provided by more than one plugin"
    ) as err:
        host.noise("gaussian", sigma=0.5)
    message = str(err.value)
    assert "- rs_plugins.builtin.gaussian" in message and "- rs-fastnoise" in message
    assert "RS_PLUGINS_DISABLE=" in message
    assert host.certifier("cohen")  # the rest of the host still works


def test_build_failures_name_the_plugin_and_the_cause():
    host = Host(entry_points=False, plugins=[gaussian])
    with pytest.raises(
        PluginBuildError, match=r"noise sampler 'gaussian' from plugin rs_plugins.builtin.gaussian"
    ) as err:
        host.noise("gaussian", sigma=-1)
    assert "ValueError: sigma must be a finite number > 0; got -1" in str(err.value)
    with pytest.raises(ValueError, match=r"has no option 'eta2' \(--noise-option\); accepted: sigma"):
        host.noise("gaussian", sigma=0.5, eta2=1)


def test_missing_dependency_lists_component_as_unavailable_with_pip_command():
    spec = noise_spec("fancy", requires=("rs_plugins_no_such_module",), extra="fancy")
    host = Host(entry_points=False, plugins=[Plugin("fancyplug", spec)])
    (component,) = host.components("noise")
    assert component.missing == ("rs_plugins_no_such_module",)
    assert component.install_hint == "pip install rs_plugins_no_such_module"  # no distribution to name an extra of
    with pytest.raises(MissingDependencyError, match="needs rs_plugins_no_such_module, which is not installed"):
        host.noise("fancy", sigma=0.5)
    listed = host.describe()[0]["components"][0]
    assert listed["available"] is False and listed["install"] == component.install_hint


class Broken:
    name = "broken"

    @rs_plugins.hookimpl
    def rs_noise_samplers(self):
        raise RuntimeError("boom")

    @rs_plugins.hookimpl
    def rs_training_losses(self):
        yield "not a spec"
        yield LossSpec("Bad-Name", object)


def test_a_plugin_whose_hooks_misbehave_is_reported_and_the_host_continues():
    host = Host(entry_points=False, plugins=[gaussian, Broken()])
    assert host.names("noise") == ["gaussian"] and host.names("loss") == ["gaussian"]
    problems = " | ".join(host.problems["broken"])
    assert "rs_noise_samplers() raised RuntimeError: boom" in problems
    assert "yielded str named '?'; expected a LossSpec" in problems
    assert "LossSpec named 'Bad-Name'" in problems
    described = {p["name"]: p for p in host.describe()}
    assert "RuntimeError: boom" in described["broken"]["error"]


class Misspelled:
    name = "misspelled"

    @rs_plugins.hookimpl
    def rs_noise_sampler(self):  # missing the final "s"
        yield noise_spec("never")


class ExtraArgument:
    name = "extra-argument"

    @rs_plugins.hookimpl
    def rs_noise_samplers(self, config):
        yield noise_spec("never")


def test_invalid_plugins_fail_to_register_with_the_reason():
    with pytest.warns(UserWarning, match="was not loaded") as caught:
        host = Host(entry_points=False, plugins=[gaussian, Misspelled(), ExtraArgument(), Plugin])
    records = {r.name: r for r in host.records}
    assert records["misspelled"].status == "failed" and "unknown hook 'rs_noise_sampler'" in records["misspelled"].error
    assert records["extra-argument"].status == "failed" and "config" in records["extra-argument"].error
    assert records["Plugin"].status == "failed" and "Have you forgotten the `()`?" in records["Plugin"].error
    assert len(caught) == 3
    assert host.names("noise") == ["gaussian"]


def test_incompatible_certifier_and_noise_fail_before_sampling():
    class Feng:
        name = "feng"

        @rs_plugins.hookimpl
        def rs_certifiers(self):
            yield CertifierSpec("gauss_only", object, noises=("gaussian",))

    host = Host(entry_points=False, plugins=[gaussian, Feng(), Plugin("other", noise_spec("laplace"))])
    host.check_compatible("gauss_only", "gaussian")
    host.check_compatible("cohen", "laplace")  # no restriction declared
    with pytest.raises(
        IncompatibleComponentsError, match=r"certifier 'gauss_only' supports noise \['gaussian'\]; got 'laplace'"
    ):
        host.check_compatible("gauss_only", "laplace")


def test_source_hooks_plugins_run_before_builtins_and_failures_name_the_plugin():
    class Hub:
        name = "hub"

        @rs_plugins.hookimpl
        def rs_load_model(self, request):
            if request.source.startswith("hub:"):
                return torch.nn.Identity()
            if request.source.startswith("broken:"):
                raise RuntimeError("hub offline")

    from rs_plugins.builtin import sources

    host = Host(entry_points=False, plugins=[sources, Hub()])
    assert isinstance(host.load_model("hub:anything"), torch.nn.Identity)
    assert len(host.load_data(DataRequest("digits", "test"))) == 360
    with pytest.raises(PluginBuildError, match="plugin hub failed on --model 'broken:x': RuntimeError: hub offline"):
        host.load_model("broken:x")
    with pytest.raises(SourceError, match=r"--model 'nonsense' is not a form .*accepted: zoo:<name>, robustbench"):
        host.load_model("nonsense")
    with pytest.raises(SourceError, match=r"--data 'nonsense' is not a form .*accepted: digits"):
        host.load_data("nonsense")


def write_distribution(root, dist, entry_name, module, source):
    """A fake installed distribution: a dist-info folder with an entry point, plus its module."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[rs_plugins]\n{entry_name} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


GOOD_PLUGIN = """
    import rs_plugins
    from rs_plugins.builtin.gaussian import GaussianNoise

    @rs_plugins.hookimpl
    def rs_noise_samplers():
        yield rs_plugins.NoiseSpec("thirdparty", GaussianNoise, summary="third-party noise")
"""


def test_entry_point_plugins_broken_disabled_and_colliding(tmp_path, monkeypatch, capsys):
    """Holds whatever else is installed (issue 21): a user's own plugin, broken or not, changes no assertion."""
    users_own = GOOD_PLUGIN.replace('"thirdparty"', '"users_own"')
    write_distribution(tmp_path, "rs-users-own", "rs-users-own", "rs_users_own_mod", users_own)
    write_distribution(tmp_path, "rs-users-broken", "rs-users-broken", "rs_users_broken_mod", "raise ImportError\n")
    write_distribution(tmp_path, "rs-good", "rs-good", "rs_good_mod", GOOD_PLUGIN)
    write_distribution(tmp_path, "rs-broken", "rs-broken", "rs_broken_mod", "raise ImportError('needs libfoo')\n")
    write_distribution(tmp_path, "rs-copycat", "rs-good", "rs_copycat_mod", GOOD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("RS_PLUGINS_DISABLE", raising=False)

    with pytest.warns(UserWarning, match="was not loaded") as caught:
        host = Host()
    messages = " ".join(str(w.message) for w in caught)
    assert "plugin rs-broken 0.1 (rs-broken) was not loaded: import failed: ImportError: needs libfoo" in messages
    assert "plugin rs-good 0.1 (rs-good) was not loaded: entry-point name 'rs-good' is already used" in messages
    records = {r.distribution: r for r in host.records}
    assert records["rs-broken"].status == "failed"
    # Same entry-point name: the first distribution in name order wins, the other is reported, never silently lost.
    assert records["rs-copycat"].status == "loaded"
    assert records["rs-good"].status == "failed" and "already used by another plugin" in records["rs-good"].error
    assert host.component("noise", "thirdparty").plugin.distribution == "rs-copycat"
    assert "gaussian" in host.names("noise")  # the built-ins still load

    with pytest.warns(UserWarning, match="was not loaded"):
        assert main(["plugins"]) == 0
    listing = capsys.readouterr().out
    assert "rs-broken  [rs-broken 0.1]  failed\n    error: import failed: ImportError: needs libfoo" in listing
    assert "thirdparty" in listing and "gaussian" in listing  # the listing goes on past the failure

    monkeypatch.setenv("RS_PLUGINS_DISABLE", "rs-broken, rs-copycat")
    host = Host()
    records = {r.distribution: r for r in host.records}
    assert records["rs-broken"].status == records["rs-copycat"].status == "disabled"
    assert host.component("noise", "thirdparty").plugin.distribution == "rs-good"
    noises = Host(blocked=["rs-good"]).names("noise")
    assert {"gaussian", "laplace", "uniform", "users_own"} <= set(noises) and "thirdparty" not in noises


def test_trace_variable_logs_hook_calls(monkeypatch, caplog):
    monkeypatch.setenv("RS_PLUGINS_TRACE", "1")
    with caplog.at_level(logging.DEBUG, logger="rs_plugins"):
        Host(entry_points=False, plugins=[gaussian]).pm.hook.rs_noise_samplers()
    assert "rs_noise_samplers" in caplog.text
