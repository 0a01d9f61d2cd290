"""Certification sharded across torchrun processes: the merged --out equals a one-process run row for row, and a
killed run resumes without losing or repeating an image (two CPU processes with gloo, as in test_distributed.py).
"""

from __future__ import annotations

import json
import sys

import pytest
from torchrun_model import torchrun as launch
from torchrun_model import write_model

from rs_plugins.builtin.gaussian import CohenCertifier, GaussianNoise
from rs_plugins.certify.distributed import World, shard
from rs_plugins.certify.runner import certify_dataset, predict_dataset
from rs_plugins.certify.sharding import partial_path
from rs_plugins.cli import main
from rs_plugins.errors import ResultsFileError
from rs_plugins.results.counts import CountsLog, counts_path
from rs_plugins.results.files import CERTIFY_COLUMNS, PREDICT_COLUMNS, RECORD_KEYS, ResultsFile, read_results
from rs_plugins.sources.data import load_digits

IMAGES = 12


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    write_model(root, "shard_model", 20)
    return root


# The tests put the model module's folder on sys.path by hand, only around the calls that import it (torchrun's
# processes get it through PYTHONPATH).


def args(root, out, command="certify"):
    sampling = ["--n", "200", "--batch-size", "40"] + (["--n0", "20"] if command == "certify" else [])
    return [
        command,
        "--random-weights",
        "--model",
        "shard_model:net",
        "--data",
        "digits",
        "--limit",
        str(IMAGES),
        "--sigma",
        "0.1",
        *sampling,
        "--alpha",
        "0.01",
        "--device",
        "cpu",
        "--no-progress",
        "--seed",
        "3",
        "--out",
        str(out),
    ]


def torchrun(root, out, die_after=None):
    return launch(root, args(root, out), die_after)


def cells(path):
    """Rows without the time column, which differs between runs."""
    return [(r.idx, r.label, r.predict, r.radius, r.correct) for r in read_results(path)]


@pytest.fixture(scope="module")
def reference(root):
    """The same certification in one process."""
    out = root / "one.tsv"
    sys.path.insert(0, str(root))
    try:
        assert main(args(root, out)) == 0
    finally:
        sys.path.remove(str(root))
    return out


def test_shards_are_disjoint_and_cover_without_padding():
    items = list(range(7))
    for size in (1, 2, 3, 8):
        shares = [shard(items, World(rank, size)) for rank in range(size)]
        assert sorted(i for share in shares for i in share) == items
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_killed_two_process_run_resumes_to_the_one_process_rows(root, reference):
    """Rank 1 dies in its second group of images (two checking passes first, then 11 passes per group of 2);
    the rerun finishes and merges."""
    out = root / "two.tsv"
    killed = torchrun(root, out, die_after=14)
    assert killed.returncode != 0
    parts = [partial_path(out, World(rank, 2)) for rank in range(2)]
    assert len(read_results(parts[1])) == 2  # rank 1 finished its first group before dying
    assert read_results(out) == []  # nothing merged yet
    done = torchrun(root, out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert cells(out) == cells(reference)  # every image once, in index order, same certificates
    assert not any(p.exists() for p in parts) and not list(root.glob("two.tsv.part-*"))  # the counts parts too
    assert counts_path(out).read_text() == counts_path(reference).read_text()  # each part's counts log, merged
    assert settings_of(root / "two.tsv") == settings_of(root / "one.tsv")
    assert done.stdout.count("ACR:") == 1  # only the main process reports


def settings_of(out):
    """The settings stored with a results file, without the provenance (dates, hosts) that differs per run."""
    return {k: v for k, v in json.loads(out.with_name(out.name + ".json").read_text()).items() if k not in RECORD_KEYS}


def _certify_share(root, out, rank, size, count):
    """What process ``rank`` of ``size`` had written when killed after ``count`` images."""
    sys.path.insert(0, str(root))
    try:
        from shard_model import net  # noqa: PLC0415
    finally:
        sys.path.remove(str(root))
    digits = load_digits("test")
    share = shard(list(range(IMAGES)), World(rank, size))[:count]
    settings = settings_of(root / "one.tsv")
    part = partial_path(out, World(rank, size))
    with ResultsFile(part, CERTIFY_COLUMNS, settings) as results, CountsLog(counts_path(part), []) as log:
        certify_dataset(
            net(),
            digits,
            GaussianNoise(0.1),
            CohenCertifier(),
            results,
            indices=share,
            n0=20,
            n=200,
            alpha=0.01,
            batch_size=40,
            seed=3,
            progress=False,
            counts_log=log,
        )


def test_one_process_finishes_what_a_killed_three_process_run_left(root, reference, monkeypatch):
    out = root / "three.tsv"
    for rank, count in ((0, 2), (1, 4), (2, 0)):
        _certify_share(root, out, rank, 3, count)
    monkeypatch.setattr(sys, "path", [str(root), *sys.path])
    assert main(args(root, out)) == 0
    assert cells(out) == cells(reference)
    assert counts_path(out).read_text() == counts_path(reference).read_text()
    assert not list(root.glob("three.tsv.part-*"))


def test_partials_from_other_settings_are_refused(root, reference, monkeypatch):
    out = root / "other.tsv"
    part = partial_path(out, World(1, 2))
    with ResultsFile(part, CERTIFY_COLUMNS, {"sigma": 0.5}):
        pass
    monkeypatch.setattr(sys, "path", [str(root), *sys.path])
    with pytest.raises(ResultsFileError, match="sigma=0.5.*sigma=0.1"):
        from rs_plugins.cli import build_parser

        parsed = build_parser().parse_args(args(root, out))
        parsed.func(parsed)


def test_predict_resumes_from_partials_too(root, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(root), *sys.path])
    from shard_model import net  # noqa: PLC0415

    reference, out = root / "p1.tsv", root / "p2.tsv"
    assert main(args(root, reference, "predict")) == 0
    settings = json.loads((root / "p1.tsv.json").read_text())
    digits = load_digits("test")
    with ResultsFile(partial_path(out, World(1, 2)), PREDICT_COLUMNS, settings) as results:
        predict_dataset(
            net(),
            digits,
            GaussianNoise(0.1),
            results,
            indices=[1, 3, 5],
            n=200,
            alpha=0.01,
            batch_size=40,
            seed=3,
            progress=False,
        )
    assert main(args(root, out, "predict")) == 0
    assert cells(out) == cells(reference)
