"""torchrun sharding of a per-image run: each process writes a resumable part file beside the output, and process 0
merges the parts into the one results file (atomically, in index order) when all are done.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..results.counts import CountsLog, counts_path, merge_counts
from ..results.files import (
    ATTACK_COLUMNS,
    CONFIDENCE_COLUMNS,
    RECORD_KEYS,
    AttackRow,
    ResultsFile,
    Row,
    check_settings,
    format_row,
    load_rows,
    read_attack_results,
    read_confidence,
    read_results,
    sidecar_path,
)
from .distributed import World, barrier, shard


def partial_path(out: str | os.PathLike, world: World) -> Path:
    """The file process ``rank`` of ``size`` writes its share to, beside ``out``: ``<out>.part-<rank>-of-<size>``."""
    out = Path(out)
    return out.with_name(f"{out.name}.part-{world.rank}-of-{world.size}")


def _partials(out: Path) -> list[Path]:
    pattern = re.compile(re.escape(out.name) + r"\.part-\d+-of-\d+")
    return sorted(p for p in out.parent.glob(out.name + ".part-*") if pattern.fullmatch(p.name))


def _read(path: Path, columns: Sequence[str]) -> list[Row] | list[AttackRow]:
    """The rows of ``out``: certify or predict rows (checked by ``read_results``), attack or confidence rows."""
    if tuple(columns) == CONFIDENCE_COLUMNS:
        return read_confidence(path)
    return read_attack_results(path) if tuple(columns) == ATTACK_COLUMNS else read_results(path)


def _partial_rows(path: Path, settings: dict | None) -> list[Row]:
    """Finished rows of a partial file left by an earlier run, refused if it was written with other settings."""
    sidecar = sidecar_path(path)
    if settings is not None and sidecar.is_file():
        wanted = json.loads(json.dumps(settings, default=str))  # as ResultsFile stores them
        stored = json.loads(sidecar.read_text(encoding="utf-8"))
        check_settings(path, {k: v for k, v in stored.items() if k not in RECORD_KEYS}, wanted)
    return load_rows(path)[1]


def merge_results(
    out: str | os.PathLike, columns: Sequence[str], settings: dict | None = None
) -> list[Row] | list[AttackRow]:
    """Merge the partial files beside ``out`` into it, one row per key (index, or (index, eps) for attack rows)
    in key order, and delete them.

    ``out`` is rewritten atomically (a temporary file, then a rename), so a merge killed half-way loses nothing:
    the partials are deleted only once ``out`` holds their rows, and a rerun merges again without duplicates.
    """
    out = Path(out)
    rows: dict = {}
    for row in _read(out, columns) if out.is_file() else []:
        rows.setdefault(row.key, row)
    partials = _partials(out)
    for path in partials:
        for row in _partial_rows(path, settings):
            rows.setdefault(row.key, row)
    merged = [rows[i] for i in sorted(rows)]
    tmp = out.with_name(out.name + ".merging")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(columns) + "\n")
        f.writelines(format_row(row, columns) for row in merged)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    for path in partials:
        path.unlink()
        path.with_name(path.name + ".json").unlink(missing_ok=True)
    return merged


def run_sharded(
    work: Callable[[ResultsFile, list[int]], object],
    out: str | os.PathLike,
    columns: Sequence[str],
    settings: dict | None,
    indices: Sequence[int],
    world: World | None = None,
    provenance: dict | None = None,
    group: int = 1,
    counts: bool = False,
) -> list[Row] | list[AttackRow]:
    """Run ``work(results, indices)`` on this process's share of ``indices`` and gather every share in ``out``.

    A lone process writes ``out`` itself. Under torchrun, process r of K writes ``partial_path(out, world)``
    (a ``ResultsFile`` with the same settings, so it resumes), and once all are done the main process merges the
    partials into ``out`` in index order. Indices already in ``out`` or in partial files left by a killed run,
    of any process count, are skipped, so rerunning with the same or another number of processes resumes. Each
    image's noise is seeded from (seed, index), so the merged rows equal a one-process run's.

    ``provenance`` (versions, device, date) goes into the sidecar of ``out`` and of each partial file; it is
    recorded, never compared.

    ``counts``: each file gets its counts log beside it (``results.counts``), handed to ``work(results, indices,
    counts_log)``; the parts' logs are merged into ``<out>.counts`` with the results.

    Attack rows (``ATTACK_COLUMNS``) are keyed by (index, eps), and an attack's random starts are seeded per group
    of ``group`` consecutive ``indices``: the processes then share out whole groups, each with all its images
    (``work`` skips the finished pairs, which are in ``results.done``), and ``out`` ends sorted by (index, eps)
    whatever the process count, so that it equals a one-process run row for row.

    Returns:
        All rows of ``out`` on the main process; ``[]`` on the others.
    """
    world = world or World()
    out = Path(out)
    left = {row.key for path in _partials(out) for row in _partial_rows(path, settings)}  # before anyone writes
    if world.main:  # refuse other settings before any work, or start the file with its settings and provenance
        ResultsFile(out, columns, settings, provenance).close()
    barrier(world)
    done = left | {row.key for row in _read(out, columns)}
    groups = [indices[start : start + group] for start in range(0, len(indices), group)]
    mine = [i for share in shard(groups, world) for i in share if i not in done]  # (index, eps) keys drop no image
    target = out if world.size == 1 else partial_path(out, world)
    with ResultsFile(target, columns, settings, None if target == out else provenance) as results:
        log = CountsLog(counts_path(target), {row.key for row in results.rows}) if counts else None
        results.done.update(done)  # finished in another file: skipped as this file's own rows are
        try:
            if mine:  # nothing left here (a finished run resumed, or more processes than images): no work to start
                work(results, mine, log) if counts else work(results, mine)
        finally:
            if log is not None:
                log.close()
        rows = results.rows
    barrier(world)
    if not world.main:
        return []
    attack = tuple(columns) == ATTACK_COLUMNS  # written group by group, eps by eps: sorted as a merge sorts them
    count_parts = merge_counts(out, lambda path: {row.key for row in load_rows(path)[1]})  # before their results
    merged = merge_results(out, columns, settings) if world.size > 1 or left or attack else rows
    for part in count_parts:
        part.unlink()
    return merged
