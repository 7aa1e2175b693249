"""Property assertions shared by the solver and balancer tests (one place, many methods)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

WeightFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(losses, gram) -> weights``."""


def assert_valid_weights(weights: np.ndarray, k: int, *, sums_to_one: bool = True) -> None:
    """The weights are a finite float64 vector of length k (summing to 1 when required)."""
    assert isinstance(weights, np.ndarray)
    assert weights.dtype == np.float64
    assert weights.shape == (k,)
    assert np.all(np.isfinite(weights)), weights
    if sums_to_one:
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=0, atol=1e-12)


def assert_on_simplex(weights: np.ndarray, k: int) -> None:
    """The weights are non-negative and sum to 1."""
    assert_valid_weights(weights, k)
    assert np.all(weights >= 0), weights


def assert_permutation_equivariant(
    weight_fn: WeightFunction,
    losses: np.ndarray,
    gram: np.ndarray,
    permutation: np.ndarray,
    rtol: float = 1e-8,
) -> None:
    """Relabelling the objectives relabels the weights: w(Pℓ, PQPᵀ) = P w(ℓ, Q)."""
    weights = weight_fn(losses, gram)
    permuted = weight_fn(losses[permutation], gram[np.ix_(permutation, permutation)])
    np.testing.assert_allclose(
        permuted, weights[permutation], rtol=rtol, atol=rtol * np.abs(weights).max()
    )


def assert_gram_scale_invariant(
    weight_fn: WeightFunction,
    losses: np.ndarray,
    gram: np.ndarray,
    factor: float,
    rtol: float | None = None,
) -> None:
    """Scaling every gradient by one factor leaves the weights unchanged: w(ℓ, aQ) = w(ℓ, Q).

    ``rtol`` None: to 1e-9 relative and 1e-12 absolute. A value: to ``rtol`` relative to each
    weight or to the largest one, as ``assert_permutation_equivariant`` (a small weight that is
    a cancelling sum keeps the rounding of its terms).
    """
    weights = weight_fn(losses, gram)
    atol = 1e-12 if rtol is None else rtol * np.abs(weights).max()
    np.testing.assert_allclose(
        weight_fn(losses, factor * gram), weights, rtol=1e-9 if rtol is None else rtol, atol=atol
    )


def assert_parallel(direction: np.ndarray, reference: np.ndarray, rtol: float = 1e-8) -> None:
    """``direction`` is a positive multiple of ``reference``, up to ``rtol`` in norm."""
    scale = (direction @ reference) / (reference @ reference)
    assert scale > 0
    error = np.linalg.norm(direction - scale * reference)
    assert error <= rtol * np.linalg.norm(direction), (error, direction, reference)


def cosine_condition(gradients: np.ndarray) -> float:
    """The condition number of the cosine matrix of the (non-zero) gradients.

    A solution computed from the Gram has a relative error of about this times the rounding
    unit, so tolerances of comparisons with methods that work on the gradients scale with it.
    """
    norms = np.linalg.norm(gradients, axis=1)
    units = gradients[norms > 0] / norms[norms > 0, None]
    return float(np.linalg.cond(units @ units.T))
