"""One writer per results file and checkpoint folder (issue 25, item 1).

Two ``rs-plugins certify`` processes on the same ``--out`` used to both exit 0, leaving every image in the file twice,
and ``report`` then counted 80 images for 40. Each command now holds an flock beside its output for as long as it
writes, and every reader refuses a file with an image twice. The races are real processes; a model factory that
waits for a gate file keeps the first process inside its run (holding the lock) until the test lets it go, so
which process is refused never depends on timing.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from rs_plugins import cli
from rs_plugins.attacks.summary import read_certified
from rs_plugins.builtin.adaptive import AdaptiveMixer
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.confidence import read_confidence_targets
from rs_plugins.certify.distributed import World
from rs_plugins.certify.sharding import partial_path
from rs_plugins.errors import OutputInUseError, ResultsFileError
from rs_plugins.nets import SmallCNN
from rs_plugins.results import writer_lock
from rs_plugins.results.files import (
    CERTIFY_COLUMNS,
    CONFIDENCE_COLUMNS,
    ConfidenceRow,
    ResultsFile,
    Row,
    read_results,
)
from rs_plugins.results.writer_lock import WriterLock, lock_path, one_writer
from rs_plugins.sources.data import data_identity, load_digits
from rs_plugins.train.config import TrainConfig
from rs_plugins.train.denoiser import DenoiserTrainConfig, DnCNN, train_denoiser
from rs_plugins.train.loop import train
from rs_plugins.train.mixer import MixerTrainConfig, train_mixer

GATE_MODEL = '''
import os
import pathlib
import time

import torch

from rs_plugins.nets import SmallCNN


def net():
    """SmallCNN(width=4) with fixed weights, built once the test creates the gate file; a command holds its lock
    before it loads its model, so the process holds it while it waits here."""
    gate = pathlib.Path(os.environ["GATE"])
    (gate.parent / f"waiting-{os.getpid()}").touch()
    deadline = time.monotonic() + 240
    while not gate.exists():
        if time.monotonic() > deadline:
            raise SystemExit("the test never opened the gate")
        time.sleep(0.02)
    torch.manual_seed(0)
    return SmallCNN(width=4)
'''

IMAGES = 6


@pytest.fixture
def root(tmp_path):
    (tmp_path / "gate_model.py").write_text(GATE_MODEL)
    return tmp_path


def start(root: Path, out: Path, gate: Path) -> subprocess.Popen:
    """``rs-plugins certify`` of the gated model in a process of its own."""
    env = os.environ | {"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "GATE": str(gate)}
    argv = [sys.executable, "-m", "rs_plugins", "certify", "--model", "gate_model:net", "--factory-weights", "--data",
            "digits", "--sigma", "0.25", "--n0", "10", "--n", "50", "--limit", str(IMAGES), "--device", "cpu",
            "--no-progress", "--out", str(out)]  # fmt: skip
    return subprocess.Popen(argv, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def until(condition, what: str, seconds: float = 240):
    """Poll ``condition()`` until it is true (a process exited, a file appeared), failing after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return found


def assert_each_index_once(out: Path) -> None:
    lines = out.read_text().splitlines()
    assert lines[0] == "\t".join(CERTIFY_COLUMNS)
    assert sorted(int(line.split("\t")[0]) for line in lines[1:]) == list(range(IMAGES))  # raw: no row twice
    assert [row.idx for row in read_results(out)] == list(range(IMAGES))


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=300)
    return process.returncode, err


def test_two_processes_started_together_one_is_refused(root):
    """Both start at once on one --out: exactly one is refused, naming the other; the file has each image once."""
    out, gate = root / "runs" / "c.tsv", root / "gate"
    processes = [start(root, out, gate), start(root, out, gate)]
    loser = until(lambda: next((p for p in processes if p.poll() is not None), None), "the refused process")
    winner = next(p for p in processes if p is not loser)
    gate.touch()
    (code, err), (won, won_err) = finish(loser), finish(winner)
    assert (code, won) == (2, 0), won_err
    assert f"--out {out} is being written by process {winner.pid} on host " in err
    assert "give another --out" in err and "Traceback" not in err
    assert_each_index_once(out)
    assert not lock_path(out).exists()  # removed by the clean exit


def test_a_later_second_process_is_refused_and_a_killed_holder_leaves_no_stale_lock(root):
    """The second process starts while the first is mid-run (the issue's 5 s later): refused, not merged. Then the
    first is killed (SIGKILL): its lock file stays behind, but the OS released the lock, so a rerun resumes at once."""
    out, gate = root / "c.tsv", root / "gate"
    first = start(root, out, gate)
    until(lambda: (root / f"waiting-{first.pid}").exists(), "the first process to hold --out")
    code, err = finish(start(root, out, gate))
    assert code == 2 and f"is being written by process {first.pid}" in err
    first.kill()
    first.wait()
    assert json.loads(lock_path(out).read_text())["pid"] == first.pid  # the file of a dead holder is still there
    gate.touch()
    code, err = finish(start(root, out, gate))
    assert code == 0, err
    assert_each_index_once(out)


# -- every command and function that appends to or resumes a file refuses while another process holds it ----------


class Holder:
    """A separate process that takes writer locks on request and holds them until the test module ends."""

    SCRIPT = (
        "import sys\n"
        "from rs_plugins.results.writer_lock import WriterLock\n"
        "held = []\n"
        "for line in sys.stdin:\n"
        "    path, folder = line.rstrip('\\n').rsplit(' ', 1)\n"
        "    held.append(WriterLock(path, '--x', folder=folder == '1'))\n"
        "    print('held', flush=True)\n"
    )

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", self.SCRIPT], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)  # fmt: skip

    def hold(self, path: Path, folder: bool = False) -> Path:
        self.process.stdin.write(f"{path} {int(folder)}\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "held\n"
        return path

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def holder():
    held = Holder()
    yield held
    held.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("clf") / "model.pt"
    torch.manual_seed(0)
    torch.save(SmallCNN(width=4).state_dict(), path)
    return path


MODEL = ["--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 4}']
FAST = ["--device", "cpu", "--no-progress"]
COMMANDS = {
    "certify": (["certify", "--data", "digits", "--sigma", "0.25", "--n0", "10", "--n", "20", "--limit", "1"], "--out"),
    "predict": (["predict", "--data", "digits", "--sigma", "0.25", "--n", "20", "--limit", "1"], "--out"),
    "attack": (["attack", "--data", "digits", "--attack", "PGD", "--eps", "0.1", "--limit", "1"], "--out"),
    "predict-confidence": (["predict-confidence", "--data", "digits", "--sigma", "0.25", "--n", "2"], "--out"),
    "train": (["train", "--data", "digits", "--sigma", "0.25", "--epochs", "1"], "--checkpoint-dir"),
    "train-denoiser": (["train-denoiser", "--data", "digits", "--sigma", "0.25", "--epochs", "1"], "--checkpoint-dir"),
    "train-mixer": (["train-mixer", *MODEL, "--data", "digits", "--epochs", "1"], "--checkpoint-dir"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_an_output_another_process_writes(command, holder, checkpoint, tmp_path, capsys):
    argv, option = COMMANDS[command]
    folder = option == "--checkpoint-dir"
    path = holder.hold(tmp_path / ("ckpt" if folder else "out.tsv"), folder)
    model = [] if command == "train-denoiser" else [*MODEL, "--checkpoint", str(checkpoint)]
    if command == "train":
        model = MODEL
    code = cli.main([*argv, *model, option, str(path), *FAST])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{option} {path} is being written by process {holder.process.pid} on host " in err
    assert not (path / "checkpoint.pt").exists() and not path.with_name("out.tsv.json").exists()  # nothing written


def test_under_torchrun_a_refusal_is_one_line_and_stops_every_process(holder, tmp_path):
    """Process 0 is refused before any work; torchrun stops the others, and its failure summary gives the refusal as
    the root cause (our error file) instead of a pointer to its docs; no process prints a traceback of its own."""
    from torchrun_model import torchrun

    out = holder.hold(tmp_path / "c.tsv")
    argv = ["certify", *MODEL, "--factory-weights", "--data", "digits", "--sigma", "0.25", "--n0", "10", "--n", "20",
            "--limit", "4", "--out", str(out), *FAST]  # fmt: skip
    done = torchrun(tmp_path, argv)
    assert done.returncode != 0
    refusal = f"rs-plugins: error: --out {out} is being written by process {holder.process.pid} on host "
    assert done.stderr.count(refusal) == 2  # printed by process 0, and shown by torchrun's summary as the cause
    assert done.stderr.count("Traceback (most recent call last)") == 1  # torchrun's own ChildFailedError only
    assert "To enable traceback see" not in done.stderr.split("Root Cause")[1]
    assert not out.exists()


def tiny_digits(count: int = 20):
    return Subset(load_digits("train"), range(count))


API = {
    "ResultsFile": lambda path: ResultsFile(path),
    "torchrun part file": lambda path: ResultsFile(partial_path(path, World(1, 2))),
    "train": lambda path: train(SmallCNN(width=4), tiny_digits(), _gaussian_loss(), GaussianNoise(0.25),
                                config=TrainConfig(epochs=1), checkpoint_dir=path),
    "train_denoiser": lambda path: train_denoiser(DnCNN(1, 3, 4), tiny_digits(), GaussianNoise(0.25),
                                                  config=DenoiserTrainConfig(epochs=1), checkpoint_dir=path),
    "train_mixer": lambda path: train_mixer(AdaptiveMixer([SmallCNN(width=4), SmallCNN(width=4)], width=4),
                                            tiny_digits(), config=MixerTrainConfig(epochs=1), checkpoint_dir=path),
}  # fmt: skip


def _gaussian_loss():
    from rs_plugins.builtin.gaussian import GaussianAugmentation

    return GaussianAugmentation()


@pytest.mark.parametrize("function", sorted(API))
def test_the_python_api_refuses_too(function, holder, tmp_path):
    folder = function.startswith("train")
    path = tmp_path / ("ckpt" if folder else "out.tsv")
    holder.hold(partial_path(path, World(1, 2)) if function == "torchrun part file" else path, folder)
    with pytest.raises(OutputInUseError, match=f"is being written by process {holder.process.pid}"):
        API[function](path)


# -- the lock itself -------------------------------------------------------------------------------------------


def test_a_process_reenters_its_own_lock_and_the_last_release_removes_it(tmp_path):
    out = tmp_path / "new" / "c.tsv"
    with one_writer(out) as outer:
        with ResultsFile(out) as results:  # the command holds --out, then its ResultsFile opens it again
            results.append(Row(0, 1, 1, 0.5, True, 0.1, 10))
        assert lock_path(out).exists() and json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert not lock_path(out).exists()
    outer.release()  # releasing twice is harmless
    with one_writer(out):
        pass


def test_folders_made_for_a_lock_are_removed_when_left_empty(tmp_path):
    """A refused command (bad arguments after the lock was taken) leaves no empty checkpoint folder behind."""
    with WriterLock(tmp_path / "a" / "b", "--checkpoint-dir", folder=True):
        assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a").exists()
    with WriterLock(tmp_path / "c", "--checkpoint-dir", folder=True):
        (tmp_path / "c" / "checkpoint.pt").write_bytes(b"x")
    assert (tmp_path / "c" / "checkpoint.pt").exists()


def test_a_file_system_without_flock_runs_unlocked_with_a_warning(tmp_path, capsys):
    """Lustre without -o flock answers ENOSYS: the run goes on, and says that it is not protected."""
    with mock.patch.object(writer_lock.fcntl, "flock", side_effect=OSError(errno.ENOSYS, "Function not implemented")):
        with one_writer(tmp_path / "c.tsv"):
            pass
    err = capsys.readouterr().err
    assert "cannot lock" in err and "does not support flock" in err and "report refuses" in err
    assert not lock_path(tmp_path / "c.tsv").exists()


# -- readers refuse an image counted twice ---------------------------------------------------------------------


def certify_file(path: Path, rows: list[str]) -> Path:
    path.write_text("\t".join(CERTIFY_COLUMNS) + "\n" + "".join(rows))
    return path


ROW0, ROW1 = "0\t3\t3\t0.5\t1\t0:00:01\t100\n", "1\t4\t4\t0.25\t1\t0:00:01\t100\n"
ROW0_LATER = "0\t3\t3\t0.5\t1\t0:00:02.5\t100\n"  # the same result, written by a second process at another time
ROW0_OTHER = "0\t3\t3\t0.75\t1\t0:00:01\t100\n"


def test_report_refuses_an_image_on_two_rows_with_different_results(tmp_path, capsys):
    path = certify_file(tmp_path / "c.tsv", [ROW0, ROW1, ROW0_OTHER])
    assert cli.main(["report", str(path), "--noise", "gaussian"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: image index 0 is on 2 rows with different results (1 image index appears more than once)" in err


def test_report_counts_identical_duplicates_once_with_a_note(tmp_path, capsys):
    """A file two processes wrote before the lock existed: the same results twice, at other times."""
    path = certify_file(tmp_path / "c.tsv", [ROW0, ROW1, ROW0_LATER, ROW1])
    assert cli.main(["report", str(path), "--noise", "gaussian"]) == 0
    out, err = capsys.readouterr()
    assert "note: " in err and "2 image indices appear on more than one row with identical results" in err
    assert "images: 2 (abstained: 0)" in out


def test_attack_certified_refuses_duplicates(tmp_path):
    path = certify_file(tmp_path / "c.tsv", [ROW0, ROW0_OTHER])
    with pytest.raises(ResultsFileError, match="image index 0 is on 2 rows"):
        read_certified(path, 0.25, "gaussian")


def test_resume_refuses_duplicates(tmp_path):
    path = certify_file(tmp_path / "c.tsv", [ROW0, ROW0_OTHER])
    (tmp_path / "c.tsv.json").write_text(json.dumps({"sigma": 0.25}))
    with pytest.raises(ResultsFileError, match="image index 0 is on 2 rows"):
        ResultsFile(path, settings={"sigma": 0.25})
    assert not lock_path(path).exists()  # a refused open lets go of the lock


def test_the_p_b_reader_refuses_duplicates(tmp_path):
    data = TensorDataset(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    path = tmp_path / "votes.tsv"
    settings = {"n": 4, "num_classes": 2, "data_identity": data_identity(data)}
    with ResultsFile(path, CONFIDENCE_COLUMNS, settings) as results:
        for row in (ConfidenceRow(0, 0, ((0, 4),), 0.1), ConfidenceRow(1, 1, ((1, 4),), 0.1)):
            results.append(row)
    with path.open("a") as f:
        f.write("0\t0\t1:4\t0:00:00.1\n")
    with pytest.raises(ResultsFileError, match="image index 0 is on 2 rows with different results"):
        read_confidence_targets(path, data, 2, "--loss-option confidence")
