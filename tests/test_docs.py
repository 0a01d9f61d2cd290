"""Every code snippet in README.md and docs/ runs, or (shell) is a command line the CLI accepts; the site builds.

The rules, so that a new snippet is checked without a new test:

* ``python`` blocks of a page run in order in one namespace (a page reads top to bottom), in a fresh folder that
  holds the files the page's commands would have written (``runs/gauss025/model.pt``: a SmallCNN state dict, as
  the README's `train` command writes it). A block with ``title="<name>.py"`` is a file of the tutorial: it is
  written to that folder (on ``sys.path``) instead of run. Functions named ``test_*`` that a block defines are
  called, as pytest would.
* ``toml`` blocks parse; one titled ``pyproject.toml`` is written to the folder too.
* ``bash``/``console`` blocks: every command (``$ `` lines in a console block) is split as the shell would; an
  ``rs-plugins`` command (also ``python -m rs_plugins``, ``torchrun ... -m rs_plugins``) must parse with the CLI's
  own parser, name built-in ``rs_plugins.*`` models that exist and ``--data`` forms that are known. Other programs
  must be on a short list (pip, venv, pytest, ...). A command with a bare ``...`` argument is elided on purpose
  and is not parsed.
* A block preceded by ``<!-- illustrative -->`` is a sketch and is not run; there are at most
  ``MAX_ILLUSTRATIVE`` of them, each with its reason next to the marker (none is needed today).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rs_plugins.cli import build_parser
from rs_plugins.nets import SmallCNN
from rs_plugins.sources.data import DATA_FORMS

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
ILLUSTRATIVE = "<!-- illustrative"
MAX_ILLUSTRATIVE = 3
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
OTHER_PROGRAMS = {"bash", "pip", "python", "python3", "pytest", "cd", "export", "mkdir", "du", "git", "mkdocs", "cp"}


@dataclass
class Snippet:
    page: Path
    line: int
    lang: str
    title: str
    code: str
    illustrative: bool

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def snippets(page: Path) -> list[Snippet]:
    text = page.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip().splitlines()[-1:] or [""]
        title = re.search(r'title="([^"]+)"', m.group(2))
        line = text[: m.start()].count("\n") + 1
        illustrative = before[0].startswith(ILLUSTRATIVE)
        found.append(Snippet(page, line, m.group(1), title.group(1) if title else "", m.group(3), illustrative))
    return found


ALL = [s for page in PAGES for s in snippets(page)]


def test_snippets_are_found_and_few_are_illustrative():
    assert sum(s.lang == "python" for s in ALL) >= 15 and sum(s.lang in ("bash", "console") for s in ALL) >= 25
    sketches = [str(s) for s in ALL if s.illustrative]
    assert len(sketches) <= MAX_ILLUSTRATIVE, sketches


@pytest.mark.parametrize("page", [p for p in PAGES if any(s.lang == "python" for s in snippets(p))],
                         ids=lambda p: str(p.relative_to(ROOT)))  # fmt: skip
def test_python_snippets_run(page, tmp_path, monkeypatch):
    (tmp_path / "runs" / "gauss025").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(SmallCNN().state_dict(), tmp_path / "runs" / "gauss025" / "model.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT / "docs" / "examples" / "rs-example-plugin"))
    namespace: dict = {"__name__": "__snippet__"}
    for snippet in snippets(page):
        if snippet.illustrative or snippet.lang not in ("python", "toml"):
            continue
        if snippet.title:
            (tmp_path / snippet.title).write_text(snippet.code, encoding="utf-8")
            importlib.invalidate_caches()
            continue
        if snippet.lang == "toml":
            continue
        before = set(namespace)
        exec(compile(snippet.code, str(snippet), "exec"), namespace)  # noqa: S102 - the docs' own code
        for name in sorted(set(namespace) - before):
            if name.startswith("test_") and callable(namespace[name]):
                namespace[name]()


@pytest.mark.parametrize("snippet", [s for s in ALL if s.lang == "toml"], ids=str)
def test_toml_snippets_parse(snippet):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    found = tomllib.loads(snippet.code)
    if snippet.title == "pyproject.toml":  # a complete file a user saves and installs: everything pip needs
        assert {"requires", "build-backend"} <= found["build-system"].keys()
        assert {"name", "version"} <= found["project"].keys()
        assert found["project"]["entry-points"]["rs_plugins"]


def _commands(snippet: Snippet) -> list[list[str]]:
    """The snippet's commands as argument lists: continuation lines joined, comments dropped, && ; | split."""
    text = snippet.code.replace("\\\n", " ")
    lines = text.splitlines()
    if snippet.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    commands = []
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token not in ("&&", ";", "|", "||", "&"):
                words.append(token)
                continue
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                words = words[1:]  # VAR=value prefixes
            if words:
                commands.append(words)
            words = []
    return commands


def _rs_plugins_args(words: list[str]) -> list[str] | None:
    """The CLI arguments if ``words`` runs rs-plugins, else None."""
    program = Path(words[0]).name
    if program == "rs-plugins":
        return words[1:]
    if "-m" in words and words[words.index("-m") + 1 : words.index("-m") + 2] == ["rs_plugins"]:
        rest = words[words.index("-m") + 2 :]
        return rest[1:] if rest[:1] == ["--"] else rest
    return None


SHELL = [s for s in ALL if s.lang in ("bash", "sh", "console") and not s.illustrative]


@pytest.mark.parametrize("snippet", SHELL, ids=str)
def test_shell_snippets_are_commands_the_cli_accepts(snippet, capsys):
    parser = build_parser()
    for words in _commands(snippet):
        args = _rs_plugins_args(words)
        if args is None:
            program = Path(words[0]).name
            assert program in OTHER_PROGRAMS | {"torchrun"}, f"{snippet}: unknown program in {shlex.join(words)}"
            continue
        if "..." in args:
            continue  # elided on purpose
        try:
            parsed = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{snippet}: rs-plugins does not accept {shlex.join(args)}: {capsys.readouterr().err}")
        for model in getattr(parsed, "model", None) or []:
            model = [model] if isinstance(model, str) else model
            for name in model:
                if name.startswith("rs_plugins."):
                    module, _, attr = name.partition(":")
                    assert hasattr(importlib.import_module(module), attr), f"{snippet}: no such model {name}"
        data = getattr(parsed, "data", None)
        if data is not None and not data.endswith((".pt", ".npz")):
            forms = {form.split(":")[0] for form in DATA_FORMS}
            assert data.split(":")[0] in forms, f"{snippet}: --data {data} is not a built-in form"


def test_docs_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "certified_accuracy" in api and "plot_comparison" in api  # the reference comes from the docstrings


def test_plugin_tutorial_installs_as_written_and_certifies_l1(tmp_path):
    """docs/writing-plugins.md: its two files, pip-installed (offline) into a folder, give the CLI `my_uniform`."""
    src = tmp_path / "src"
    src.mkdir()
    for snippet in snippets(ROOT / "docs" / "writing-plugins.md"):
        if snippet.title:
            (src / snippet.title).write_text(snippet.code, encoding="utf-8")
    assert sorted(p.name for p in src.iterdir()) == ["pyproject.toml", "rs_uniform.py"]
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    done = subprocess.run([*pip, "--target", str(target), str(src)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if k != "RS_PLUGINS_DISABLE"} | {"PYTHONPATH": str(target)}
    command = [sys.executable, "-m", "rs_plugins", "certify", "--random-weights", "--model", "rs_plugins.nets:SmallCNN",
               "--data", "digits", "--noise", "my_uniform", "--sigma", "0.5", "--n0", "20", "--n", "50", "--limit", "2",
               "--out", "u.tsv", "--no-progress"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "l1 radius" in done.stdout
    assert json.loads((tmp_path / "u.tsv.json").read_text())["provenance"]["noise"]["distribution"] == "rs-uniform"
