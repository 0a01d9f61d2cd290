"""Step-decay learning rates, as ``scheduler.step()`` gives them or as the papers' scripts ran them.

``standard``: the rate is multiplied by ``gamma`` after every ``step`` epochs (or after each milestone), as
PyTorch's ``StepLR`` / ``MultiStepLR`` stepped once after each epoch give it (and as Cohen et al.'s
``train.py``, which calls ``scheduler.step(epoch)`` before each epoch, ran it).

``step-epoch``: as the Jeong et al. scripts (smoothing-consistency, smoothmix, smoothing-catrs) and Salman et
al.'s ``train_denoiser.py`` ran it: they call ``scheduler.step(epoch)`` *after* epoch ``epoch`` (0-based), and
``step(epoch)`` sets the rate of the next epoch to the closed form ``lr * gamma ** (epoch // step)``. The epoch
after ``e`` finished epochs thus runs at the standard rate of ``max(e - 1, 0)`` finished epochs: every decay
lands one epoch later (with step 50, the 52nd epoch is the first at 0.01, not the 51st).

``drop_once`` (CAT-RS's ImageNet ``--lr_drop 85``): the epoch after that many finished epochs runs at ``gamma``
times its rate, that epoch only, as in their script, whose next ``step(epoch)`` recomputes the closed form.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from ..validation import check_integer

LR_SCHEDULES = ("standard", "step-epoch")


def check_schedule(schedule: str, drop_once: int | None) -> None:
    """``lr_schedule`` is a known schedule and ``lr_drop_once`` a number of finished epochs (or None)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}; got {schedule!r}")
    if drop_once is not None:
        check_integer("lr_drop_once", drop_once, minimum=0)


def lr_factor(
    finished: int,
    *,
    step: int,
    gamma: float,
    milestones: Sequence[int] = (),
    schedule: str = "standard",
    drop_once: int | None = None,
) -> float:
    """The factor on the initial rate for the epoch that follows ``finished`` epochs (its 0-based index)."""
    done = max(finished - 1, 0) if schedule == "step-epoch" else finished
    decays = bisect.bisect_right(list(milestones), done) if milestones else done // step
    return gamma**decays * (gamma if finished == drop_once else 1.0)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    gamma: float,
    milestones: Sequence[int] = (),
    schedule: str = "standard",
    drop_once: int | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler a trainer steps once after each epoch for this schedule.

    The standard schedule stays PyTorch's ``StepLR`` / ``MultiStepLR`` (the checkpoints of earlier runs resume);
    the others are a ``LambdaLR`` of ``lr_factor``, whose rate is ``lr * gamma ** k``, the closed form
    ``step(epoch)`` computes.
    """
    check_schedule(schedule, drop_once)
    if schedule == "standard" and drop_once is None:
        if milestones:
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=gamma)
    options = dict(step=step, gamma=gamma, milestones=tuple(milestones), schedule=schedule, drop_once=drop_once)

    def factor(finished: int) -> float:  # a function, not an object: LambdaLR's state then holds no copy of it
        return lr_factor(finished, **options)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
