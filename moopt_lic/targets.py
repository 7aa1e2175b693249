"""Rate and quality targets of a run: ``--target-bpp`` and ``--target-psnr``.

A target holds one of the two objectives at a value the user names, whatever the balancer
does to λ: the trainer wraps its balancer in [`TargetBalancer`][moopt.TargetBalancer]. This
module turns the flags into the objective's index and loss value, converts losses back into
the user's units (bpp, dB), and keeps the targeted objective's history, from which the run
reports what it achieved and decides which checkpoints hold the target.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ACHIEVED_FRACTION",
    "HOLD_TOLERANCE",
    "Target",
    "TargetHistory",
    "achieved_steps",
    "distortion_for_psnr",
]

#: ``achieved`` in ``metrics.json`` is the mean over this last fraction of the steps.
ACHIEVED_FRACTION = 0.1

#: A stretch of steps holds the target when ``|log(mean L / target)|`` is at most this
#: (5 % of the rate, or 0.22 dB of PSNR).
HOLD_TOLERANCE = 0.05

RATE, DISTORTION = 0, 1  # the objectives' order in the trainer: rate, then distortion


def distortion_for_psnr(psnr: float, lmbda: float) -> float:
    """Return the distortion ``λ·255²·MSE`` of an image coded at ``psnr`` dB."""
    return lmbda * 255**2 * 10 ** (-psnr / 10)


@dataclass(frozen=True)
class Target:
    """One objective held at a value: the rate in bpp or the quality in dB of PSNR.

    Attributes
    ----------
    objective : {"rate", "distortion"}
        Which objective is held.
    value : float
        The target in the user's units: bpp for the rate, dB for the distortion.
    lmbda : float
        The run's λ, which converts a PSNR into the distortion loss ``λ·255²·MSE``.
    """

    objective: Literal["rate", "distortion"]
    value: float
    lmbda: float

    @property
    def index(self) -> int:
        """The objective's position in the trainer's ``(rate, distortion)`` losses."""
        return RATE if self.objective == "rate" else DISTORTION

    @property
    def loss(self) -> float:
        """The target as a loss value (what the balancer holds)."""
        if self.objective == "rate":
            return self.value
        return distortion_for_psnr(self.value, self.lmbda)

    @property
    def unit(self) -> str:
        """``"bpp"`` or ``"dB"``."""
        return "bpp" if self.objective == "rate" else "dB"

    def in_units(self, loss: float) -> float:
        """Convert a loss value of the targeted objective in the user's units (bpp or dB)."""
        if self.objective == "rate":
            return loss
        return -10 * math.log10(loss / (self.lmbda * 255**2))

    def targets(self) -> list[float | None]:
        """Return the ``targets`` argument of [`TargetBalancer`][moopt.TargetBalancer]."""
        values: list[float | None] = [None, None]
        values[self.index] = self.loss
        return values


def target_of(target_bpp: float | None, target_psnr: float | None, lmbda: float) -> Target | None:
    """Return the run's target from its two flags (at most one is set), or None."""
    if target_bpp is not None:
        return Target("rate", target_bpp, lmbda)
    if target_psnr is not None:
        return Target("distortion", target_psnr, lmbda)
    return None


@dataclass
class TargetHistory:
    """The targeted objective's loss over the last ``window`` steps.

    ``achieved`` and the checkpoints' standing read it. Only the last ``window`` steps are
    kept: every question the trainer asks of the history reads at most that many, and a run
    of a million steps should not carry a million losses in memory and in each checkpoint.
    Kept in the checkpoint, so a resumed run reports what an uninterrupted one would.

    Attributes
    ----------
    target : Target
        The target whose objective is recorded.
    window : int
        How many of the latest steps are kept (at least 1).
    losses : collections.deque of float
        The targeted objective's loss at each of the latest ``window`` steps, oldest first.
    """

    target: Target
    window: int
    losses: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be at least 1 step, got {self.window}")
        self.restore(self.losses)

    def record(self, losses: Any) -> None:
        """Append this step's value of the targeted objective (``losses`` holds both)."""
        self.losses.append(float(losses[self.target.index]))

    def restore(self, losses: Iterable[float]) -> None:
        """Replace the history by ``losses`` (a checkpoint's), keeping the latest ``window``."""
        self.losses = deque((float(loss) for loss in losses), maxlen=self.window)

    def achieved(self, total_steps: int) -> float:
        """Return the mean of the last ``ACHIEVED_FRACTION`` of the steps, in bpp or dB."""
        return self.mean_in_units(achieved_steps(total_steps))

    def mean_in_units(self, steps: int) -> float:
        """Return the mean over the last ``steps`` steps in bpp or dB (NaN before the first)."""
        values = [self.target.in_units(loss) for loss in self._latest(steps)]
        return sum(values) / len(values) if values else math.nan

    def holds_over(self, steps: int) -> bool:
        """Whether the last ``steps`` steps held the target on average."""
        return self.error(steps) <= HOLD_TOLERANCE

    def error(self, steps: int) -> float:
        """``|log(mean / target)|`` over the last ``steps`` steps (∞ before the first step)."""
        window = self._latest(steps)
        if not window:
            return math.inf
        return abs(math.log(sum(window) / len(window) / self.target.loss))

    def _latest(self, steps: int) -> list[float]:
        """Return the losses of the last ``steps`` steps (no more than ``window`` are kept)."""
        if steps > self.window:
            raise ValueError(f"the history keeps the last {self.window} steps, not {steps}")
        return list(self.losses)[-steps:]


def achieved_steps(total_steps: int) -> int:
    """Return how many of a run's last steps its ``achieved`` value averages.

    ``ACHIEVED_FRACTION`` of ``total_steps``, rounded up: at least one.
    """
    return max(1, math.ceil(ACHIEVED_FRACTION * total_steps))
