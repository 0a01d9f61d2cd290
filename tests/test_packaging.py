"""The package as the index would ship it: the wheel installs with an extra into a fresh venv and runs ``demo``
outside the checkout; the sdist carries what its tests need. Offline: ``pip --no-index``, with this
environment's packages visible to the fresh venv, so nothing is downloaded. Marked ``packaging`` (about 30 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.packaging


def _build(kind: str, out: Path) -> Path:
    """``pip wheel`` or a PEP 517 sdist of the checkout, built without isolation (offline) into ``out``."""
    if kind == "wheel":
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)]
    else:
        code = f"from setuptools.build_meta import build_sdist; print(build_sdist({str(out)!r}))"
        command = [sys.executable, "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("*.whl" if kind == "wheel" else "*.tar.gz")
    return built


def test_the_wheel_installs_with_an_extra_and_runs_the_demo_outside_the_checkout(tmp_path):
    wheel = _build("wheel", tmp_path / "dist")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    # This environment's packages (torch, torchattacks, ...) as a plain path: no .pth of it runs, so the
    # checkout's editable install stays out of the fresh venv.
    (Path(site) / "base_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = [python, "-m", "pip", "install", "--no-index", "--find-links", str(wheel.parent), "-q"]
    # --no-deps: the dependencies are this environment's (pip's resolver would ask the index for torch's CUDA
    # libraries); the extra's requirement is checked in the installed metadata instead.
    install = [*pip, "--no-deps", "--force-reinstall", f"{wheel}[smoothmix]"]
    done = subprocess.run(install, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    requires = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.requires('rs-plugins'))"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "torchattacks==3.5.1; extra == \"smoothmix\"" in requires, requires
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RS_PLUGINS_DISABLE")} | {"MPLBACKEND": "Agg"}
    where = subprocess.run([python, "-c", "import rs_plugins; print(rs_plugins.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path, env=env, check=True).stdout  # fmt: skip
    assert where.startswith(site) and str(ROOT) not in where, where
    command = [env_dir / "bin" / "rs-plugins", "demo", "--epochs", "1", "--n", "50", "--every", "60", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "results" / "demo" / "certify.tsv").is_file() and "ACR" in done.stdout
    listed = subprocess.run([env_dir / "bin" / "rs-plugins", "plugins"], capture_output=True, text=True, env=env)
    assert "smoothmix" in listed.stdout and "unavailable" not in listed.stdout.split("smoothmix")[1].split("\n")[0]


def test_the_sdist_ships_what_its_tests_need(tmp_path):
    """Every tracked test, docs page, benchmark, the CI script and the licence are in the sdist."""
    sdist = _build("sdist", tmp_path)
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout (e.g. this very sdist): nothing to compare with")
    needed = [f for f in tracked if f.startswith(("tests/", "docs/", "benchmarks/", "rs_plugins/"))]
    needed += ["LICENSE", "mkdocs.yml", ".ci/run", "README.md", "CHANGELOG.md", "pyproject.toml"]
    missing = sorted(set(needed) - names)
    assert not missing, missing
    with tarfile.open(sdist) as tar:
        info = next(m for m in tar.getmembers() if m.name.endswith("/PKG-INFO"))
        metadata = tar.extractfile(info).read().decode()
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata


def test_torchattacks_attacks_import_without_requests():
    """The README's way around torchattacks' requests pin (--no-deps) works: the attacks never import requests."""
    pytest.importorskip("torchattacks")
    code = "import sys; sys.modules['requests'] = None; import torchattacks; torchattacks.PGDL2; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
