"""``rs-plugins attack`` sharded across torchrun processes: the merged --out equals a one-process run row for row,
and a killed run resumes, with the same or another process count, without losing or repeating an (image, eps) pair
(two CPU processes with gloo, as in test_sharding.py).

PGDL2 with random starts and two steps: each point, and so its perturbation's norm, depends on the random start
that its attack group's seed draws, so the rows match only if every process attacks the very groups (images and
seeds) that a one-process run does.
"""

from __future__ import annotations

import json
import sys

import pytest
from torchrun_model import torchrun as launch
from torchrun_model import write_model

from rs_plugins.attacks.adversaries import make_adversary
from rs_plugins.attacks.engine import attack_dataset
from rs_plugins.certify.distributed import World
from rs_plugins.certify.sharding import partial_path
from rs_plugins.cli import main
from rs_plugins.results.files import ATTACK_COLUMNS, RECORD_KEYS, ResultsFile, read_attack_results
from rs_plugins.sources.data import load_digits

IMAGES, BATCH, EPS, STEPS = 10, 3, (0.5, 1.0), 2  # groups [0 1 2] [3 4 5] [6 7 8] [9]: rank 1 of 2 has [3 4 5] [9]
# Forward passes: one to check the data, then per group one for the class count, one clean prediction and, per eps,
# STEPS attack steps and one prediction at the adversarial point: 1 + 8 for rank 1's first group.
DIE_AFTER = 12


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack_shard")
    write_model(root, "attack_shard_model", 4)
    return root


# The model module's folder goes on sys.path by hand, as in test_sharding.py.


def args(out, batch_size=BATCH):
    return [
        "attack", "--factory-weights", "--model", "attack_shard_model:net", "--data", "digits", "--limit", str(IMAGES),
        "--batch-size", str(batch_size), "--attack", "PGDL2", "--attack-option", f"steps={STEPS}",
        "--eps", *map(str, EPS), "--seed", "3", "--device", "cpu", "--no-progress", "--out", str(out),
    ]  # fmt: skip


def torchrun(root, out, die_after=None):
    return launch(root, args(out), die_after)


def run_here(root, out, batch_size=BATCH):
    sys.path.insert(0, str(root))
    try:
        assert main(args(out, batch_size)) == 0
    finally:
        sys.path.remove(str(root))
    return out


def cells(path):
    """Rows without the time column, which differs between runs."""
    return [(r.idx, r.label, r.eps, r.predict, r.adv_predict, r.perturbation) for r in read_attack_results(path)]


def settings_of(out):
    """The settings stored with a results file, without the provenance (dates, hosts) that differs per run."""
    return {k: v for k, v in json.loads(out.with_name(out.name + ".json").read_text()).items() if k not in RECORD_KEYS}


@pytest.fixture(scope="module")
def reference(root):
    """The same attack in one process: every (image, eps) once, in (idx, eps) order."""
    out = run_here(root, root / "one.tsv")
    assert [(r[0], r[2]) for r in cells(out)] == [(i, e) for i in range(IMAGES) for e in EPS]
    return out


def test_the_rows_depend_on_the_attack_groups(root, reference):
    """Other groups (another batch size) draw other random starts: the equalities below are not vacuous."""
    other = run_here(root, root / "batch2.tsv", batch_size=2)
    assert [r[5] for r in cells(other)] != [r[5] for r in cells(reference)]


def test_killed_two_process_attack_resumes_to_the_one_process_rows(root, reference):
    """Rank 1 dies attacking its second group [9] (see DIE_AFTER); rank 0 finishes its groups and waits at the
    barrier until torchrun stops it. The rerun with two processes finishes [9] and merges."""
    out = root / "two.tsv"
    killed = torchrun(root, out, die_after=DIE_AFTER)
    assert killed.returncode != 0
    parts = [partial_path(out, World(rank, 2)) for rank in range(2)]
    assert sorted(r.key for r in read_attack_results(parts[1])) == [(i, e) for i in (3, 4, 5) for e in EPS]
    assert read_attack_results(out) == []  # nothing merged yet
    done = torchrun(root, out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert cells(out) == cells(reference)  # every pair once, in (idx, eps) order, the same points
    assert not any(p.exists() for p in parts) and not list(root.glob("two.tsv.part-*"))
    assert settings_of(out) == settings_of(reference)
    assert done.stdout.count("robust acc %") == 1  # only the main process reports


class Killed(Exception):
    pass


class DiesAfter(ResultsFile):
    """A partial results file whose process is killed after ``rows`` more rows, in the middle of a group."""

    def __init__(self, *args, rows: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.left = rows

    def append(self, row):
        if self.left == 0:
            raise Killed
        self.left -= 1
        super().append(row)


def test_one_process_finishes_what_a_killed_three_process_attack_left(root, reference, monkeypatch):
    """Process r of 3 owns groups r, r + 3, ...: [0 1 2] [9], [3 4 5], [6 7 8]. Killed with rank 0 between
    [9]'s two radii, rank 1 in the middle of its group's second radius and rank 2 before any row, the run is
    finished by one process, which recomputes the unfinished groups exactly and merges."""
    sys.path.insert(0, str(root))
    try:
        from attack_shard_model import net  # noqa: PLC0415
    finally:
        sys.path.remove(str(root))
    out = root / "three.tsv"
    settings = settings_of(reference)
    adversary = make_adversary("PGDL2", options={"steps": STEPS})
    shares = {0: [0, 1, 2, 9], 1: [3, 4, 5], 2: [6, 7, 8]}
    for rank, rows in ((0, 7), (1, 4), (2, 0)):
        part = DiesAfter(partial_path(out, World(rank, 3)), ATTACK_COLUMNS, settings, rows=rows)
        with part, pytest.raises(Killed):
            options = dict(indices=shares[rank], eps=EPS, batch_size=BATCH, seed=3, progress=False)
            attack_dataset(net(), load_digits("test"), adversary, part, **options)
    finished = {row for rank in range(3) for row in read_attack_results(partial_path(out, World(rank, 3)))}
    assert len(finished) == 11
    monkeypatch.setattr(sys, "path", [str(root), *sys.path])
    assert main(args(out)) == 0
    assert cells(out) == cells(reference)
    assert finished <= set(read_attack_results(out))  # kept as they were (times too): no pair was attacked again
    assert not list(root.glob("three.tsv.part-*"))
