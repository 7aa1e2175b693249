"""moopt.solvers.eq_qp_weights: min ½wᵀQw subject to Σw = 1, in closed form."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracles import cvxpy_qp_weights, exact_eq_qp_weights
from properties import assert_permutation_equivariant, assert_valid_weights
from strategies import (
    gradient_cases,
    gram_with_condition_number,
    permutation_seeds,
    random_permutation,
)

from moopt.solvers import eq_qp_weights, solve_eq_qp


def _weights(losses: np.ndarray, gram: np.ndarray) -> np.ndarray:
    return eq_qp_weights(gram)


@given(gradient_cases(min_k=1, full_rank=False))
def test_sums_to_one_and_satisfies_kkt(case):
    """KKT of the equality-constrained QP: 1ᵀw = 1 and Qw = μ·1 (every gradient has the same
    inner product μ with the direction), for any PSD Gram, singular ones included."""
    weights = eq_qp_weights(case.gram)
    assert_valid_weights(weights, case.k)
    products = case.gram @ weights
    tolerance = 1e-9 * np.abs(case.gram).max() * max(1.0, np.abs(weights).sum())
    np.testing.assert_allclose(products, products.mean(), rtol=0, atol=tolerance)


@given(gradient_cases(min_k=2, max_k=8))
def test_equals_cvxpy_solution(case):
    """On Grams of linearly independent gradients (unique solution), at scales 1e-6..1e6, the
    weights equal cvxpy's solution of the same QP."""
    expected = cvxpy_qp_weights(case.gram, nonnegative=False)
    actual = eq_qp_weights(case.gram)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6 * np.abs(expected).max())


@given(gradient_cases(min_k=2, max_k=8, full_rank=False), permutation_seeds)
def test_permutation_equivariant(case, seed):
    """Relabelling the objectives relabels the weights: w(PQPᵀ) = P·w(Q)."""
    losses = np.ones(case.k)
    assert_permutation_equivariant(_weights, losses, case.gram, random_permutation(case.k, seed))


@given(
    gradient_cases(min_k=1, max_k=8, full_rank=False),
    st.floats(-12, 12),
)
def test_invariant_to_scaling_the_gram(case, log10_factor):
    """w(aQ) = w(Q) for every a > 0 (1e-12..1e12): only the geometry of the gradients counts.
    For a power of four the results are bit-identical (the gradient norms scale exactly)."""
    weights = eq_qp_weights(case.gram)
    np.testing.assert_allclose(
        eq_qp_weights(10.0**log10_factor * case.gram), weights, rtol=1e-9, atol=1e-11
    )
    np.testing.assert_array_equal(eq_qp_weights(2.0**20 * case.gram), weights)


@pytest.mark.parametrize("k", [2, 3, 5, 8])
@pytest.mark.parametrize("condition", [1e2, 1e5, 1e8])
@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
@pytest.mark.parametrize("seed", range(5))
def test_exact_on_ill_conditioned_grams(k, condition, scale, seed):
    """For Grams with condition number up to 1e8 at any overall scale, the weights have a
    relative error ≤ 1e-6 against the exact (60-digit) solution, without the fallback."""
    gram = gram_with_condition_number(k, condition, scale, seed)
    solution = solve_eq_qp(gram)
    expected = exact_eq_qp_weights(gram)
    assert solution.exact
    error = np.linalg.norm(solution.weights - expected) / np.linalg.norm(expected)
    assert error <= 1e-6, error


@given(gradient_cases(min_k=2, max_k=2, full_rank=False))
def test_two_objectives_closed_form(case):
    """k = 2: w₁ = (Q₂₂ − Q₁₂)/(Q₁₁ + Q₂₂ − 2Q₁₂), w₂ = 1 − w₁ (unclipped)."""
    q = case.gram
    denominator = q[0, 0] + q[1, 1] - 2 * q[0, 1]
    expected = (q[1, 1] - q[0, 1]) / denominator
    weights = eq_qp_weights(q)
    np.testing.assert_allclose(weights, [expected, 1 - expected], rtol=1e-9, atol=1e-12)


def test_negative_weight_when_one_gradient_dominates():
    """Unlike MGDA, the solution is not clipped: parallel gradients g and 2g give (2, −1),
    whose direction 2g − 2g = 0 has equal (zero) inner product with both."""
    g = np.array([[1.0, 1.0], [2.0, 2.0]])
    solution = solve_eq_qp(g @ g.T)
    np.testing.assert_allclose(solution.weights, [2.0, -1.0], atol=1e-12)
    assert solution.exact


@pytest.mark.parametrize("scale", [1e-12, 1e-6, 1.0, 1e6, 1e12])
@pytest.mark.parametrize(
    ("gradients", "expected", "exact"),
    [
        # identical gradients: every w is optimal; the fallback picks uniform weights
        ([[1.0, 2.0], [1.0, 2.0]], [0.5, 0.5], False),
        ([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]], [1 / 3, 1 / 3, 1 / 3], False),
        # all gradients zero
        ([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [1 / 3, 1 / 3, 1 / 3], False),
        # one zero gradient: the unique optimum puts all weight on it (‖d‖ = 0)
        ([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [1.0, 0.0, 0.0], True),
        # two identical gradients and an orthogonal one: the twins share their weight
        ([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.25, 0.25, 0.5], False),
        # parallel gradients of different length, k = 3: a unique solution with d = 0
        ([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], None, True),
    ],
)
def test_singular_grams_give_finite_weights(gradients, expected, exact, scale):
    """Singular Grams (identical, parallel, zero gradients) at scales 1e-12..1e12 give finite
    weights summing to 1; the pseudo-inverse fallback is used exactly when the solution is not
    unique, and then picks the optimal weights closest to uniform."""
    g = np.sqrt(scale) * np.array(gradients)
    solution = solve_eq_qp(g @ g.T)
    assert_valid_weights(solution.weights, len(g))
    assert solution.exact is exact
    if expected is not None:
        np.testing.assert_allclose(solution.weights, expected, atol=1e-9)
    products = (g @ g.T) @ solution.weights
    np.testing.assert_allclose(products, products.mean(), atol=1e-9 * max(scale, 1e-300))


def test_squared_norm_is_that_of_the_direction():
    """QPSolution.squared_norm = ‖Σ w_i g_i‖² in the Gram's units."""
    g = np.array([[3.0, 0.0, 1.0], [0.0, 2.0, 1.0], [1.0, 1.0, 0.0]]) * 1e3
    solution = solve_eq_qp(g @ g.T)
    direction = solution.weights @ g
    np.testing.assert_allclose(solution.squared_norm, direction @ direction, rtol=1e-10)


def test_single_objective():
    """k = 1: the only weight is 1."""
    np.testing.assert_array_equal(eq_qp_weights([[4.0]]), [1.0])
