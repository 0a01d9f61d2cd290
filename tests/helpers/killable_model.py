"""A model factory for the SIGKILL resume test: ``killable_model:build`` (``tests/helpers`` on PYTHONPATH).

With ``KILL_AFTER_FORWARDS=N`` in the environment the process kills itself with SIGKILL on its N-th forward
pass, as an out-of-memory killer or a pre-empted job would: no cleanup, no flush, no exit handler.
"""

import os
import signal

import torch

from rs_plugins.nets import SmallCNN


class Killable(SmallCNN):
    def __init__(self) -> None:
        torch.manual_seed(0)  # the same weights in every process
        super().__init__(width=4)
        self.forwards = 0
        self.kill_after = int(os.environ.get("KILL_AFTER_FORWARDS", "0"))

    def forward(self, x):
        self.forwards += 1
        if self.forwards == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def build() -> Killable:
    return Killable()
