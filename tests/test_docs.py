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
* Every rs-plugins command then also runs as written (``test_shell_commands_run_as_written``: a page's commands in
  order, in one folder per page, with the files they read made by the test), except the few that ``PARSE_ONLY``
  names with a reason (GPU-sized, installs, several processes; an elided ``...`` command must be one of them); a
  page with such a command gives a CPU-sized one beside it, and that one runs.
* A block preceded by ``<!-- illustrative -->`` is a sketch and is not run; there are at most
  ``MAX_ILLUSTRATIVE`` of them, each with its reason next to the marker (none is needed today).
"""

from __future__ import annotations

import csv
import hashlib
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
from rs_plugins.cli import main as cli_main
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
            forms = {re.split(r"\[?:", form)[0] for form in DATA_FORMS}
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
    command = [sys.executable, "-m", "rs_plugins", "certify", "--factory-weights", "--model",
               "rs_plugins.nets:SmallCNN",
               "--data", "digits", "--noise", "my_uniform", "--sigma", "0.5", "--n0", "20", "--n", "50", "--limit", "2",
               "--out", "u.tsv", "--no-progress"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "l1 radius" in done.stdout
    assert json.loads((tmp_path / "u.tsv.json").read_text())["provenance"]["noise"]["distribution"] == "rs-uniform"


# -- every command runs as written ------------------------------------------------------------------------------
# Each page's rs-plugins commands run in order, in-process, in one fresh folder per page (a later command reads an
# earlier one's files), with what they need made here: a small digits set (24 training, 8 test images) for the
# commands that evaluate, the whole of digits for the training recipes (``LEARNS``), which must reach the accuracy
# their page states (``CLAIM``), torchvision's CIFAR-10 and MNIST layouts with a few images, a
# RobustBench checkpoint at models/<dataset>/<threat>/<name>.pt, a tiny diffusers folder, TorchScript files and
# SmallCNN checkpoints for the names the pages use, results files a page compares without making them, and the
# tutorial's plugins as installed distributions (their modules and entry points on sys.path).

PARSE_ONLY = {  # pattern (re.search on the command line) -> why it is only parsed; each has a CPU-sized neighbour
    r"cifar_resnet110 .*--data cifar10:data": "ResNet-110 on CIFAR-10 at the papers' budget (hours on a GPU); each "
    "page gives the same recipe on digits, which runs",
    r"--n 100000|imagenet:data .*--n 10000 |^rs-plugins zoo certify \S+( --every \d+)?$": "N = 100 000, ImageNet at "
    "N = 10 000, or a zoo entry with its authors' protocol (GPU-sized); the CPU-sized command beside it runs",
    r"train-denoiser --data cifar10:data": "Salman et al.'s DnCNN schedule on CIFAR-10 (GPU-sized); the page's digits "
    "train-denoiser commands run",
    r"^torchrun ": "several processes or machines: tests/test_distributed.py runs torchrun on a small model",
    r"^(\.venv/bin/)?pip install |^python3 -m venv ": "installs packages: tests/test_packaging.py installs the built "
    "wheel with an extra offline, tests/test_example_plugin.py the example plugin",
    r"^\.venv/bin/rs-plugins demo$": "the demo (about a minute); tests/test_cli.py runs it with small settings",
    r"^\.venv/bin/python -m pytest$": "the test suite itself",
    r"^(python|bash) benchmarks/": "benchmarks run for minutes (GPU rows on a GPU) and commit their results",
    r"snapshot_download": "downloads google/ddpm-cifar10-32 from the Hugging Face hub",
    r"mypkg\.bit:": "a user's own BiT-152 with a WRN-70-16: the page's full-size recipe",
}
DIGITS = {"train": 24, "test": 8}
TRAINERS = ("train", "train-denoiser", "train-mixer")
LEARNS = (*TRAINERS, "predict-confidence")  # on all of digits: a recipe learns, and CAT-RS's p_b covers its data
CLAIM = re.compile(r"about (\d+) s on one CPU core\b", re.I)
FLOOR = re.compile(r"(\w+) ≥ (\d+(?:\.\d+)?)")
TRAINED: dict[tuple, Path] = {}  # a recipe already trained this session (same arguments and input files): its folder


def _parse_only(words: list[str]) -> str | None:
    line = shlex.join(words)
    return next((why for pattern, why in PARSE_ONLY.items() if re.search(pattern, line)), None)


RUN_PAGES = [p for p in PAGES if any(_rs_plugins_args(w) for s in SHELL if s.page == p for w in _commands(s))]


def _cifar10(root: Path, per_split: dict[str, int], label=None) -> None:
    """torchvision's cifar-10-batches-py with random images; ``label(x)`` gives the test labels (default k % 10)."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for name in [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]:
        count = per_split["test"] if name == "test_batch" else per_split["train"]
        data = torch.randint(0, 256, (count, 3 * 32 * 32), generator=g, dtype=torch.uint8)
        ys = [k % 10 for k in range(count)]
        if label is not None and name == "test_batch":
            ys = label(data.view(count, 3, 32, 32).float() / 255)
        (folder / name).write_bytes(pickle.dumps({"data": data.numpy(), "labels": ys}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{k}" for k in range(10)]}))


def _mnist(root: Path, count: int) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for split in ("train", "t10k"):
        images = torch.randint(0, 256, (count, 28, 28), generator=g, dtype=torch.uint8).numpy()
        header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (count, 28, 28))
        (raw / f"{split}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        labels = bytes(k % 10 for k in range(count))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + count.to_bytes(4, "big") + labels)


def _installed(site: Path, name: str, module: str, source: Path) -> None:
    """A distribution as pip leaves it: the module and a dist-info with its rs_plugins entry point."""
    shutil.copy(source, site / f"{module}.py")
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[rs_plugins]\n{name} = {module}\n")


def _robustbench(models: Path, dataset: str, threat: str, name: str) -> torch.nn.Module:
    """A checkpoint where robustbench looks for it (models/<dataset>/<threat>/<name>.pt), of random weights."""
    from rs_plugins.sources.models import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    model = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)][name]["model"]().eval()
    (models / dataset / threat).mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), models / dataset / threat / f"{name}.pt")
    return model


def _zoo_cache(text: str) -> None:
    """The zoo entries a page names (``zoo:NAME``, ``zoo certify NAME``) in the cache, as their first download
    leaves them, with random weights in the authors' layouts (tests/helpers/authors_layouts.py)."""
    sys.path.insert(0, str(ROOT / "tests" / "helpers"))
    from authors_layouts import bearpaw_state, cohen_checkpoint

    from rs_plugins.sources import zoo
    from rs_plugins.train.denoiser import DnCNN

    names = set(re.findall(r"zoo:([\w.-]+)", text)) | set(re.findall(r"zoo certify ([\w.-]+)", text))
    names |= {e.classifier for e in zoo.ENTRIES if e.name in names and e.classifier}
    for entry in [e for e in zoo.ENTRIES if e.name in names and e.downloadable and not e.needs]:
        path = zoo.cache_path(entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        if entry.architecture == "dncnn":
            state = {k.replace("layers.", "dncnn.", 1): v for k, v in DnCNN().state_dict().items()}
            torch.save({"arch": "cifar_dncnn", "state_dict": state}, path)
        elif entry.architecture == "cifar_resnet110":
            torch.save(cohen_checkpoint(bearpaw_state(110)), path)


def _diffusion_denoised_smoothing(folder: Path, monkeypatch) -> None:
    """The paper's files under their names, as tiny random models: the two diffusion checkpoints (their presets
    pointed at the tiny architectures), the hub classifiers in a Hugging Face cache read offline, ImageNet val."""
    from huggingface_hub import constants
    from PIL import Image
    from safetensors.torch import save_file
    from timm import create_model
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from rs_plugins.builtin.denoisers import adm_files
    from rs_plugins.builtin.denoisers.adm import AdmConfig, AdmUNet

    tiny = {"CIFAR-10": ("cifar10_uncond_50M_500K.pt", AdmConfig(3, 32, 6, 1, (2,), (1, 1), True, False, num_heads=4)),
            "ImageNet 256x256": ("256x256_diffusion_uncond.pt", AdmConfig(3, 32, 6, 1, (32,), (1,) * 6, True, True,
                                                                          num_head_channels=16))}  # fmt: skip
    for key, (file, config) in tiny.items():
        name = next(n for n in adm_files.PRESETS if key in n)
        torch.save(AdmUNet(config).state_dict(), folder / file)
        monkeypatch.setitem(adm_files.PRESETS, name, (config, adm_files.PRESETS[name][1]))
    cache = folder / "hf-cache"

    def snapshot(repo: str) -> Path:
        path = cache / f"models--{repo.replace('/', '--')}"
        (path / "refs").mkdir(parents=True)
        (path / "refs" / "main").write_text("0")
        (path / "snapshots" / "0").mkdir(parents=True)
        return path / "snapshots" / "0"

    vit = snapshot("aaraki/vit-base-patch16-224-in21k-finetuned-cifar10")
    config = ViTConfig(image_size=224, patch_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=10)  # fmt: skip
    ViTForImageClassification(config).save_pretrained(vit)
    ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        vit
    )
    save_file(create_model("test_vit").state_dict(), snapshot("timm/test_vit.r160_in1k") / "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("RS_PLUGINS_OFFLINE", "1")
    for synset in ("n01440764", "n01443537"):
        (folder / "data" / "val" / synset).mkdir(parents=True)
        Image.fromarray(torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy()).save(
            folder / "data" / "val" / synset / "a.png"
        )


def _prepare(page: Path, folder: Path, monkeypatch) -> None:
    """What the page's commands read and no earlier command of the page writes."""
    import torchvision

    from rs_plugins.sources import data

    full = data.load_digits

    def digits(split):
        if LEARNING[0]:
            return full(split)
        return torch.utils.data.TensorDataset(*(t[: DIGITS[split]] for t in full(split).tensors))

    monkeypatch.setattr(data, "load_digits", digits)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)  # not the real files' md5
    torch.manual_seed(0)
    small = SmallCNN().eval()
    text = page.read_text(encoding="utf-8")
    monkeypatch.setenv("RS_PLUGINS_HOME", str(folder / "cache"))  # what a first run would have downloaded is there
    if re.search(r"--data cifar10(\s|$)|zoo certify|zoo:", text):
        _cifar10(folder / "cache" / "data", {"train": 4, "test": 2})
    _zoo_cache(text)
    if "cifar10:data" in text:
        label = None
        if "robustbench:Rice2020Overfitting" in text:  # labels it gets wrong: AutoAttack attacks correct points only
            model = _robustbench(folder / "models", "cifar10", "L2", "Rice2020Overfitting")

            def label(x):
                with torch.no_grad():
                    return [(int(p) + 1) % 10 for p in model(x).argmax(1)]

        if "robustbench:Standard" in text:
            _robustbench(folder / "models", "cifar10", "Linf", "Standard")
        _cifar10(folder / "data", {"train": 4, "test": 2}, label)
    if "mnist:data" in text:
        _mnist(folder / "data", 8)
    if "ddpm-cifar10-32" in text:
        from diffusers import DDPMScheduler, UNet2DModel

        torch.manual_seed(0)
        UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                    layers_per_block=1, norm_num_groups=4).save_pretrained(folder / "ddpm-cifar10-32")  # fmt: skip
        DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "ddpm-cifar10-32")
    if "cifar10_uncond_50M_500K.pt" in text:
        _diffusion_denoised_smoothing(folder, monkeypatch)
    for name in ("mine.ts", "a.pt", "b.pt"):
        if f"torchscript:{name}" in text:
            torch.jit.script(small).save(str(folder / name))
    made = set(re.findall(r"--checkpoint-dir (\S+)", text))
    for checkpoint in sorted(set(re.findall(r"--checkpoint (\S+)/model\.pt", text)) - made):  # digits SmallCNNs
        (folder / checkpoint).mkdir(parents=True, exist_ok=True)
        torch.save(SmallCNN().state_dict(), folder / checkpoint / "model.pt")
    for run in ("cohen025", "con025"):  # docs/cli.md's report compares two runs the page does not make
        if f"runs/{run}/certify.tsv" in text and f"--checkpoint-dir runs/{run}" not in text:
            out = folder / "runs" / run / "certify.tsv"
            args = ["certify", "--factory-weights", "--model", "rs_plugins.nets:SmallCNN", "--data", "digits",
                    "--sigma", "0.25", "--n0", "10", "--n", "100", "--no-progress", "--out", str(out)]  # fmt: skip
            out.parent.mkdir(parents=True)
            assert cli_main(args) == 0
    if "their_laplace_050.tsv" in text:  # another project's file: Cohen's columns, no sidecar
        rows = [f"{i}\t{i % 10}\t{i % 10 if i % 3 else -1}\t{0.1 * i if i % 3 else 0.0}\t{int(i % 3 > 0)}\t0.5"
                for i in range(6)]  # fmt: skip
        (folder / "their_laplace_050.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n" + "\n".join(rows))
    site = folder / "site-packages"
    site.mkdir()
    if page.name == "writing-plugins.md":
        for snippet in snippets(page):
            if snippet.title == "rs_uniform.py":
                (folder / "rs_uniform.src").write_text(snippet.code, encoding="utf-8")
                _installed(site, "rs-uniform", "rs_uniform", folder / "rs_uniform.src")
    if page.parent.name == "rs-example-plugin":
        _installed(site, "rs-example-plugin", "rs_example", page.parent / "rs_example.py")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()


def _expand(words: list[str]) -> list[str]:
    """Glob patterns expanded as the shell would (left as they are when nothing matches)."""
    import glob

    return [w for word in words for w in (sorted(glob.glob(word)) if any(c in word for c in "*?[") else []) or [word]]


LEARNING = [False]  # whether digits is whole now (a command in LEARNS runs)


def _commented_commands(snippet: Snippet) -> list[tuple[list[str], str]]:
    """Each command of the snippet with the comment that goes with it: the ``#`` lines right above it and its own
    trailing comment."""
    found, above = [], []
    for line in snippet.code.replace("\\\n", " ").splitlines():
        if snippet.lang == "console" and not line.startswith("$ "):
            above = []  # a command's output
            continue
        text = line[2:] if snippet.lang == "console" else line
        if text.lstrip().startswith("#"):
            above.append(text.strip())
        elif text.strip():
            trailing = text[text.index(" #") :] if " #" in text else ""
            lone = Snippet(snippet.page, snippet.line, "bash", "", text, False)
            found += [(words, " ".join([*above, trailing])) for words in _commands(lone)]
            above = []
        else:
            above = []
    return found


def _option(args: list[str], flag: str, default: str) -> str:
    return args[args.index(flag) + 1] if flag in args else default


def _recipe_key(args: list[str]) -> tuple:
    """A training command's arguments without its --checkpoint-dir, and the contents of the files it reads."""
    rest = [a for i, a in enumerate(args) if a != "--checkpoint-dir" and args[i - 1 : i] != ["--checkpoint-dir"]]
    files = [Path(v) for a in rest for v in {a, a.split("=", 1)[-1]} if Path(v).is_file()]
    return (*rest, *sorted(hashlib.sha256(f.read_bytes()).hexdigest() for f in files))


def _check_claim(snippet: Snippet, args: list[str], comment: str) -> None:
    """A digits training recipe states its time on one CPU core and the accuracy it reaches; its last epoch
    in train_log.csv must reach that floor."""
    line = shlex.join(["rs-plugins", *args])
    floors = FLOOR.findall(comment)
    assert CLAIM.search(comment) and floors, (
        f"{snippet}: {line} is a CPU-sized recipe: say above it how long it takes and what it reaches, e.g. "
        "'# about 10 s on one CPU core: clean_acc ≥ 0.95'"
    )
    with open(Path(_option(args, "--checkpoint-dir", "checkpoints")) / "train_log.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    for column, floor in floors:
        assert column in last, f"{snippet}: {line}: train_log.csv has no column {column}; it has {list(last)}"
        assert float(last[column]) >= float(floor), f"{snippet}: {line} ends at {column} {last[column]} < {floor}"


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_commands_run_as_written(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RS_PLUGINS_DISABLE", raising=False)
    monkeypatch.setattr(sys.modules[__name__], "LEARNING", [False])
    _prepare(page, tmp_path, monkeypatch)
    ran = 0
    for snippet in SHELL:
        if snippet.page != page:
            continue
        for words, comment in _commented_commands(snippet):
            args = _rs_plugins_args(words)
            if args is None or "..." in args or _parse_only(words):
                continue
            args = _expand(args)
            LEARNING[0] = args[0] in LEARNS
            recipe = args[0] in TRAINERS and _option(args, "--data", "") == "digits"
            key = _recipe_key(args) if recipe else None
            if key in TRAINED:  # the same recipe on another page: its folder, not the minutes again
                shutil.copytree(TRAINED[key], _option(args, "--checkpoint-dir", "checkpoints"), dirs_exist_ok=True)
            else:
                code = cli_main(args)
                assert code == 0, f"{snippet}: {shlex.join(words)} exited {code}: {capsys.readouterr().err[-2000:]}"
            if recipe:
                _check_claim(snippet, args, comment)
            if recipe and key not in TRAINED:  # kept as trained, before later commands add files to the folder
                TRAINED[key] = tmp_path / f".trained{len(TRAINED)}"
                shutil.copytree(_option(args, "--checkpoint-dir", "checkpoints"), TRAINED[key])
            ran += 1
    assert ran, f"{page}: no command of the page runs; give a CPU-sized variant"


def test_parse_only_commands_are_few_named_and_exist():
    """Every command of the pages is a whole rs-plugins command (which then runs) or a PARSE_ONLY one, and each
    PARSE_ONLY pattern names a command that exists."""
    commands = [(s, w) for s in SHELL for w in _commands(s)]
    assert len(PARSE_ONLY) <= 10
    for pattern, why in PARSE_ONLY.items():
        assert why and any(re.search(pattern, shlex.join(w)) for _, w in commands), f"no command matches {pattern}"
    for snippet, words in commands:
        args = _rs_plugins_args(words)
        runs = args is not None and "..." not in args
        assert runs or _parse_only(words), f"{snippet}: {shlex.join(words)} neither runs nor is in PARSE_ONLY"


def test_index_names_every_technique_page_and_built_in_loss():
    """docs/index.md's table links every page of docs/techniques/ and names every built-in loss (`--loss NAME`)."""
    from rs_plugins import Host

    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    pages = sorted(p.name for p in (ROOT / "docs" / "techniques").glob("*.md"))
    assert [p for p in pages if f"(techniques/{p})" not in index] == []
    built_in = [c.spec.name for c in Host().components("loss") if c.plugin.distribution == "rs-plugins"]
    assert "standard" in built_in and [name for name in built_in if f"`--loss {name}`" not in index] == []


def test_the_cli_page_states_the_settings_a_certify_file_keeps_once_and_whole(tmp_path, monkeypatch):
    """docs/cli.md says once which settings `<out>.json` stores and compares on resume, naming each one a run stores
    (a leftover second, shorter copy of the sentence once contradicted it)."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert text.count("settings that change results") == 1
    start = text.index("settings that change results")
    said = " ".join(text[start : text.index("`<out>.json`", start)].split())
    monkeypatch.chdir(tmp_path)
    argv = ["certify", "--random-weights", "--model", "rs_plugins.nets:SmallCNN", "--data", "digits", "--sigma",
            "0.25", "--n0", "10", "--n", "20", "--limit", "1", "--no-progress", "--out", "c.tsv"]  # fmt: skip
    assert cli_main(argv) == 0
    stored = set(json.loads(Path("c.tsv.json").read_text())) - {"provenance"}
    named = {"model_kwargs": "kwargs", "model_sha256": "SHA-256", "noise_option": "options", "mixer_option": "options",
             "certifier_option": "options", "channels_last": "channels-last"}  # fmt: skip
    assert [key for key in sorted(stored) if named.get(key, key) not in said] == []
