"""moopt.solvers.mgda_weights: the min-norm point of the convex hull of the gradients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracles import cvxpy_qp_weights
from properties import assert_on_simplex, assert_permutation_equivariant
from strategies import gradient_cases, permutation_seeds, random_permutation

from moopt.solvers import mgda_weights, solve_mgda


def _weights(losses: np.ndarray, gram: np.ndarray) -> np.ndarray:
    return mgda_weights(gram)


def _assert_kkt(gram: np.ndarray, weights: np.ndarray) -> None:
    """(Qw)_i = wᵀQw where w_i > 0 and (Qw)_i ≥ wᵀQw where w_i = 0."""
    products = gram @ weights
    value = weights @ products
    tolerance = 1e-9 * np.abs(gram).max()
    support = weights > 1e-12
    np.testing.assert_allclose(products[support], value, rtol=0, atol=tolerance)
    assert np.all(products[~support] >= value - tolerance)


@given(gradient_cases(min_k=1, full_rank=False))
def test_on_simplex_and_kkt(case):
    """The weights lie on the simplex and satisfy the KKT conditions of the min-norm problem:
    (Qw)_i = wᵀQw on the support of w and (Qw)_i ≥ wᵀQw off it — an exact optimum."""
    weights = mgda_weights(case.gram)
    assert_on_simplex(weights, case.k)
    _assert_kkt(case.gram, weights)


@given(gradient_cases(min_k=2, max_k=8))
def test_objective_equals_cvxpy_optimum(case):
    """‖Σ w_i g_i‖² equals cvxpy's optimum of the same problem within 1e-6 relative (and is
    never larger, since the active-set solution is exact)."""
    expected_w = cvxpy_qp_weights(case.gram, nonnegative=True)
    expected = expected_w @ case.gram @ expected_w
    actual = solve_mgda(case.gram).squared_norm
    floor = 1e-12 * np.trace(case.gram)
    assert abs(actual - expected) <= 1e-6 * expected + floor
    assert actual <= expected * (1 + 1e-9) + floor


@given(gradient_cases(min_k=1, full_rank=False))
def test_norm_at_most_the_smallest_gradient(case):
    """‖Σ w_i g_i‖ ≤ min_i ‖g_i‖: every single gradient is a point of the hull."""
    direction = mgda_weights(case.gram) @ case.gradients
    smallest = np.sqrt(np.diag(case.gram)).min()
    assert np.linalg.norm(direction) <= smallest * (1 + 1e-9) + 1e-12 * np.sqrt(case.scale)


@given(gradient_cases(min_k=2, max_k=8), permutation_seeds)
def test_permutation_equivariant(case, seed):
    """Relabelling the objectives relabels the (unique) weights: w(PQPᵀ) = P·w(Q)."""
    losses = np.ones(case.k)
    perm = random_permutation(case.k, seed)
    assert_permutation_equivariant(_weights, losses, case.gram, perm, rtol=1e-7)


@given(gradient_cases(min_k=1, max_k=8), st.floats(-12, 12))
def test_invariant_to_scaling_the_gram(case, log10_factor):
    """w(aQ) = w(Q) for a > 0 (1e-12..1e12) when the optimum is unique (independent
    gradients); bit-identical for a power of four."""
    weights = mgda_weights(case.gram)
    scaled = mgda_weights(10.0**log10_factor * case.gram)
    np.testing.assert_allclose(scaled, weights, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(mgda_weights(2.0**-30 * case.gram), weights)


@given(gradient_cases(min_k=1, max_k=8, full_rank=False), st.floats(-12, 12))
def test_optimum_scales_with_the_gram(case, log10_factor):
    """min ‖d‖²(aQ) = a·min ‖d‖²(Q) for a > 0, also when the optimal weights are not unique."""
    factor = 10.0**log10_factor
    expected = factor * solve_mgda(case.gram).squared_norm
    actual = solve_mgda(factor * case.gram).squared_norm
    assert abs(actual - expected) <= 1e-9 * expected + 1e-12 * factor * np.trace(case.gram)


@given(gradient_cases(min_k=2, max_k=2, full_rank=False))
def test_two_objectives_closed_form(case):
    """k = 2: w₁ = clip((Q₂₂ − Q₁₂)/(Q₁₁ + Q₂₂ − 2Q₁₂), 0, 1)."""
    q = case.gram
    expected = np.clip((q[1, 1] - q[0, 1]) / (q[0, 0] + q[1, 1] - 2 * q[0, 1]), 0, 1)
    np.testing.assert_allclose(mgda_weights(q), [expected, 1 - expected], atol=1e-12)


def test_clipped_when_one_gradient_is_inside_the_hull():
    """g₁ = (1, 0) is the min-norm point of the segment to g₂ = (1, 1): w = (1, 0)."""
    g = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(mgda_weights(g @ g.T), [1.0, 0.0])


def test_active_set_drops_a_dominated_objective():
    """Three gradients where the optimum lies on the edge (g₁, g₂): w₃ = 0 and
    w₁g₁ + w₂g₂ is the min-norm point of that edge, here (½, ½)."""
    g = np.array([[1.0, -1.0], [1.0, 1.0], [3.0, 0.5]])
    solution = solve_mgda(g @ g.T)
    np.testing.assert_allclose(solution.weights, [0.5, 0.5, 0.0], atol=1e-14)
    np.testing.assert_allclose(solution.squared_norm, 1.0, rtol=1e-14)
    assert solution.exact


@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
@pytest.mark.parametrize(
    ("gradients", "expected"),
    [
        ([[1.0, 2.0], [1.0, 2.0]], [0.5, 0.5]),
        ([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]], [1 / 3, 1 / 3, 1 / 3]),
        ([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [1 / 3, 1 / 3, 1 / 3]),
        ([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [1.0, 0.0, 0.0]),
        ([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.25, 0.25, 0.5]),
        ([[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0], [-3.0, 0.0]], None),
    ],
)
def test_singular_grams_give_finite_weights(gradients, expected, scale):
    """Identical, opposite, parallel and zero gradients at scales 1e-12..1e12 give finite
    simplex weights at a KKT point; ties between identical gradients are split evenly."""
    g = np.sqrt(scale) * np.array(gradients)
    weights = mgda_weights(g @ g.T)
    assert_on_simplex(weights, len(g))
    _assert_kkt(g @ g.T, weights)
    if expected is not None:
        np.testing.assert_allclose(weights, expected, atol=1e-9)


def test_single_objective():
    """k = 1: the only weight is 1."""
    np.testing.assert_array_equal(mgda_weights([[2.0]]), [1.0])
