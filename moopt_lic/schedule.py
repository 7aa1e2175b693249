"""The learning-rate schedules of ``--lr-schedule``, as factors of ``--lr`` per step."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["lr_factor"]


def lr_factor(schedule: str, total: int) -> Callable[[int], float]:
    """Return the factor of the base learning rate at each step, for ``LambdaLR``.

    Parameters
    ----------
    schedule : str
        ``cosine`` (from 1 down to 0 at step ``total``), ``step`` (1, then 0.1 from 90 % of
        the run on) or ``constant`` (any other name: 1 throughout).
    total : int
        The run's number of steps.

    Returns
    -------
    Callable[[int], float]
        The factor at a step.
    """

    # A plain function, not a callable object: LambdaLR.state_dict() saves the latter's
    # attributes, and the checkpoint holds no schedule of its own.
    def factor(step: int) -> float:
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if schedule == "step":
            return 0.1 if step >= 0.9 * total else 1.0
        return 1.0

    return factor
