"""One writer per results file or checkpoint folder: an advisory lock (``fcntl.flock``) on a file beside it.

Every command that appends to or resumes a file holds the lock for as long as it writes, so a second process started
on the same ``--out`` (a re-submitted cluster job, a second terminal) is refused at once instead of writing every
image a second time. The OS releases a flock when its process ends, however it ends, so a killed run never leaves a
stale lock; the lock file itself is removed on a clean exit and harmlessly reused after a crash. A process re-enters
the locks it already holds (a command that locks ``--out`` may open it again). Where the file system refuses
flock (e.g. Lustre mounted with ``noflock``) the run goes on unlocked after a warning; see docs/guarantees.md.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from ..errors import OutputInUseError

LOCK_SUFFIX = ".lock"
FOLDER_LOCK = "writer.lock"  # inside a checkpoint folder
_HELD: dict[str, list] = {}  # lock path -> [file descriptor or None (unlocked file system), depth], this process's


def lock_path(target: str | os.PathLike, *, folder: bool = False) -> Path:
    """Where the lock of ``target`` lives: ``<file>.lock`` beside a file, ``<folder>/writer.lock`` in a folder."""
    target = Path(target)
    return target / FOLDER_LOCK if folder else target.with_name(target.name + LOCK_SUFFIX)


class WriterLock:
    """The lock on ``target`` held by this process until ``release()`` (or the end of a ``with`` block).

    Args:
        target: the results file, or the checkpoint folder (``folder=True``). Folders missing for the lock file are
            created, and removed again on release if nothing was written in them.
        option: the flag that named it (``--out``, ``--checkpoint-dir``), for the message.

    Raises:
        OutputInUseError: another process holds the lock; the message names it (pid, host, command, start).
    """

    def __init__(self, target: str | os.PathLike, option: str = "--out", *, folder: bool = False) -> None:
        self._held = False
        self.target, self.option = Path(target), option
        self.path = lock_path(self.target, folder=folder)
        self._created: list[Path] = []  # folders made for the lock file, removed again if the run left them empty
        self._key = os.path.realpath(self.path)
        if self._key in _HELD:
            _HELD[self._key][1] += 1
        else:
            _HELD[self._key] = [self._acquire(), 1]
        self._held = True

    def _acquire(self) -> int | None:
        while True:
            missing = [p for p in self.path.absolute().parents if not p.exists()]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._created += reversed(missing)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a finishing holder removed the emptied folder just now: make it again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                self._remove_created()
                raise OutputInUseError(self._refusal(holder)) from None
            except OSError as err:  # ENOLCK, ENOSYS, EOPNOTSUPP: a file system without flock
                os.close(fd)
                print(f"rs-plugins: warning: cannot lock {self.path} ({err.strerror}): this file system does not "
                      f"support flock, so a second process writing {self.option} {self.target} would not be "
                      "refused; start one run per output (report refuses an image written twice with other results)",
                      file=sys.stderr)  # fmt: skip
                self.path.unlink(missing_ok=True)
                return None
            try:  # a holder that released it may have removed the file between our open and flock: retry
                current = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
        program = "rs-plugins" if program == "__main__.py" else program  # python -m rs_plugins
        command = " ".join([program, *sys.argv[1:5]]) if program else ""
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
        record["started"] = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(record) + "\n").encode())
        return fd

    def _remove_created(self) -> None:
        """Remove the folders this lock created where nothing else was put in them (a refused or failed run)."""
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue
            except OSError:  # not empty: the run wrote its results there
                break
        self._created = []

    def _refusal(self, holder: dict) -> str:
        who = "another process"
        if holder.get("pid"):
            who = f"process {holder['pid']} on host {holder.get('host', '?')}"
            who += f" (`{holder['command']}`" if holder.get("command") else " ("
            who += f", started {holder.get('started', '?')})"
        return (
            f"{self.option} {self.target} is being written by {who}; two writers would put their rows in it twice. "
            f"Wait for that run to end or stop it (a killed run releases it at once), or give another {self.option}"
        )

    def release(self) -> None:
        """Let another process write ``target``; the last release of a re-entered lock removes the lock file."""
        if not self._held:
            return
        self._held = False
        entry = _HELD[self._key]
        entry[1] -= 1
        if entry[1]:
            return
        del _HELD[self._key]
        if entry[0] is not None:
            self.path.unlink(missing_ok=True)  # while still locked: a waiting opener retries on a fresh file
            os.close(entry[0])
        self._remove_created()

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_held", False):
            self.release()


def _holder(fd: int) -> dict:
    """What the holding process wrote into the lock file (empty if it has not yet written it)."""
    try:
        found = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def one_writer(target: str | os.PathLike, option: str = "--out", *, folder: bool = False) -> WriterLock:
    """``with one_writer(path, "--out"): ...``: hold the lock on ``path`` (a file, or a folder) for the block."""
    return WriterLock(target, option, folder=folder)
