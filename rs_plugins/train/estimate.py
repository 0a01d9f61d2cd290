"""The cost line every trainer prints before the bulk of its work, as certify, predict and attack do: seconds per
epoch, timed over the first batches after a warm-up batch, and the total for the epochs left.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..certify.runner import duration

TIMED_BATCHES = 3
"""Batches timed after the warm-up batch before the line is printed (fewer when an epoch has fewer)."""


class EpochClock:
    """Times the first batches of the first epoch a run trains and says, once, what an epoch and the run will cost.

    Call ``batch_done()`` after every batch of that epoch; the line goes to ``say`` (default ``tqdm.write``, shown
    with or without progress bars) after the warm-up batch and ``TIMED_BATCHES`` more, or at the epoch's last batch.

    Args:
        what: the command, first word of the line (``train``, ``train-denoiser``, ``train-mixer``).
        batches: batches per epoch.
        epochs: epochs left to train (a resumed run counts only those).
        device: where the batches run; CUDA work is synchronised at the two timing points.
        evaluates: the run measures held-out accuracy after each epoch, which the line does not include.
        say: where the line goes; None: nowhere (a process other than the main one).
    """

    def __init__(self, what: str, batches: int, epochs: int, device: torch.device | str, *, evaluates: bool = False,
                 say: Callable[[str], None] | None = tqdm.write) -> None:  # fmt: skip
        self.what, self.batches, self.epochs = what, max(int(batches), 1), int(epochs)
        self.evaluates = evaluates
        self.device = torch.device(device)
        self.say = say
        self.done = 0
        self.started = time.perf_counter()  # until the warm-up batch ends: the fallback for a one-batch epoch
        self.first = 0.0
        self.warm = 0.0
        self.line: str | None = None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def batch_done(self) -> None:
        """Count one finished batch; print the line once enough of them are timed."""
        if self.line is not None or self.say is None:
            return
        self.done += 1
        if self.done == 1:
            self.warm = self._now()
            self.first = self.warm - self.started
            if self.batches > 1:
                return
        timed = self.done - 1
        if timed < min(TIMED_BATCHES, self.batches - 1) and self.done < self.batches:
            return
        per_batch = (self._now() - self.warm) / timed if timed else self.first
        per_epoch = per_batch * self.batches
        span = f"batches 2-{self.done}" if timed else "the first batch"
        epochs = "the epoch" if self.epochs == 1 else f"the {self.epochs} epochs"
        self.line = (
            f"{self.what}: about {duration(per_epoch)} per epoch of {self.batches} batches, "
            f"{duration(per_epoch * self.epochs)} for {epochs} left on {self.device.type} (timed over {span}"
            + ("; held-out evaluation not included)" if self.evaluates else ")")
        )
        self.say(self.line)
