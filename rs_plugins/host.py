"""The host: collects every plugin's components by name, builds them, and resolves model and data sources.

Callers never touch ``pm.hook``; the host is the typed facade, and the one place where a plugin's failure is
turned into a message that names the plugin.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import (
    ComponentConflictError,
    IncompatibleComponentsError,
    MissingDependencyError,
    PluginBuildError,
    RsPluginError,
    SourceError,
    UnknownComponentError,
)
from .manager import DISABLE_ENV, PluginRecord, make_plugin_manager
from .results.provenance import remember
from .types import NAME_PATTERN, SPEC_TYPES, ComponentSpec, DataRequest, ModelRequest
from .validation import accepted_options

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from .types import Certifier, NoiseSampler, TrainingLoss

REGISTRY_HOOKS = {
    "noise": "rs_noise_samplers",
    "loss": "rs_training_losses",
    "mixer": "rs_mixers",
    "certifier": "rs_certifiers",
    "denoiser": "rs_denoisers",
}
OPTION_FLAGS = {kind: f"--{kind}-option" for kind in REGISTRY_HOOKS}  # how the CLI passes each kind's options
# Errors that already speak to the user; anything else a plugin raises is wrapped with the plugin's name.
USER_ERRORS = (RsPluginError, ValueError, OSError)


def build_options(build: Any) -> dict[str, Any]:
    """The keyword options a factory takes and their defaults ("<required>" if none), for ``rs-plugins plugins``."""
    try:
        parameters = inspect.signature(build).parameters.values()
    except (TypeError, ValueError):
        return {}
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        p.name: ("<required>" if p.default is inspect.Parameter.empty else p.default)
        for p in parameters
        if p.kind in keyword and p.name not in ("self", "base_classifiers")
    }


@dataclass(frozen=True)
class Component:
    """A spec together with the plugin that contributed it and the modules it lacks."""

    spec: ComponentSpec
    plugin: PluginRecord
    missing: tuple[str, ...] = ()

    @property
    def install_hint(self) -> str:
        """The pip command that makes this component available ('' if it is)."""
        if not self.missing:
            return ""
        if self.spec.extra and self.plugin.distribution:
            return f"pip install '{self.plugin.distribution}[{self.spec.extra}]'"
        return "pip install " + " ".join(self.missing)


class Host:
    """Every installed plugin's components, by kind and name.

    Args:
        entry_points: load plugins published under the ``rs_plugins`` entry-point group (the built-ins included).
        plugins: extra plugin modules or instances to register, e.g. in tests or notebooks.
        blocked: entry-point or distribution names to skip, like ``RS_PLUGINS_DISABLE``.
    """

    def __init__(self, *, entry_points: bool = True, plugins: Iterable[Any] = (), blocked: Iterable[str] = ()) -> None:
        self.pm, self.records = make_plugin_manager(entry_points=entry_points, plugins=plugins, blocked=blocked)
        self.problems: dict[str, list[str]] = {}  # plugin name -> what went wrong collecting its components
        self._components: dict[str, dict[str, list[Component]]] = {kind: {} for kind in SPEC_TYPES}
        by_name = self._loaded()
        for kind, hook_name in REGISTRY_HOOKS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                self._collect(kind, impl, by_name.get(impl.plugin_name, PluginRecord(impl.plugin_name)))

    def _collect(self, kind: str, impl, plugin: PluginRecord) -> None:
        spec_type = SPEC_TYPES[kind]
        try:
            specs = list(impl.function() or ())
        except Exception as err:
            self.problems.setdefault(plugin.name, []).append(
                f"{impl.function.__name__}() raised {type(err).__name__}: {err}"
            )
            return
        for spec in specs:
            if not isinstance(spec, spec_type) or not NAME_PATTERN.match(spec.name):
                what = f"{type(spec).__name__} named {getattr(spec, 'name', '?')!r}"
                self.problems.setdefault(plugin.name, []).append(
                    f"{impl.function.__name__}() yielded {what}; expected a {spec_type.__name__} "
                    "whose name matches ^[a-z][a-z0-9_]*$"
                )
                continue
            missing = tuple(m for m in spec.requires if importlib.util.find_spec(m) is None)
            self._components[kind].setdefault(spec.name, []).append(Component(spec, plugin, missing))

    # -- components ---------------------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        """Names of the components of ``kind`` ('noise', 'loss', 'mixer', 'certifier' or 'denoiser')."""
        return sorted(self._kind(kind))

    def components(self, kind: str) -> list[Component]:
        """Every contributed component of ``kind``, conflicting duplicates included."""
        return [c for name in self.names(kind) for c in self._kind(kind)[name]]

    def component(self, kind: str, name: str) -> Component:
        """The one component of ``kind`` called ``name``; raises with suggestions or both providers."""
        table = self._kind(kind)
        label = SPEC_TYPES[kind].label
        if name not in table:
            close = difflib.get_close_matches(name, table, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            msg = f"no {label} named {name!r}.{hint}\n  Available: {', '.join(sorted(table)) or '(none)'}"
            raise UnknownComponentError(msg)
        found = table[name]
        if len(found) > 1:
            providers = "\n".join(f"  - {c.plugin.label}" for c in found)
            msg = (
                f"{label} {name!r} is provided by more than one plugin:\n{providers}\n"
                f"  Uninstall one, or set {DISABLE_ENV}={found[-1].plugin.name}."
            )
            raise ComponentConflictError(msg)
        return found[0]

    def build(self, kind: str, name: str, *args: Any, **config: Any) -> Any:
        """Build a component, attributing any failure to the plugin that contributed it."""
        component = self.component(kind, name)
        label = f"{component.spec.label} {name!r}"
        if component.missing:
            msg = f"{label} needs {', '.join(component.missing)}, which is not installed: {component.install_hint}"
            raise MissingDependencyError(msg)
        accepted = accepted_options(component.spec.build)
        unknown = sorted(set(config) - set(accepted[len(args) :])) if accepted is not None else []
        if unknown:
            msg = (
                f"{label} from plugin {component.plugin.label} has no option {', '.join(map(repr, unknown))} "
                f"({OPTION_FLAGS[kind]}); accepted: {', '.join(accepted[len(args) :]) or 'none'}"
            )
            raise ValueError(msg)
        try:
            built = component.spec.build(*args, **config)
        except MissingDependencyError:
            raise  # an option that needs an extra (e.g. an adversarial scheme); its message has the pip command
        except Exception as err:
            msg = f"{label} from plugin {component.plugin.label} failed to build: {type(err).__name__}: {err}"
            raise PluginBuildError(msg) from err
        return remember(built, f"{label} from plugin {component.plugin.label}", component.spec)

    def noise(self, name: str, **config: Any) -> NoiseSampler:
        """A noise sampler, e.g. ``host.noise("gaussian", sigma=0.25)``."""
        return self.build("noise", name, **config)

    def loss(self, name: str, **config: Any) -> TrainingLoss:
        """A training loss, e.g. ``host.loss("gaussian")``."""
        return self.build("loss", name, **config)

    def certifier(self, name: str, **config: Any) -> Certifier:
        """A certifier, e.g. ``host.certifier("cohen")``; an unknown option fails listing the accepted ones."""
        return self.build("certifier", name, **config)

    def mixer(self, name: str, base_classifiers: Sequence[nn.Module], **config: Any) -> nn.Module:
        """One classifier combined from several by the mixer ``name``."""
        return self.build("mixer", name, list(base_classifiers), **config)

    def denoiser(self, name: str, *, sigma: float, path: str | None = None, **config: Any) -> nn.Module:
        """A denoiser for noise level ``sigma``, e.g. ``host.denoiser("diffusion", sigma=0.25, path="ddpm")``."""
        if path is not None:
            config["path"] = path
        return self.build("denoiser", name, sigma=sigma, **config)

    def check_compatible(self, certifier: str, noise: str) -> None:
        """Refuse a certifier with a noise it is not derived for, before any sampling."""
        found = self.component("certifier", certifier)
        supported = found.spec.noises
        if supported and noise not in supported:
            noise_plugin = self.component("noise", noise).plugin.label
            msg = (
                f"certifier {certifier!r} supports noise {list(supported)}; got {noise!r} (no radius for it; "
                f"certifier from plugin {found.plugin.label}, noise from plugin {noise_plugin})"
            )
            raise IncompatibleComponentsError(msg)

    def _loaded(self) -> dict[str, PluginRecord]:
        return {r.name: r for r in self.records if r.status == "loaded"}

    def _kind(self, kind: str) -> dict[str, list[Component]]:
        if kind not in self._components:
            raise ValueError(f"kind must be one of {', '.join(SPEC_TYPES)}; got {kind!r}")
        return self._components[kind]

    # -- sources ------------------------------------------------------------------------------------------

    def load_model(
        self, request: ModelRequest | str, *, factory_weights: bool = False, random_weights: bool = False
    ) -> nn.Module:
        """The classifier a ``--model`` string names, from the first plugin that recognises its form.

        A ``package.module:factory`` model without a checkpoint is refused unless ``factory_weights=True`` (or
        ``random_weights=True``, the same; or ``ModelRequest(..., factory_weights=True)``): to train it from its
        initial weights, benchmark it untrained, or use a factory that sets its own weights.
        """
        from .sources.models import MODEL_FORMS

        request = ModelRequest(request) if isinstance(request, str) else request
        if factory_weights or random_weights:
            request = dataclasses.replace(request, factory_weights=True)
        return remember(self._first_result("rs_load_model", request, "--model", MODEL_FORMS), repr(request.source))

    def load_data(self, request: DataRequest | str) -> Dataset:
        """The data set a ``--data`` string names, from the first plugin that recognises its form."""
        from .sources.data import DATA_FORMS

        request = DataRequest(request) if isinstance(request, str) else request
        return self._first_result("rs_load_data", request, "--data", DATA_FORMS)

    def _first_result(self, hook_name: str, request: Any, option: str, forms: Sequence[str]) -> Any:
        records = self._loaded()
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):  # pluggy's call order
            try:
                result = impl.function(**{name: request for name in impl.argnames})
            except USER_ERRORS:
                raise
            except Exception as err:
                plugin = records.get(impl.plugin_name, PluginRecord(impl.plugin_name)).label
                msg = f"plugin {plugin} failed on {option} {request.source!r}: {type(err).__name__}: {err}"
                raise PluginBuildError(msg) from err
            if result is not None:
                return result
        msg = f"{option} {request.source!r} is not a form any installed plugin recognises; accepted: {', '.join(forms)}"
        raise SourceError(msg)

    # -- listing ------------------------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """Every plugin with its status, hooks and components, as JSON-ready dicts (``rs-plugins plugins``)."""
        plugins = []
        for record in self.records:
            components = [
                {
                    "kind": kind,
                    "name": c.spec.name,
                    "summary": c.spec.summary,
                    "reference": c.spec.reference,
                    "available": not c.missing,
                    "install": c.install_hint,
                    "options": build_options(c.spec.build),
                }
                for kind in SPEC_TYPES
                for c in self.components(kind)
                if c.plugin is record
            ]
            plugins.append(
                {
                    "name": record.name,
                    "distribution": record.distribution,
                    "version": record.version,
                    "status": record.status,
                    "error": "; ".join(filter(None, [record.error, *self.problems.get(record.name, [])])),
                    "hooks": list(record.hooks),
                    "components": components,
                }
            )
        return plugins
