"""NashMTLBalancer: α_i (Gα)_i = 1 solved exactly, then TorchJD's max_norm scaling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from properties import assert_parallel, assert_permutation_equivariant, assert_valid_weights
from strategies import gradient_cases, permutation_seeds, positive_losses, random_permutation

from moopt.balancers.fairgrad import FairGradBalancer
from moopt.balancers.nash_mtl import NashMTLBalancer


def _condition(gram: np.ndarray, x: np.ndarray) -> float:
    """How much the solution's relative entries move per unit of backward error (as in
    test_fairgrad: ``‖(R H X)⁻¹‖∞`` with H = G + diag(1/x²), X = diag(x), R the row sizes)."""
    rows = 1.0 / (np.abs(gram) @ x + 1.0 / x)
    jacobian = gram + np.diag(1.0 / x**2)
    return float(np.abs(np.linalg.inv(rows[:, None] * jacobian * x[None, :])).sum(axis=1).max())


def _products(gram: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w_i (Gw)_i, and how much rounding in (Gw)_i may be amplified by cancellation."""
    products = weights * (gram @ weights)
    cancellation = (np.abs(gram) @ np.abs(weights)) / np.abs(gram @ weights)
    return products, cancellation


@given(gradient_cases(min_k=1, max_k=8), st.data())
def test_unscaled_weights_solve_the_nash_equation(case, data):
    """max_norm = 0: α > 0 and α_i (Gα)_i = 1 for every i (the Nash bargaining condition
    Gα = 1/α), to rounding level times the cancellation in (Gα)_i; then ‖d‖² = αᵀGα = k."""
    losses = data.draw(positive_losses(case.k))
    balancer = NashMTLBalancer(max_norm=0.0)
    weights = balancer.weights(losses, case.gram)
    assert_valid_weights(weights, case.k, sums_to_one=False)
    assert np.all(weights > 0)
    products, cancellation = _products(case.gram, weights)
    np.testing.assert_array_less(np.abs(products - 1.0), 1e-13 * cancellation)
    size = np.abs(weights) @ np.abs(case.gram) @ np.abs(weights)
    assert abs(weights @ case.gram @ weights - case.k) <= 1e-13 * size
    assert balancer.last_solution is not None and balancer.last_solution.backward_error < 1e-13


@given(gradient_cases(min_k=2, max_k=8))
def test_default_scaling_gives_a_unit_step_with_equal_products(case):
    """max_norm = 1 (TorchJD's default): for k ≥ 2 the step is scaled to ‖d‖ = 1, and the
    products w_i (Gw)_i stay equal for all i, now 1/k."""
    weights = NashMTLBalancer().weights(np.ones(case.k), case.gram)
    size = np.abs(weights) @ np.abs(case.gram) @ np.abs(weights)  # rounding in wᵀGw
    assert abs(weights @ case.gram @ weights - 1.0) <= 1e-13 * size
    products, cancellation = _products(case.gram, weights)
    np.testing.assert_array_less(np.abs(products * case.k - 1.0), 1e-13 * cancellation)


@given(gradient_cases(min_k=2, max_k=6), st.floats(0.1, 10.0))
def test_max_norm_only_caps_the_length(case, max_norm):
    """The weights are α·min(1, max_norm/‖d‖) with ‖d‖² = αᵀGα (= k up to rounding, which the
    cancellation in nearly opposite gradients amplifies): the cap only shortens the step."""
    gram = case.gram
    alpha = NashMTLBalancer(max_norm=0.0).weights(np.ones(case.k), gram)
    capped = NashMTLBalancer(max_norm=max_norm).weights(np.ones(case.k), gram)
    length = np.sqrt(alpha @ gram @ alpha)
    np.testing.assert_allclose(capped, alpha * min(1.0, max_norm / length), rtol=1e-14)


@given(gradient_cases(min_k=2, max_k=6), st.data())
def test_direction_is_invariant_to_rescaling_any_objective(case, data):
    """Nash's scale-invariance axiom: replacing g_i by a_i g_i (a_i > 0) leaves the direction
    d = Σ α_i g_i unchanged (α_i becomes α_i / a_i), to rounding level times the solution's
    condition number and the cancellation in Σ α_i g_i."""
    factors = 10.0 ** np.array(
        data.draw(st.lists(st.floats(-3, 3), min_size=case.k, max_size=case.k))
    )
    balancer = NashMTLBalancer(max_norm=0.0)
    weights = balancer.weights(np.ones(case.k), case.gram)
    direction = weights @ case.gradients
    scaled_g = case.gradients * factors[:, None]
    scaled = balancer.weights(np.ones(case.k), scaled_g @ scaled_g.T) @ scaled_g
    cancellation = np.linalg.norm(np.abs(weights) @ np.abs(case.gradients)) / np.linalg.norm(
        direction
    )
    rtol = max(1e-14 * _condition(case.gram, weights) * cancellation, 1e-9)
    assert_parallel(scaled, direction, rtol=rtol)
    np.testing.assert_allclose(np.linalg.norm(scaled), np.linalg.norm(direction), rtol=rtol)


@given(gradient_cases(min_k=2, max_k=6), permutation_seeds)
def test_permutation_equivariant(case, seed):
    """Relabelling the objectives relabels the weights, to rounding level times the
    solution's condition number (another summation order rounds differently)."""
    permutation = random_permutation(case.k, seed)
    solution = NashMTLBalancer(max_norm=0.0).weights(np.ones(case.k), case.gram)
    rtol = 1e-14 * _condition(case.gram, solution)
    assert_permutation_equivariant(
        NashMTLBalancer().weights, np.ones(case.k), case.gram, permutation, rtol
    )


@given(gradient_cases(min_k=2, max_k=6))
def test_is_fairgrad_with_alpha_one(case):
    """Without the cap, Nash-MTL is FairGrad with α = 1 (the same system, the same solver)."""
    np.testing.assert_array_equal(
        NashMTLBalancer(max_norm=0.0).weights(np.ones(case.k), case.gram),
        FairGradBalancer(alpha=1.0).weights(np.ones(case.k), case.gram),
    )


def test_documented_example():
    """Orthogonal gradients of norms 1 and 4: α = (1, 1/4), each objective falls by 1/α_i."""
    g = np.diag([1.0, 4.0])
    weights = NashMTLBalancer(max_norm=0.0).weights([1.0, 1.0], g @ g.T)
    np.testing.assert_allclose(weights, [1.0, 0.25], rtol=1e-15)
    np.testing.assert_allclose(g @ (weights @ g), [1.0, 4.0], rtol=1e-15)


def test_single_objective_is_not_scaled():
    """k = 1: α = 1/‖g‖, so ‖d‖ = 1 = max_norm and nothing is scaled."""
    np.testing.assert_allclose(NashMTLBalancer().weights([3.0], [[4.0]]), [0.5], rtol=1e-15)


@pytest.mark.parametrize(
    "jacobian",
    [np.array([[1.0, 2.0], [0.0, 0.0]]), np.array([[1.0, 2.0], [-0.5, -1.0]])],
    ids=["zero gradient", "opposite gradients"],
)
def test_no_bargaining_solution_gives_no_step(jacobian):
    """With a zero gradient or Pareto-stationary gradients no step improves every objective,
    Gα = 1/α has no solution, and the weights are 0."""
    balancer = NashMTLBalancer()
    np.testing.assert_array_equal(balancer.weights([1.0, 1.0], jacobian @ jacobian.T), 0.0)
    assert balancer.last_solution is not None and not balancer.last_solution.exists


def test_state_dict_round_trip_into_a_fresh_instance():
    """A fresh default instance loads a configured one's state and gives the same weights."""
    g = np.array([[1.0, 0.2], [0.3, 2.0]])
    original = NashMTLBalancer(max_norm=0.5)
    restored = NashMTLBalancer()
    restored.load_state_dict(original.state_dict())
    assert restored.max_norm == 0.5
    np.testing.assert_array_equal(
        restored.weights([1.0, 1.0], g @ g.T), original.weights([1.0, 1.0], g @ g.T)
    )


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: NashMTLBalancer(max_norm=-1.0), ValueError, r"max_norm must be a finite number"),
        (lambda: NashMTLBalancer(max_norm=None), TypeError, r"max_norm must be a real number"),
        (lambda: NashMTLBalancer().weights([1.0, 1.0]), ValueError, r"gram is required"),
        (
            lambda: NashMTLBalancer().weights([1.0, 1.0], [[1.0, 2.0], [2.0, 1.0]]),
            ValueError,
            r"gram must be positive semi-definite",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(make, error, message):
    """Bad settings and inputs are refused before any work, naming the argument."""
    with pytest.raises(error, match=message):
        make()


# -------------------------------------------------------------------- TorchJD (not an oracle)


@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem:UserWarning")
def test_torchjd_approaches_the_exact_solution_and_scales_the_same_way():
    """TorchJD's NashMTL is an approximate, warm-started solver (at most 20 convex programs per
    call), so it is no oracle. But called repeatedly on the same Jacobian it approaches the
    solution; wherever its weights then satisfy α_i (Gα)_i = 1/k to 1e-6 (after its
    max_norm = 1 scaling), they agree with ours to 1e-5: the same equation, the same scaling
    of the output."""
    torch = pytest.importorskip("torch")
    aggregation = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("cvxpy")
    pytest.importorskip("ecos")  # TorchJD's NashMTL solves with ECOS
    rng = np.random.default_rng(3)
    compared = 0
    for _ in range(8):
        k = int(rng.integers(2, 6))
        jacobian = rng.standard_normal((k, k + 3)) * 10.0 ** rng.uniform(-1, 1, (k, 1))
        gram = jacobian @ jacobian.T
        aggregator = aggregation.NashMTL(n_tasks=k)
        for _ in range(30):
            theirs = aggregator.weighting(torch.tensor(jacobian)).numpy()
        products = theirs * (gram @ theirs)
        if np.max(np.abs(products * k - 1.0)) > 1e-6:
            continue
        compared += 1
        ours = NashMTLBalancer().weights(np.ones(k), gram)
        np.testing.assert_allclose(theirs, ours, rtol=1e-5)
    assert compared >= 4
