"""The folder tree is the architecture (issue 20): rules a future change must keep, checked on the source with ast.

- no module outside ``builtin/`` imports from ``builtin/`` (the built-ins are leaves, as a third-party plugin is;
  the rest builds them through the ``Host``, by name);
- no module imports another module's underscore names (shared helpers are public where they are shared);
- no source file is longer than ``MAX_LINES``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rs_plugins"
MAX_LINES = 400


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, source: str | None = None) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for every import in ``path`` (or ``source`` read as that file)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def _ids(paths):
    return [str(p.relative_to(PACKAGE.parent)) for p in paths]


def test_the_walk_sees_the_package():
    """The rules below are vacuous if the walk finds nothing: the package's main parts are there."""
    modules = {_module(p) for p in SOURCES}
    assert {"rs_plugins.host", "rs_plugins.certify.smoothing", "rs_plugins.builtin.gaussian"} <= modules
    assert any("rs_plugins.builtin" in target for p in SOURCES for target, _, _ in _imports(p))


@pytest.mark.parametrize("path", [p for p in SOURCES if "builtin" not in p.relative_to(PACKAGE).parts],
                         ids=_ids([p for p in SOURCES if "builtin" not in p.relative_to(PACKAGE).parts]))  # fmt: skip
def test_only_builtin_imports_builtin(path):
    """Core modules and the CLI reach a built-in technique through the Host, never by import."""
    bad = []
    for target, names, line in _imports(path):
        modules = [target] + [f"{target}.{n}" for n in names]
        if any(m == "rs_plugins.builtin" or m.startswith("rs_plugins.builtin.") for m in modules):
            bad.append(f"line {line}: {target} {names}")
    assert not bad, f"{path.name} imports a built-in plugin: {bad}"


@pytest.mark.parametrize("path", SOURCES, ids=_ids(SOURCES))
def test_no_private_imports(path):
    """``from module import _name`` across modules means a shared helper that should be public."""
    bad = [f"line {line}: {target} {n}" for target, names, line in _imports(path) if target.startswith("rs_plugins")
           for n in names if n.startswith("_") and not n.startswith("__")]  # fmt: skip
    assert not bad, f"{path.name} imports another module's private names: {bad}"


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@pytest.mark.parametrize("path", SOURCES, ids=_ids(SOURCES))
def test_no_private_attributes_of_other_modules(path):
    """``module._name`` on an imported rs_plugins module is the same reach into another module's privates."""
    tree = ast.parse(path.read_text())
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for target, _, _ in _imports(path, ast.unparse(node)):
                aliases |= {a.asname or a.name for a in node.names if _is_module(f"{target}.{a.name}")}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.asname and a.name.startswith("rs_plugins")}
    bad = [f"line {n.lineno}: {n.value.id}.{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
           and isinstance(n.value, ast.Name) and n.value.id in aliases and n.attr.startswith("_")
           and not n.attr.startswith("__")]  # fmt: skip
    assert not bad, f"{path.name} uses another module's private names: {bad}"


@pytest.mark.parametrize("path", SOURCES, ids=_ids(SOURCES))
def test_file_size(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most {MAX_LINES}): split it along its jobs"


def test_rules_catch_a_violation():
    """The walk resolves relative imports, so a built-in or a private name imported as ``..`` is seen."""
    source = "from ..builtin.gaussian import GaussianNoise\nfrom .sampling import _plan\n"
    imports = {target: names for target, names, _ in _imports(PACKAGE / "certify" / "smoothing.py", source)}
    assert imports == {"rs_plugins.builtin.gaussian": ["GaussianNoise"], "rs_plugins.certify.sampling": ["_plan"]}
