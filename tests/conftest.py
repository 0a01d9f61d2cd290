"""Shared test settings."""

import os

import pytest
import torch

# No test reaches the network: downloads are off unless a test serves the files itself (the local_server fixture
# below, which switches them back on for that test only).
os.environ["RS_PLUGINS_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Run torch on one thread: the suite's models are tiny and gain nothing from more, and on a busy shared
    2-core machine the spinning of torch's worker threads can make a training epoch a hundred times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def local_server(monkeypatch, tmp_path):
    """A web server on 127.0.0.1 for the download tests (tests/helpers/local_server.py), every download address of
    ``rs_plugins.sources.locations`` pointed at it, and the rs-plugins cache in a temporary folder."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "helpers"))
    from local_server import LocalServer

    from rs_plugins.sources import locations

    server = LocalServer()
    monkeypatch.setattr(locations, "GOOGLE_DRIVE", server.url("/uc?export=download&id={id}"))
    monkeypatch.setenv("RS_PLUGINS_HOME", str(tmp_path / "rs-plugins-home"))
    for name in ("RS_PLUGINS_OFFLINE", "HF_HUB_OFFLINE", "RS_PLUGINS_ZOO_DIR"):
        monkeypatch.delenv(name, raising=False)
    yield server
    server.close()
