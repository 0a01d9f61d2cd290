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


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for every import in ``path``, at any depth."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
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


@pytest.mark.parametrize("path", SOURCES, ids=_ids(SOURCES))
def test_file_size(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most {MAX_LINES}): split it along its jobs"


def test_rules_catch_a_violation(tmp_path):
    """The checks flag what they should: a relative import of a built-in and a private name."""
    fake = PACKAGE / "certify" / "smoothing.py"
    source = "from ..builtin.gaussian import GaussianNoise\nfrom .sampling import _plan\n"
    imports = {t: n for t, n, _ in _imports_of(source, fake)}
    assert "rs_plugins.builtin.gaussian" in imports and imports["rs_plugins.certify.sampling"] == ["_plan"]


def _imports_of(source: str, as_path: Path) -> list[tuple[str, list[str], int]]:
    """``_imports`` on ``source`` as if it were the file ``as_path``."""
    class _Fake(type(as_path)):
        def read_text(self, *args, **kwargs):
            return source

    return _imports(_Fake(as_path))
