"""The preference vector of the balancers that follow TorchJD's ``pref_vector`` argument."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from moopt.validation import FloatArray, as_finite_vector

__all__ = ["as_preference", "plain_preference", "preference_length", "preference_or_default"]


def as_preference(value: ArrayLike | None, name: str = "pref_vector") -> FloatArray | None:
    """Return a preference vector as a finite float64 vector, or None for the default."""
    return None if value is None else as_finite_vector(value, name)


def plain_preference(value: FloatArray | None) -> list[float] | None:
    """Return a preference vector as plain Python values, for ``repr`` and state dicts."""
    return None if value is None else [float(x) for x in value]


def preference_or_default(value: FloatArray | None, k: int, default: float) -> FloatArray:
    """Return the preference vector, or ``default`` for every one of the ``k`` objectives."""
    return np.full(k, default) if value is None else value.copy()


def preference_length(value: Any) -> int | None:
    """Return the number of objectives a preference vector fixes, or None (any ``k``)."""
    return None if value is None else len(value)
