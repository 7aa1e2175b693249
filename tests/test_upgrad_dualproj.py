"""UPGrad, DualProj and their solver, dual_cone_weights: exact projections onto the dual cone,
checked against a 60-digit KKT oracle, a brute-force projection and TorchJD's projector."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from oracles import exact_dual_cone_weights
from properties import (
    assert_gram_scale_invariant,
    assert_permutation_equivariant,
    cosine_condition,
)
from strategies import gradient_cases, permutation_seeds, random_permutation
from torchjd.aggregation import DualProjWeighting, UPGradWeighting
from torchjd.linalg import QuadprogProjector

from moopt import DualProjBalancer, UPGradBalancer
from moopt.solvers import dual_cone_weights, solve_dual_cone

EXACT_PROJECTOR = QuadprogProjector(norm_eps=0.0, reg_eps=0.0)
"""TorchJD's projector without its regularisation: quadprog on the Gram itself."""


def _brute_force_projection(gradients: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Project ``vector`` onto ``{x : g_iᵀx ≥ 0}`` by trying every set of active constraints.

    For each set A, the candidate is ``vector`` projected onto the null space of the rows in A
    (an SVD of the gradients themselves, no Gram); the projection is the feasible candidate
    nearest to ``vector``. Works for any gradients, linearly dependent or not.
    """
    k = len(gradients)
    norms = np.linalg.norm(gradients, axis=1)
    tolerance = 1e-10 * np.linalg.norm(vector) * norms
    best, best_distance = vector, np.inf
    for size in range(k + 1):
        for active in itertools.combinations(range(k), size):
            candidate = vector
            if active:
                basis, singular, _ = np.linalg.svd(gradients[list(active)].T, full_matrices=False)
                basis = basis[:, singular > 1e-12 * max(singular.max(), 1e-300)]
                candidate = vector - basis @ (basis.T @ vector)
            if np.all(gradients @ candidate >= -tolerance):
                distance = np.linalg.norm(candidate - vector)
                if distance < best_distance:
                    best, best_distance = candidate, distance
    return best


def vectors_to_project(k: int) -> st.SearchStrategy[np.ndarray]:
    """k weights u_i: 0 or of size 0.01 to 2, either sign (no values near underflow)."""
    entry = st.one_of(st.just(0.0), st.floats(0.01, 2.0), st.floats(-2.0, -0.01))
    return st.lists(entry, min_size=k, max_size=k).map(np.array)


def _upgrad_oracle(gram: np.ndarray, preference: np.ndarray) -> np.ndarray:
    k = len(gram)
    return sum(exact_dual_cone_weights(gram, preference[i] * np.eye(k)[i]) for i in range(k))


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


# --------------------------------------------------------------------------- the solver


@given(gradient_cases(min_k=1, max_k=5), st.data())
def test_solver_is_the_exact_projection(case, data):
    """For linearly independent gradients the weights are the 60-digit KKT solution (the
    unique minimiser) to 1e-9 plus rounding times cond(G) (nearly parallel gradients make the
    weights ill-determined: cond(G) ≈ 7e9 moved them by 2e-8), relative to ``u``, at every
    scale, for any vector ``u`` to project."""
    u = data.draw(vectors_to_project(case.k))
    expected = exact_dual_cone_weights(case.gram, u)
    actual = dual_cone_weights(case.gram, u)
    tolerance = 1e-9 + 1e-14 * np.linalg.cond(case.gram)
    np.testing.assert_allclose(
        actual, expected, rtol=0, atol=tolerance * max(np.abs(u).max(), 1e-3)
    )
    assert np.all(actual >= u)


@given(gradient_cases(min_k=1, max_k=6, full_rank=False), st.data())
def test_solver_projects_dependent_gradients(case, data):
    """With linearly dependent gradients (n < k allowed) the weights are not unique, but the
    projection Jᵀw is: it equals the brute-force projection of Jᵀu onto the dual cone, and it
    is in the cone."""
    u = data.draw(vectors_to_project(case.k))
    g = case.gradients
    weights = dual_cone_weights(case.gram, u)
    assert np.all(weights >= u)
    expected = _brute_force_projection(g, u @ g)
    scale = np.abs(u) @ np.linalg.norm(g, axis=1) + 1e-300
    np.testing.assert_allclose(weights @ g, expected, rtol=0, atol=1e-9 * scale)
    norms = np.linalg.norm(g, axis=1)
    assert np.all(g @ (weights @ g) >= -1e-9 * norms * scale)


def test_solver_keeps_a_vector_already_in_the_cone():
    """A vector that conflicts with no gradient is its own projection: w = u."""
    g = np.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.2, 0.1, 1.0]])
    u = np.array([0.3, 0.5, 0.2])
    np.testing.assert_array_equal(dual_cone_weights(g @ g.T, u), u)


def test_solver_zero_gradients():
    """A zero gradient keeps w_i = u_i; if every gradient is zero, w = u."""
    g = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 1.0]])
    u = np.array([0.7, 1.0, 0.0])
    w = dual_cone_weights(g @ g.T, u)
    assert w[0] == 0.7
    np.testing.assert_allclose(w[1:], [1.0, 0.5], rtol=1e-15)
    solution = solve_dual_cone(np.zeros((2, 2)), [1.0, -1.0])
    np.testing.assert_array_equal(solution.weights, [1.0, -1.0])
    assert solution.squared_norm == 0.0 and not solution.exact


def test_solver_single_objective():
    """k = 1: a positive multiple of g is kept, a negative one projects to 0."""
    assert dual_cone_weights([[4.0]], [0.5]) == pytest.approx([0.5])
    assert dual_cone_weights([[4.0]], [-0.5]) == pytest.approx([0.0], abs=1e-15)


def test_solver_reports_exactness():
    """exact is true for independent gradients and false for dependent ones (several w)."""
    g = np.array([[1.0, 0.0], [-1.0, 1.0]])
    assert solve_dual_cone(g @ g.T, [1.0, 0.0]).exact
    h = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    solution = solve_dual_cone(h @ h.T, [1.0, 0.0, 0.0])
    assert not solution.exact
    np.testing.assert_allclose(solution.weights @ h, [0.0, 0.0], atol=1e-15)
    assert solution.squared_norm == pytest.approx(0.0, abs=1e-30)


def test_solver_checks_its_inputs():
    with pytest.raises(ValueError, match="u must have 2 entries"):
        dual_cone_weights(np.eye(2), [1.0])
    with pytest.raises(ValueError, match="u must be finite"):
        dual_cone_weights(np.eye(2), [1.0, np.nan])
    with pytest.raises(ValueError, match="positive semi-definite"):
        dual_cone_weights([[1.0, 2.0], [2.0, 1.0]], [1.0, 1.0])


# --------------------------------------------------------------------------- TorchJD


@given(gradient_cases(min_k=1, max_k=6))
def test_upgrad_matches_torchjd_without_regularisation(case):
    """UPGradBalancer is TorchJD's UPGradWeighting with quadprog on the unregularised Gram
    (norm_eps = reg_eps = 0), to quadprog's accuracy, and the 60-digit oracle to 1e-9."""
    weights = UPGradBalancer().weights(np.ones(case.k), case.gram)
    torchjd = UPGradWeighting(projector=EXACT_PROJECTOR)(torch.tensor(case.gram)).numpy()
    assert _relative_error(weights, torchjd) < 1e-7
    oracle = _upgrad_oracle(case.gram, np.full(case.k, 1.0 / case.k))
    assert _relative_error(weights, oracle) < 1e-9


@given(gradient_cases(min_k=1, max_k=6))
def test_dualproj_matches_torchjd_without_regularisation(case):
    """DualProjBalancer is TorchJD's DualProjWeighting with the unregularised projector, and the
    60-digit oracle to 1e-9."""
    weights = DualProjBalancer().weights(np.ones(case.k), case.gram)
    torchjd = DualProjWeighting(projector=EXACT_PROJECTOR)(torch.tensor(case.gram)).numpy()
    assert _relative_error(weights, torchjd) < 1e-7
    oracle = exact_dual_cone_weights(case.gram, np.full(case.k, 1.0 / case.k))
    assert _relative_error(weights, oracle) < 1e-9


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_torchjd_regularisation_converges_to_the_exact_weights(method):
    """TorchJD's default reg_eps = 1e-4 moves the weights by about that much; as reg_eps → 0 its
    weights converge to ours."""
    rng = np.random.default_rng(7)
    g = rng.standard_normal((4, 6)) * np.array([[1.0], [3.0], [0.3], [1.0]])
    g[1] = -g[0] + 0.3 * g[1]  # a strong conflict, so that projections happen
    gram = g @ g.T
    balancer, weighting = {
        "upgrad": (UPGradBalancer(), UPGradWeighting),
        "dualproj": (DualProjBalancer(), DualProjWeighting),
    }[method]
    ours = balancer.weights(np.ones(4), gram)
    errors = [
        _relative_error(
            weighting(projector=QuadprogProjector(reg_eps=eps))(torch.tensor(gram)).numpy(), ours
        )
        for eps in (1e-4, 1e-6, 1e-8, 0.0)
    ]
    assert 1e-6 < errors[0] < 1e-2
    assert errors[0] > errors[1] > errors[2]
    assert errors[3] < 1e-9


@given(gradient_cases(min_k=2, max_k=5), st.data())
def test_preference_vectors_match_torchjd(case, data):
    """With a preference vector (any signs), both follow TorchJD's pref_vector, to 1e-7 plus
    the rounding that the condition number of the cosine matrix amplifies (nearly parallel
    gradients leave the weights, not the direction, ill-determined), relative to the larger
    of the weights and the preference (a preference projected to zero weights keeps its
    rounding)."""
    preference = np.array(data.draw(st.lists(st.floats(-1, 2), min_size=case.k, max_size=case.k)))
    pref = torch.tensor(preference)
    for ours, theirs in (
        (UPGradBalancer(preference), UPGradWeighting(pref, projector=EXACT_PROJECTOR)),
        (DualProjBalancer(preference), DualProjWeighting(pref, projector=EXACT_PROJECTOR)),
    ):
        expected = theirs(torch.tensor(case.gram)).numpy()
        actual = ours.weights(np.ones(case.k), case.gram)
        tolerance = 1e-7 + 1e-14 * cosine_condition(case.gradients)
        np.testing.assert_allclose(
            actual,
            expected,
            rtol=0,
            atol=tolerance * max(np.abs(expected).max(), np.abs(preference).max(), 1e-3),
        )


# --------------------------------------------------------------------------- the balancers


@given(gradient_cases(min_k=1, max_k=6, full_rank=False))
def test_directions_conflict_with_no_gradient(case):
    """Both directions lie in the dual cone (g_iᵀd ≥ 0 for all i); UPGrad's weights are at least
    1/k and DualProj's too, also for linearly dependent gradients."""
    g = case.gradients
    norms = np.linalg.norm(g, axis=1)
    for balancer in (UPGradBalancer(), DualProjBalancer()):
        weights = balancer.weights(np.ones(case.k), case.gram)
        assert np.all(weights >= 1.0 / case.k)
        direction = weights @ g
        scale = norms.sum() / case.k
        assert np.all(g @ direction >= -1e-9 * norms * scale)


@given(gradient_cases(min_k=1, max_k=6, full_rank=False))
def test_upgrad_is_the_mean_of_the_projections(case):
    """UPGrad's direction is the mean of the brute-force projections of the k gradients."""
    g = case.gradients
    expected = np.mean([_brute_force_projection(g, row) for row in g], axis=0)
    direction = UPGradBalancer().weights(np.ones(case.k), case.gram) @ g
    scale = np.linalg.norm(g, axis=1).max()
    np.testing.assert_allclose(direction, expected, rtol=0, atol=1e-9 * scale)


def test_no_conflict_keeps_the_mean():
    """Gradients with pairwise non-negative inner products are in the dual cone: both give the
    mean gradient (w = 1/k), as the weighted sum would."""
    g = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.5]])
    for balancer in (UPGradBalancer(), DualProjBalancer()):
        np.testing.assert_allclose(balancer.weights(np.ones(3), g @ g.T), np.full(3, 1 / 3))


@given(gradient_cases(min_k=2, max_k=5), st.floats(-12, 12))
def test_scale_invariant(case, log_factor):
    """Scaling every gradient by one factor leaves the weights unchanged."""
    losses = np.ones(case.k)
    for balancer in (UPGradBalancer(), DualProjBalancer()):
        assert_gram_scale_invariant(balancer.weights, losses, case.gram, 10.0**log_factor)


@given(gradient_cases(min_k=2, max_k=6), permutation_seeds)
def test_permutation_equivariant(case, seed):
    perm = random_permutation(case.k, seed)
    for balancer in (UPGradBalancer(), DualProjBalancer()):
        assert_permutation_equivariant(balancer.weights, np.ones(case.k), case.gram, perm)


def test_zero_gradients_keep_the_preference():
    """All gradients zero: both return the preference (TorchJD's projector does the same)."""
    for balancer in (UPGradBalancer(), DualProjBalancer()):
        np.testing.assert_array_equal(balancer.weights([1.0, 2.0], np.zeros((2, 2))), [0.5, 0.5])


def test_preference_vector_fixes_k_and_is_checked():
    balancer = UPGradBalancer([0.2, 0.8])
    assert balancer.num_objectives == 2
    assert UPGradBalancer().num_objectives is None
    with pytest.raises(ValueError, match="losses must have 2 entries"):
        balancer.weights([1.0, 1.0, 1.0], np.eye(3))
    with pytest.raises(ValueError, match="pref_vector must be finite"):
        DualProjBalancer([1.0, np.inf])
    assert repr(DualProjBalancer([1, 2])) == "DualProjBalancer(pref_vector=[1.0, 2.0])"
    assert repr(UPGradBalancer()) == "UPGradBalancer(pref_vector=None)"
