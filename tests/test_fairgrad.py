"""FairGradBalancer: the exact solution of G w = w^(−1/α), and TorchJD's FairGrad as an oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from properties import assert_permutation_equivariant, assert_valid_weights
from strategies import gradient_cases, permutation_seeds, positive_losses, random_permutation

from moopt.balancers.fairgrad import FairGradBalancer, solve_alpha_fair

ALPHAS = [0.5, 1.0, 2.0, 5.0]


def _backward_error(gram: np.ndarray, x: np.ndarray, alpha: float) -> np.ndarray:
    """|(Gx)_i − x_i^(−1/α)| relative to the size of its terms: what rounding can reach."""
    power = x ** (-1.0 / alpha)
    return np.abs(gram @ x - power) / (np.abs(gram) @ x + power)


def _condition(gram: np.ndarray, x: np.ndarray, alpha: float) -> float:
    """How much the solution's relative entries move per unit of backward error.

    Perturbing equation i by at most e·((|G|x)_i + x_i^(−1/α)) moves x by δx with
    R H X (δx/x) = R δF (H the Jacobian G + diag(x^(−1/α−1)/α), X = diag(x), R the row
    sizes' inverses), so ``max_i |δx_i/x_i| ≤ ‖(R H X)⁻¹‖∞ · e``.
    """
    p = 1.0 / alpha
    jacobian = gram + np.diag(p * x ** (-p - 1.0))
    rows = 1.0 / (np.abs(gram) @ x + x**-p)
    return float(np.abs(np.linalg.inv(rows[:, None] * jacobian * x[None, :])).sum(axis=1).max())


def _rows(rng: np.random.Generator, k: int, n: int, decades: float) -> np.ndarray:
    """A random k × n Jacobian whose row norms spread over ``2·decades`` decades."""
    return rng.standard_normal((k, n)) * 10.0 ** rng.uniform(-decades, decades, (k, 1))


@given(gradient_cases(min_k=1, max_k=7), st.sampled_from(ALPHAS), st.data())
def test_weights_solve_the_fairgrad_system(case, alpha, data):
    """The weights are positive and solve G w = w^(−1/α) elementwise to rounding level: the
    residual of every equation is below 1e-13 of the size of its terms (the data change that
    makes the solution exact). Equivalently each objective falls by g_iᵀd = w_i^(−1/α)."""
    losses = data.draw(positive_losses(case.k))
    balancer = FairGradBalancer(alpha=alpha)
    weights = balancer.weights(losses, case.gram)
    assert_valid_weights(weights, case.k, sums_to_one=False)
    assert np.all(weights > 0)
    assert balancer.last_solution is not None and balancer.last_solution.exists
    assert np.all(_backward_error(case.gram, weights, alpha) <= 1e-13)
    assert balancer.last_solution.backward_error <= 1e-13


@given(gradient_cases(min_k=2, max_k=7))
def test_alpha_one_is_the_nash_equation(case):
    """alpha = 1: w_i (Gw)_i = 1 for every i, the same product for all objectives (up to the
    cancellation in (Gw)_i, which the tolerance scales with)."""
    weights = FairGradBalancer(alpha=1.0).weights(np.ones(case.k), case.gram)
    products = weights * (case.gram @ weights)
    cancellation = (np.abs(case.gram) @ weights) / np.abs(case.gram @ weights)
    np.testing.assert_array_less(np.abs(products - 1.0), 1e-13 * cancellation)


@given(gradient_cases(min_k=2, max_k=6), st.sampled_from(ALPHAS), st.floats(-6, 6))
def test_gram_scale_changes_only_the_size(case, alpha, log_factor):
    """Scaling the Gram by s scales the solution by s^(−α/(1+α)) (the system is homogeneous),
    to rounding level times the solution's condition number."""
    factor = 10.0**log_factor
    losses = np.ones(case.k)
    weights = FairGradBalancer(alpha=alpha).weights(losses, case.gram)
    scaled = FairGradBalancer(alpha=alpha).weights(losses, factor * case.gram)
    rtol = 1e-14 * _condition(case.gram, weights, alpha)
    np.testing.assert_allclose(scaled, weights * factor ** (-alpha / (1 + alpha)), rtol=rtol)


@given(gradient_cases(min_k=2, max_k=6), st.sampled_from(ALPHAS), permutation_seeds)
def test_permutation_equivariant(case, alpha, seed):
    """Relabelling the objectives relabels the weights, to rounding level times the solution's
    condition number (another summation order rounds differently)."""
    permutation = random_permutation(case.k, seed)
    balancer = FairGradBalancer(alpha=alpha)
    rtol = 1e-14 * _condition(case.gram, balancer.weights(np.ones(case.k), case.gram), alpha)
    assert_permutation_equivariant(balancer.weights, np.ones(case.k), case.gram, permutation, rtol)


@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0, 2.0, 3.0, 5.0])
def test_machine_precision_over_six_decades_of_gradient_norms(alpha):
    """For 0.2 ≤ α ≤ 5 and gradient norms spread over six decades, the solver reaches rounding
    level (the documented range), also for fewer dimensions than objectives (n < k) where
    the gradients are not Pareto-stationary."""
    rng = np.random.default_rng(int(alpha * 10))
    for trial in range(80):
        k = int(rng.integers(2, 9))
        n = int(rng.integers(k, k + 8) if trial % 2 else rng.integers(2, k + 1))
        jacobian = _rows(rng, k, n, 3.0)
        gram = jacobian @ jacobian.T
        solution = solve_alpha_fair(gram, alpha)
        if not solution.exists:
            continue
        assert solution.backward_error <= 1e-13
        assert np.all(_backward_error(gram, solution.weights, alpha) <= 1e-13)


def test_alpha_zero_is_the_average():
    """alpha = 0 is the linear scalarisation: uniform weights 1/k (as TorchJD)."""
    g = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, -2.0]])
    np.testing.assert_array_equal(FairGradBalancer(alpha=0).weights(np.ones(3), g @ g.T), 1 / 3)


def test_orthogonal_gradients_closed_form():
    """Orthogonal gradients decouple: G_ii w_i = w_i^(−1/α), w_i = ‖g_i‖^(−2α/(1+α))."""
    norms = np.array([0.5, 1.0, 4.0])
    for alpha in ALPHAS:
        weights = FairGradBalancer(alpha=alpha).weights(np.ones(3), np.diag(norms**2))
        np.testing.assert_allclose(weights, norms ** (-2 * alpha / (1 + alpha)), rtol=1e-14)


@pytest.mark.parametrize(
    "jacobian",
    [
        np.array([[1.0, 2.0], [0.0, 0.0]]),  # a zero gradient
        np.array([[1.0, 2.0], [-2.0, -4.0]]),  # opposite gradients: 0 in the hull
        np.array([[1.0, 0.0], [-0.5, 0.8660254037844386], [-0.5, -0.8660254037844386]]),
    ],
    ids=["zero gradient", "opposite", "three at 120 degrees"],
)
def test_no_solution_gives_no_step(jacobian):
    """When no positive solution exists (0 in the convex hull of the gradients: no direction
    lowers every objective), the weights are 0 and the solution says it does not exist."""
    balancer = FairGradBalancer()
    weights = balancer.weights(np.ones(len(jacobian)), jacobian @ jacobian.T)
    np.testing.assert_array_equal(weights, 0.0)
    assert balancer.last_solution is not None and not balancer.last_solution.exists


def test_single_objective():
    """k = 1: ‖g‖² w = w^(−1/α)."""
    for alpha in ALPHAS:
        weights = FairGradBalancer(alpha=alpha).weights([2.0], [[9.0]])
        np.testing.assert_allclose(9.0 * weights, weights ** (-1 / alpha), rtol=1e-14)


def test_state_dict_round_trip_into_a_fresh_instance():
    """A fresh default instance loads a configured one's state and computes the same weights."""
    g = np.array([[1.0, 0.2], [0.3, 2.0]])
    original = FairGradBalancer(alpha=2.5)
    restored = FairGradBalancer()
    restored.load_state_dict(original.state_dict())
    assert restored.alpha == 2.5
    np.testing.assert_array_equal(
        restored.weights([1.0, 1.0], g @ g.T), original.weights([1.0, 1.0], g @ g.T)
    )


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: FairGradBalancer(alpha=-1.0), ValueError, r"alpha must be a finite number ≥ 0"),
        (lambda: FairGradBalancer(alpha=float("nan")), ValueError, r"alpha must be a finite"),
        (lambda: FairGradBalancer(alpha="1"), TypeError, r"alpha must be a real number, got str"),
        (lambda: FairGradBalancer().weights([1.0, 1.0]), ValueError, r"gram is required"),
        (
            lambda: FairGradBalancer().weights([1.0, 1.0], np.eye(3)),
            ValueError,
            r"gram must have shape \(2, 2\)",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(make, error, message):
    """Bad settings and inputs are refused before any work, naming the argument."""
    with pytest.raises(error, match=message):
        make()


# ------------------------------------------------------------------------------ TorchJD oracle


def _torchjd_fairgrad(jacobian: np.ndarray, alpha: float) -> np.ndarray:
    pytest.importorskip("scipy")  # TorchJD's FairGrad solves with scipy's least_squares
    torch = pytest.importorskip("torch")
    aggregation = pytest.importorskip("torchjd.aggregation")
    return aggregation.FairGrad(alpha=alpha)(torch.tensor(jacobian)).numpy()


def _torchjd_weights(gram: np.ndarray, alpha: float) -> np.ndarray:
    pytest.importorskip("scipy")
    torch = pytest.importorskip("torch")
    aggregation = pytest.importorskip("torchjd.aggregation")
    return aggregation.FairGradWeighting(alpha=alpha)(torch.tensor(gram)).numpy()


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("layout", ["random", "conflicting"])
def test_matches_torchjd(alpha, layout):
    """On Jacobians with row norms within two decades, with or without strongly conflicting
    rows, our direction w @ J equals TorchJD's FairGrad aggregation to 1e-6. (TorchJD solves the
    same system with scipy's least_squares, which stops at its default tolerances of 1e-8; in
    these cases that leaves about 1e-8 in the direction.)"""
    rng = np.random.default_rng(7)
    for _ in range(25):
        k = int(rng.integers(2, 7))
        jacobian = _rows(rng, k, int(rng.integers(k, k + 6)), 1.0)
        if layout == "conflicting":
            # every later row leans against the first one (negative inner products)
            first = jacobian[0] / np.linalg.norm(jacobian[0])
            jacobian[1:] -= 1.5 * np.outer(np.linalg.norm(jacobian[1:], axis=1), first)
        weights = FairGradBalancer(alpha=alpha).weights(np.ones(k), jacobian @ jacobian.T)
        expected = _torchjd_fairgrad(jacobian, alpha)
        np.testing.assert_allclose(
            weights @ jacobian, expected, rtol=1e-6, atol=1e-6 * np.linalg.norm(expected)
        )


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_more_accurate_than_torchjd_on_badly_scaled_rows(alpha):
    """With row norms from 1e-3 to 1e3, TorchJD's least_squares (tolerances on absolute
    changes) often stops far from the solution (backward error up to O(1)); ours solves the
    system to rounding level, so its backward error is never above TorchJD's (or 1e-15), and
    where TorchJD did converge (backward error ≤ 1e-10) the directions agree to 1e-7."""
    rng = np.random.default_rng(11)
    torchjd_failed = 0
    for _ in range(25):
        k = int(rng.integers(2, 7))
        jacobian = _rows(rng, k, int(rng.integers(k, k + 6)), 3.0)
        gram = jacobian @ jacobian.T
        ours = FairGradBalancer(alpha=alpha).weights(np.ones(k), gram)
        theirs = _torchjd_weights(gram, alpha)
        our_error = _backward_error(gram, ours, alpha).max()
        their_error = _backward_error(gram, theirs, alpha).max()
        assert our_error <= min(1e-13, max(their_error, 1e-15))
        torchjd_failed += their_error > 1e-3
        if their_error <= 1e-10:
            np.testing.assert_allclose(
                theirs @ jacobian,
                ours @ jacobian,
                rtol=1e-7,
                atol=1e-7 * np.linalg.norm(ours @ jacobian),
            )
    assert torchjd_failed > 0  # the point of this test: TorchJD's solver does fail here
