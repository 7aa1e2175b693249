"""Fixed weights: the usual scalarization ``L = Σ_i a_i L_i``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from moopt.balancers.base import Balancer
from moopt.validation import FloatArray, as_finite_vector

__all__ = ["WeightedSumBalancer"]


def _as_fixed_weights(value: ArrayLike, name: str = "weights") -> FloatArray:
    """Check fixed weights: finite, non-negative, not all zero."""
    weights = as_finite_vector(value, name)
    if np.any(weights < 0):
        raise ValueError(f"{name} must be ≥ 0, got {weights.tolist()}")
    if not np.any(weights > 0):
        raise ValueError(f"{name} must not all be zero, got {weights.tolist()}")
    return weights


class WeightedSumBalancer(Balancer):
    """Fixed, non-negative weights, returned exactly as given (not normalised).

    This is standard scalarised training: with ``weights=[1, λ']`` for (rate, distortion) the
    update follows ``∇(R + λ' D)``. It needs only the losses, so a training step costs one
    backward pass of ``Σ_i a_i L_i``.

    Parameters
    ----------
    weights : array_like
        One weight ``a_i ≥ 0`` per objective, not all zero.

    Examples
    --------
    >>> balancer = WeightedSumBalancer([1.0, 0.5])
    >>> balancer.weights([0.8, 120.0])
    array([1. , 0.5])
    """

    requires_gram = False
    weights_sum_to_one = False

    def __init__(self, weights: ArrayLike) -> None:
        self._fixed = _as_fixed_weights(weights)

    @property
    def num_objectives(self) -> int:
        """The number of objectives, fixed by the length of ``weights``."""
        return len(self._fixed)

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        return self._fixed.copy()

    def _config(self) -> dict[str, Any]:
        return {"weights": self._fixed.tolist()}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self._fixed = _as_fixed_weights(state["weights"], "state['weights']")
