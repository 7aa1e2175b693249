"""The preference vector of the balancers that follow TorchJD's ``pref_vector`` argument."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from moopt.balancers.base import Balancer
from moopt.validation import FloatArray, as_finite_vector

__all__ = [
    "PreferenceBalancer",
    "as_preference",
    "plain_preference",
    "preference_length",
    "preference_or_default",
]


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


class PreferenceBalancer(Balancer):
    """A Gram-based balancer whose only setting is TorchJD's ``pref_vector`` (None: default).

    Subclasses write ``_weights`` and read the preference with
    ``preference_or_default(self.pref_vector, k, default)``.
    """

    requires_gram = True
    weights_sum_to_one = False

    def __init__(self, pref_vector: ArrayLike | None = None) -> None:
        self.pref_vector = as_preference(pref_vector)

    @property
    def num_objectives(self) -> int | None:
        """The length of ``pref_vector``, or None (any ``k``) for the default."""
        return preference_length(self.pref_vector)

    def _config(self) -> dict[str, Any]:
        return {"pref_vector": plain_preference(self.pref_vector)}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.pref_vector = as_preference(state["pref_vector"], "state['pref_vector']")
