"""Downloads (``rs_plugins.sources.fetch``) against a web server on 127.0.0.1: verified, atomic, never a partial or
wrong file in place, web pages instead of files recognised, and the offline switch."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rs_plugins.errors import SourceError
from rs_plugins.file_checks import load_weights_only
from rs_plugins.sources import fetch

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from local_server import QUOTA_PAGE, Cut, Drive, Hold, Page  # noqa: E402

DATA = bytes(range(256)) * 4096  # 1 MiB, several chunks


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_download_is_verified_renamed_into_place_and_recorded(local_server, tmp_path):
    local_server.routes["/f.bin"] = DATA
    dest = tmp_path / "d" / "f.bin"
    record = fetch.download(local_server.url("/f.bin"), dest, what="test", sha256=sha(DATA), size=len(DATA))
    assert dest.read_bytes() == DATA
    assert record["sha256"] == sha(DATA) and record["verified"] and record["bytes"] == len(DATA)
    assert fetch.read_record(dest)["sha256"] == sha(DATA)
    assert leftovers(dest.parent) == ["f.bin", "f.bin.json"]  # no temporary file left behind


def test_without_a_published_hash_the_first_downloads_hash_is_recorded_unverified(local_server, tmp_path):
    local_server.routes["/f.bin"] = DATA
    fetch.forget()
    record = fetch.download(local_server.url("/f.bin"), tmp_path / "f.bin", what="test")
    assert record["sha256"] == sha(DATA) and record["verified"] is False
    assert fetch.fetched()[-1]["sha256"] == sha(DATA) and fetch.fetched()[-1]["downloaded"]


@pytest.mark.parametrize(
    "route, expected, match",
    [
        (DATA, {"sha256": "0" * 64}, "SHA-256"),
        (DATA, {"size": len(DATA) + 1}, "expected"),
        (Cut(DATA, 300_000), {}, "failed|ended after"),
        (Page("<html><head><title>Sign in</title></head><body>log in</body></html>"), {}, r"web page \(Sign in\)"),
    ],
    ids=["checksum-mismatch", "size-mismatch", "connection-dropped", "html-page"],
)
def test_a_refused_download_leaves_nothing_in_place(local_server, tmp_path, route, expected, match):
    local_server.routes["/f.bin"] = route
    dest = tmp_path / "d" / "f.bin"
    with pytest.raises(fetch.DownloadError, match=match) as caught:
        fetch.download(local_server.url("/f.bin"), dest, what="--model zoo:x", **expected)
    assert "nothing was kept" in str(caught.value) and "--model zoo:x" in str(caught.value)
    assert leftovers(dest.parent) == []


def test_google_drives_scan_page_is_confirmed_and_its_quota_page_reported(local_server, tmp_path, monkeypatch):
    local_server.routes["/uc"] = Drive({"abc": DATA}, quota={"busy"})
    fetch.download(fetch.drive_url("abc"), tmp_path / "a", what="test", sha256=sha(DATA))
    assert (tmp_path / "a").read_bytes() == DATA
    assert any(r.startswith("/download?") and "confirm=t" in r for r in local_server.requests)
    with pytest.raises(fetch.DriveQuotaError, match="quota page") as caught:
        fetch.download(fetch.drive_url("busy"), tmp_path / "b", what="--model robustbench:X")
    assert "not a broken file" in str(caught.value) and not (tmp_path / "b").exists()
    assert "Too many users" in QUOTA_PAGE  # the page served is Drive's


def test_offline_downloads_nothing(local_server, tmp_path, monkeypatch):
    local_server.routes["/f.bin"] = DATA
    for variable in ("RS_PLUGINS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(variable, "1")
        with pytest.raises(fetch.DownloadError, match="downloads are off"):
            fetch.download(local_server.url("/f.bin"), tmp_path / "f.bin", what="test")
        monkeypatch.delenv(variable)
    assert local_server.requests == [] and not fetch.offline()


def test_the_cache_folder_follows_rs_plugins_home_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("RS_PLUGINS_HOME", str(tmp_path / "a"))
    assert fetch.home() == tmp_path / "a"
    monkeypatch.delenv("RS_PLUGINS_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert fetch.home() == tmp_path / "x" / "rs-plugins"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert fetch.home() == Path.home() / ".cache" / "rs-plugins"


KILLABLE = """
import sys
from rs_plugins.sources import fetch
fetch.download(sys.argv[1], sys.argv[2], what="test", progress=False)
"""


def test_a_killed_download_leaves_no_file_that_loads_and_a_rerun_starts_again(local_server, tmp_path):
    buffer = __import__("io").BytesIO()
    torch.save({"w": torch.arange(300_000, dtype=torch.float32)}, buffer)
    checkpoint = buffer.getvalue()
    hold = Hold(checkpoint, after=len(checkpoint) // 2)
    local_server.routes["/model.pt"] = hold
    dest = tmp_path / "models" / "model.pt"
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, local_server.url("/model.pt"), str(dest)])
    try:
        assert hold.sent.wait(timeout=120), "the download never started"
        process.kill()  # SIGKILL: no cleanup runs, as when a job is killed or the machine goes down
        process.wait(timeout=60)
    finally:
        hold.release.set()
    assert not dest.exists()  # only the temporary part file may remain, under another name
    with pytest.raises((FileNotFoundError, SourceError)):
        load_weights_only(dest, "--checkpoint", "a checkpoint")
    local_server.routes["/model.pt"] = checkpoint
    fetch.download(local_server.url("/model.pt"), dest, what="test", progress=False)
    assert torch.equal(load_weights_only(dest, "--checkpoint", "x")["w"], torch.arange(300_000, dtype=torch.float32))


def test_processes_asking_for_one_missing_file_together_download_it_once(local_server, tmp_path):
    """torchrun's ranks reach a missing checkpoint at the same moment: one downloads it, the others wait for it and
    find it in place (each thread opens the folder's lock on its own, as separate processes do)."""
    import threading

    local_server.routes["/f.bin"] = DATA
    dest = tmp_path / "d" / "f.bin"
    records = []

    def fetch_it():
        records.append(fetch.download(local_server.url("/f.bin"), dest, what="test"))

    fetchers = [threading.Thread(target=fetch_it) for _ in range(3)]
    for thread in fetchers:
        thread.start()
    for thread in fetchers:
        thread.join()
    assert local_server.requests.count("/f.bin") == 1
    assert dest.read_bytes() == DATA and [r["sha256"] for r in records] == [sha(DATA)] * 3
    assert leftovers(dest.parent) == ["f.bin", "f.bin.json"]
