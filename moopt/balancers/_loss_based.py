"""Checks and helpers shared by the loss-based balancers (DWA, uncertainty, RLW, STCH).

They sit beside [`moopt.validation`][moopt.validation] and raise the same kind of one-line
[`TypeError`](https://docs.python.org/3/library/exceptions.html#TypeError) or
[`ValueError`](https://docs.python.org/3/library/exceptions.html#ValueError) naming the argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moopt.validation import FloatArray, as_positive_int

__all__ = [
    "as_optional_num_objectives",
    "as_positive_scalar",
    "as_seed",
    "check_positive_losses",
    "saved_num_objectives",
    "stable_softmax",
]


def as_positive_scalar(value: Any, name: str) -> float:
    """Return ``value`` as a finite float > 0, or raise naming ``name``.

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If it is ≤ 0, NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {number}")
    return number


def as_seed(value: Any, name: str = "seed") -> int:
    """Return ``value`` as a seed for ``numpy.random.default_rng``, an int ≥ 0.

    Raises
    ------
    TypeError
        If ``value`` is not an integer.
    ValueError
        If it is negative.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be ≥ 0, got {value}")
    return int(value)


def as_optional_num_objectives(value: Any, name: str = "num_objectives") -> int | None:
    """Return ``None`` (k fixed by the first call) or ``value`` checked as an int ≥ 1."""
    return None if value is None else as_positive_int(value, name)


def saved_num_objectives(current: int | None, saved: Any) -> int | None:
    """Return the k of a balancer after loading a state saved with ``saved`` objectives.

    The base class has already refused a mismatch when ``current`` is set; a fresh balancer
    (``current`` None) takes the saved k.
    """
    if current is not None:
        return current
    return as_optional_num_objectives(saved, "state['num_objectives']")


def check_positive_losses(losses: FloatArray, name: str, reason: str) -> None:
    """Raise a ValueError naming the first loss that is not > 0, and why it must be.

    Raises
    ------
    ValueError
        If some entry of ``losses`` is ≤ 0.
    """
    bad = np.flatnonzero(losses <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] = {losses[i]:.6g} must be > 0: {reason}")


def stable_softmax(scores: FloatArray) -> FloatArray:
    """Return ``softmax(scores)`` for any float scores, ±inf and overflowing ones included.

    Scores that overflowed to ``+inf`` share all the mass equally (the limit of the softmax);
    ``-inf`` scores get none.
    """
    finite = np.clip(scores, -np.finfo(np.float64).max, np.finfo(np.float64).max)
    # x − max overflows to −inf only when the scores span more than the float range, and
    # exp(−inf) = 0 is then the right limit, so only the warning is silenced
    with np.errstate(over="ignore"):
        shifted = finite - finite.max()
    exp = np.exp(shifted)
    weights: FloatArray = exp / exp.sum()
    return weights
