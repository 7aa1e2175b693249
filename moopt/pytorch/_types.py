"""The glue's vocabulary: what a step takes (losses, Gram mode) and gives (a `BalancedStep`).

They live here rather than in `moopt.pytorch` itself so that every private module can return
a `BalancedStep` or raise a `NonFiniteError` without importing the public API; `moopt.pytorch`
re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from moopt.validation import FloatArray

GramMode = Literal["sequential", "batched"]
GRAM_MODES = ("sequential", "batched")

LossesLike = Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


class NonFiniteError(ValueError):
    """A loss or an objective's gradient is NaN/∞; the message names the objective(s)."""


@dataclass(frozen=True)
class BalancedStep:
    """What [`balanced_backward`][moopt.pytorch.balanced_backward] did.

    Attributes
    ----------
    weights : numpy.ndarray
        The balancer's weights, float64 of shape ``(k,)``; ``.grad`` received
        ``Σ_i weights[i] ∇L_i``.
    losses : numpy.ndarray
        The k loss values, float64 of shape ``(k,)``.
    gram : numpy.ndarray or None
        Exactly the ``k × k`` matrix handed to the balancer (parameter Gram, or feature Gram
        in ``features`` mode; unscaled under a ``GradScaler``), float64; None when the
        balancer did not need one.
    names : tuple of str
        The objectives' names (the mapping's keys, or ``"objective 0"``, ...).
    skipped : bool
        True when, under a ``GradScaler``, a gradient overflowed: the balancer was left as
        it was, ``weights`` are NaN, and ``scaler.step`` will skip the optimizer step.
    """

    weights: FloatArray
    losses: FloatArray
    gram: FloatArray | None
    names: tuple[str, ...]
    skipped: bool = False
