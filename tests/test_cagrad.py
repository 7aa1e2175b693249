"""CAGradBalancer: an optimality certificate for the exact solve, and TorchJD's CAGrad."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from properties import assert_permutation_equivariant, assert_valid_weights
from strategies import gradient_cases, permutation_seeds, positive_losses, random_permutation

from moopt.balancers.cagrad import CAGradBalancer
from moopt.solvers import mgda_weights

CS = [0.1, 0.5, 0.9, 2.0]


def _radius(gram: np.ndarray, c: float) -> float:
    """r = c‖g₀‖ with g₀ the mean gradient: ‖g₀‖² = 1ᵀG1/k²."""
    return c * np.sqrt(max(gram.sum(), 0.0)) / len(gram)


def _dual_weights(weights: np.ndarray) -> np.ndarray:
    """w* on the simplex, from the returned weights 1/k + (r/‖g_w*‖) w*."""
    excess = weights - 1.0 / len(weights)
    return excess / excess.sum()


def _dual_objective(gram: np.ndarray, w: np.ndarray, c: float) -> float:
    """F(w) = g_wᵀg₀ + r‖g_w‖, computed from the Gram."""
    k = len(gram)
    return float(w @ gram.sum(axis=1) / k + _radius(gram, c) * np.sqrt(max(w @ gram @ w, 0.0)))


def _assert_optimal(gram: np.ndarray, weights: np.ndarray, c: float) -> None:
    """A certificate that d = Σ w_i g_i solves max_d min_i g_iᵀd s.t. ‖d − g₀‖ ≤ r.

    d is feasible (‖d − g₀‖ = r), w* is dual feasible (on the simplex), and the primal value
    min_i g_iᵀd equals the dual value F(w*): by weak duality both are then optimal. The
    tolerances are rounding level: ``‖g_w‖`` computed from the Gram errs by about
    ``ε trace(G) / ‖g_w‖`` (which norm_eps keeps below 1e-8 relative), and ``‖g₀‖²`` by
    ``ε Σ|G_ij| / |Σ G_ij|`` relative (cancellation in the mean gradient).
    """
    k = len(gram)
    w_star = _dual_weights(weights)
    assert np.all(w_star >= -1e-12)
    norm = np.sqrt(w_star @ gram @ w_star)
    radius = _radius(gram, c)
    norm_rtol = 1e-14 * (np.trace(gram) / norm**2 + np.abs(gram).sum() / abs(gram.sum()))
    excess = weights - 1.0 / k
    np.testing.assert_allclose(np.sqrt(excess @ gram @ excess), radius, rtol=1e-12 + norm_rtol)
    primal = float(np.min(gram @ weights))
    size = np.abs(gram).max() * np.abs(weights).sum() + radius * norm
    assert abs(primal - _dual_objective(gram, w_star, c)) <= (1e-12 + norm_rtol) * size


@given(gradient_cases(min_k=2, max_k=7, full_rank=False), st.sampled_from(CS), st.data())
def test_exact_solution_of_the_cagrad_problem(case, c, data):
    """The direction is CAGrad's: it lowers the worst objective most within ‖d − g₀‖ ≤ c‖g₀‖,
    certified by strong duality to rounding level (wherever the step is not zeroed by
    norm_eps, which for c ≥ 1 and Pareto-stationary gradients it must be: then g_w* = 0)."""
    losses = data.draw(positive_losses(case.k))
    assume(case.gram.sum() > 1e-12 * np.trace(case.gram))  # g₀ ≠ 0, else d = g₀ = 0
    weights = CAGradBalancer(c=c).weights(losses, case.gram)
    assert_valid_weights(weights, case.k, sums_to_one=False)
    assume(np.any(weights != 0))
    _assert_optimal(case.gram, weights, c)


@given(gradient_cases(min_k=2, max_k=6), st.sampled_from(CS), st.floats(-8, 8))
def test_invariant_to_the_scale_of_the_gram(case, c, log_factor):
    """Scaling every gradient by one factor leaves the weights unchanged."""
    balancer = CAGradBalancer(c=c)
    np.testing.assert_allclose(
        balancer.weights(np.ones(case.k), 10.0**log_factor * case.gram),
        balancer.weights(np.ones(case.k), case.gram),
        rtol=1e-9,
        atol=1e-12,
    )


@given(gradient_cases(min_k=2, max_k=6), permutation_seeds)
def test_permutation_equivariant(case, seed):
    """Relabelling the objectives relabels the weights."""
    permutation = random_permutation(case.k, seed)
    assert_permutation_equivariant(
        CAGradBalancer().weights, np.ones(case.k), case.gram, permutation, rtol=1e-8
    )


def test_documented_example():
    """Two orthogonal unit gradients: w* = (½, ½), g_w* = g₀, so d = (1 + c) g₀."""
    np.testing.assert_allclose(
        CAGradBalancer(c=0.5).weights([1.0, 1.0], np.eye(2)), [0.75, 0.75], rtol=1e-14
    )


def test_c_zero_is_the_average_and_k_one_is_one_plus_c():
    """c = 0: d = g₀ (weights 1/k). k = 1: g_w* = g₀ = g, so the weight is 1 + c."""
    g = np.array([[1.0, 0.0], [-0.5, 2.0], [0.3, 0.3]])
    np.testing.assert_array_equal(CAGradBalancer(c=0.0).weights(np.ones(3), g @ g.T), 1 / 3)
    np.testing.assert_allclose(CAGradBalancer(c=0.4).weights([1.0], [[9.0]]), [1.4], rtol=1e-15)


def test_large_c_tends_to_mgda():
    """As c → ∞ the term r‖g_w‖ dominates, so w* tends to MGDA's min-norm weights."""
    rng = np.random.default_rng(0)
    for _ in range(10):
        jacobian = rng.standard_normal((4, 6))
        gram = jacobian @ jacobian.T
        weights = CAGradBalancer(c=1e7).weights(np.ones(4), gram)
        np.testing.assert_allclose(_dual_weights(weights), mgda_weights(gram), atol=1e-5)


@pytest.mark.parametrize("c", [1.0, 2.0])
def test_pareto_stationary_with_c_at_least_one_gives_no_step(c):
    """For c ≥ 1 the ball ‖d − g₀‖ ≤ c‖g₀‖ contains d = 0; with 0 in the convex hull of the
    gradients no d lowers every objective, and the step is 0 (for c > 1, g_w* = 0 and the
    weights are zeroed, also with norm_eps = 0: such a ‖g_w*‖ cannot be told from 0 in a
    Gram's rounding; for c = 1 the minimiser is not unique, but every one gives d = 0)."""
    jacobian = np.array([[1.0], [-0.3], [0.7]])
    for norm_eps in (1e-4, 0.0):
        weights = CAGradBalancer(c=c, norm_eps=norm_eps).weights(np.ones(3), jacobian @ jacobian.T)
        np.testing.assert_allclose(weights @ jacobian, 0.0, atol=1e-14)
        if c > 1:
            np.testing.assert_array_equal(weights, 0.0)


def test_all_zero_gradients_give_the_average():
    """With every gradient zero any weights give d = 0; they are 1/k."""
    np.testing.assert_array_equal(CAGradBalancer().weights(np.ones(3), np.zeros((3, 3))), 1 / 3)


def test_norm_eps_zeroes_the_step_as_torchjd_does():
    """When ‖g_w*‖ < norm_eps·‖J‖_F (here g_w* is a gradient 1e5 times shorter than the
    others), the weights are 0, TorchJD's "approximately on the Pareto front"; with
    norm_eps = 0 the exact CAGrad direction is returned instead."""
    jacobian = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1e-5, 1e-5, 0.0]])
    gram = jacobian @ jacobian.T
    np.testing.assert_array_equal(CAGradBalancer().weights(np.ones(3), gram), 0.0)
    weights = CAGradBalancer(norm_eps=0.0).weights(np.ones(3), gram)
    assert np.any(weights != 0)
    _assert_optimal(gram, weights, 0.5)


def test_state_dict_round_trip_into_a_fresh_instance():
    """A fresh default instance loads a configured one's state and gives the same weights."""
    g = np.array([[1.0, 0.2], [-0.3, 2.0]])
    original = CAGradBalancer(c=0.9, norm_eps=1e-6)
    restored = CAGradBalancer()
    restored.load_state_dict(original.state_dict())
    assert (restored.c, restored.norm_eps) == (0.9, 1e-6)
    np.testing.assert_array_equal(
        restored.weights([1.0, 1.0], g @ g.T), original.weights([1.0, 1.0], g @ g.T)
    )


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: CAGradBalancer(c=-0.5), ValueError, r"c must be a finite number ≥ 0, got -0.5"),
        (lambda: CAGradBalancer(c="0.5"), TypeError, r"c must be a real number, got str"),
        (lambda: CAGradBalancer(norm_eps=float("inf")), ValueError, r"norm_eps must be a finite"),
        (lambda: CAGradBalancer().weights([1.0, 1.0]), ValueError, r"gram is required"),
        (
            lambda: CAGradBalancer().weights([1.0, float("nan")], np.eye(2)),
            ValueError,
            r"losses must be finite",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(make, error, message):
    """Bad settings and inputs are refused before any work, naming the argument."""
    with pytest.raises(error, match=message):
        make()


# ------------------------------------------------------------------------------ TorchJD oracle


def _jacobians(layout: str, seed: int, count: int = 20) -> list[np.ndarray]:
    """Random Jacobians: row norms within two decades, strongly conflicting rows, or row norms
    from 1e-3 to 1e3."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        k = int(rng.integers(2, 7))
        decades = 3.0 if layout == "badly scaled" else 1.0
        jacobian = rng.standard_normal((k, int(rng.integers(k, k + 6))))
        jacobian *= 10.0 ** rng.uniform(-decades, decades, (k, 1))
        if layout == "conflicting":
            first = jacobian[0] / np.linalg.norm(jacobian[0])
            jacobian[1:] -= 1.5 * np.outer(np.linalg.norm(jacobian[1:], axis=1), first)
        out.append(jacobian)
    return out


@pytest.mark.parametrize("c", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("layout", ["random", "conflicting", "badly scaled"])
def test_matches_torchjd(c, layout):
    """Against TorchJD's CAGrad aggregator on the same Jacobian (default norm_eps = 1e-4):

    * the step is zeroed in exactly the same cases;
    * otherwise our w* is at least as good for CAGrad's dual problem as TorchJD's (put back on
      the simplex), up to 1e-9 of the Gram's scale (TorchJD solves it with CLARABEL at its
      default tolerances, ~1e-8);
    * and the directions agree to 1e-2 relative: the dual objective is not strongly convex,
      so a 1e-8-accurate objective value fixes the minimiser (hence the direction) only to
      roughly its square root, amplified by the spread of the gradient norms (measured: up
      to 3e-4 with norms within two decades, 7e-3 over six).
    """
    torch = pytest.importorskip("torch")
    aggregation = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("cvxpy")
    pytest.importorskip("clarabel")  # TorchJD's CAGrad solves with CLARABEL
    for jacobian in _jacobians(layout, seed=int(100 * c)):
        k = len(jacobian)
        gram = jacobian @ jacobian.T
        ours = CAGradBalancer(c=c).weights(np.ones(k), gram)
        direction = aggregation.CAGrad(c=c)(torch.tensor(jacobian)).numpy()
        theirs = aggregation.CAGradWeighting(c=c)(torch.tensor(gram)).numpy()
        assert np.any(ours != 0) == np.any(direction != 0)
        if not np.any(ours != 0):
            continue
        scale = np.abs(gram).max()
        ours_value = _dual_objective(gram, _dual_weights(ours), c)
        # the interior-point iterate may sit 1e-9 outside the simplex: project it back first
        their_w = np.maximum(_dual_weights(theirs), 0.0)
        their_value = _dual_objective(gram, their_w / their_w.sum(), c)
        assert ours_value <= their_value + 1e-9 * scale
        tolerance = 1e-2 * np.linalg.norm(direction)
        np.testing.assert_allclose(ours @ jacobian, direction, rtol=1e-2, atol=tolerance)
