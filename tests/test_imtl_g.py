"""IMTLGBalancer: equal projections onto the unit gradients, and TorchJD's IMTLG as an oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from properties import assert_permutation_equivariant, assert_valid_weights
from strategies import gradient_cases, permutation_seeds, positive_losses, random_permutation

from moopt.balancers.imtl_g import IMTLGBalancer


def _projections(gram: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """dᵀu_i = (Gw)_i / ‖g_i‖: the direction's projection onto each unit gradient."""
    return gram @ weights / np.sqrt(np.diag(gram))


def _exact_weights(gram: np.ndarray) -> np.ndarray:
    """v = G⁻¹ diag(G)^½ normalised to sum 1, in 60-digit arithmetic on the float64 Gram."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(60):
        matrix = mpmath.matrix(gram.tolist())
        norms = mpmath.matrix([mpmath.sqrt(mpmath.mpf(float(q))) for q in np.diag(gram)])
        v = mpmath.lu_solve(matrix, norms)
        total = sum(v)
        return np.array([float(x / total) for x in v])


@given(gradient_cases(min_k=1, max_k=8), st.data())
def test_equal_projections_onto_every_unit_gradient(case, data):
    """For linearly independent gradients the weights sum to 1 and the direction has the same
    projection 1/Σv onto every unit gradient (to rounding times the cancellation in Gw)."""
    losses = data.draw(positive_losses(case.k))
    weights = IMTLGBalancer().weights(losses, case.gram)
    assert_valid_weights(weights, case.k)
    projections = _projections(case.gram, weights)
    sizes = np.abs(case.gram) @ np.abs(weights) / np.sqrt(np.diag(case.gram))
    # the solve with the cosine matrix C errs by about ε·cond(C) relative
    norms = np.sqrt(np.diag(case.gram))
    condition = np.linalg.cond(case.gram / np.outer(norms, norms))
    np.testing.assert_allclose(
        projections, projections[0], rtol=0, atol=1e-14 * condition * sizes.max()
    )


@given(gradient_cases(min_k=2, max_k=6), st.floats(-8, 8), permutation_seeds)
def test_invariant_to_gram_scale_and_equivariant_to_relabelling(case, log_factor, seed):
    """Scaling every gradient leaves the weights unchanged; relabelling the objectives
    relabels them; both to rounding level times the condition number of the cosine matrix
    the weights are solved with, times the cancellation Σ|v| / |Σv| of the normalisation."""
    balancer = IMTLGBalancer()
    losses = np.ones(case.k)
    norms = np.sqrt(np.diag(case.gram))
    weights = balancer.weights(losses, case.gram)
    # the weights sum to 1, so Σ|w| is how much the normalising sum cancelled
    condition = np.linalg.cond(case.gram / np.outer(norms, norms))
    rtol = (1e-14 * condition + 1e-12) * np.abs(weights).sum()
    np.testing.assert_allclose(
        balancer.weights(losses, 10.0**log_factor * case.gram),
        weights,
        rtol=rtol,
        atol=1e-15,
    )
    permutation = random_permutation(case.k, seed)
    assert_permutation_equivariant(balancer.weights, losses, case.gram, permutation, rtol)


@given(gradient_cases(min_k=2, max_k=6), st.data())
def test_rescaling_a_gradient_keeps_the_line_of_the_direction(case, data):
    """Replacing g_i by a_i g_i (a_i > 0) changes v to v_i/a_i, so Σ v_i g_i is unchanged and d
    stays on the same line (only the normalisation 1/Σv, hence its length and sign, moves)."""
    factors = 10.0 ** np.array(
        data.draw(st.lists(st.floats(-2, 2), min_size=case.k, max_size=case.k))
    )
    direction = IMTLGBalancer().weights(np.ones(case.k), case.gram) @ case.gradients
    scaled_g = case.gradients * factors[:, None]
    scaled = IMTLGBalancer().weights(np.ones(case.k), scaled_g @ scaled_g.T) @ scaled_g
    cosine = scaled @ direction / (np.linalg.norm(scaled) * np.linalg.norm(direction))
    np.testing.assert_allclose(abs(cosine), 1.0, rtol=1e-8)


def test_documented_example():
    """g = diag(1, 3): v = (1, 1/3), w = (3/4, 1/4), projections (3/4, 3/4)."""
    g = np.diag([1.0, 3.0])
    weights = IMTLGBalancer().weights([1.0, 1.0], g @ g.T)
    np.testing.assert_allclose(weights, [0.75, 0.25], rtol=1e-15)
    np.testing.assert_allclose(_projections(g @ g.T, weights), 0.75, rtol=1e-15)


def test_dependent_gradients_still_have_equal_projections():
    """A repeated direction (g₃ = 2 g₁): G is singular, v = G⁺n still gives equal
    projections onto every unit gradient (the system is consistent)."""
    jacobian = np.array([[1.0, 0.0, 0.5], [0.2, 1.0, 0.0], [2.0, 0.0, 1.0]])
    gram = jacobian @ jacobian.T
    weights = IMTLGBalancer().weights(np.ones(3), gram)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-14)
    projections = _projections(gram, weights)
    np.testing.assert_allclose(projections, projections[0], rtol=1e-12)


def test_zero_gradient_gets_no_weight():
    """A zero gradient gets weight 0 (its row of G⁺ vanishes); the others are IMTL-G's."""
    jacobian = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    weights = IMTLGBalancer().weights(np.ones(3), jacobian @ jacobian.T)
    np.testing.assert_allclose(weights, [0.75, 0.0, 0.25], rtol=1e-15)


@pytest.mark.parametrize(
    "jacobian",
    [np.zeros((2, 3)), np.array([[1.0, 2.0], [-1.0, -2.0]])],
    ids=["all zero", "opposite"],
)
def test_degenerate_cases_give_no_step(jacobian):
    """With all gradients zero, or two opposite ones (no direction has equal projections: the
    least-squares v sums to 0), the weights are 0, as in TorchJD."""
    weights = IMTLGBalancer().weights(np.ones(2), jacobian @ jacobian.T)
    np.testing.assert_array_equal(weights, 0.0)


def test_negative_normalisation_raises_every_loss_as_in_torchjd():
    """Documented hazard of the formula (also TorchJD's, also the paper's closed form): when
    Σ_i v_i < 0 the weights still sum to 1 but the common projection is negative, so the step
    d raises every loss to first order. It happens for about 1 in 10 random triples of
    gradients whose norms differ within two decades."""
    jacobian = np.array([[-0.41, -0.04, -0.22], [-1.61, -1.19, -0.69], [0.81, 2.05, -0.25]])
    gram = jacobian @ jacobian.T
    weights = IMTLGBalancer().weights(np.ones(3), gram)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-14)
    assert np.all(jacobian @ (weights @ jacobian) < 0)
    torch = pytest.importorskip("torch")
    aggregation = pytest.importorskip("torchjd.aggregation")
    expected = aggregation.IMTLG()(torch.tensor(jacobian)).numpy()
    np.testing.assert_allclose(weights @ jacobian, expected, rtol=1e-10)


def test_state_dict_round_trip_into_a_fresh_instance():
    """IMTL-G has no settings; a state dict names it and loads into a fresh instance."""
    state = IMTLGBalancer().state_dict()
    assert state == {"balancer": "IMTLGBalancer", "num_objectives": None}
    IMTLGBalancer().load_state_dict(state)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: IMTLGBalancer().weights([1.0, 1.0]), r"gram is required"),
        (lambda: IMTLGBalancer().weights([1.0, 1.0], [[1.0, 0.5], [0.4, 1.0]]), r"symmetric"),
        (lambda: IMTLGBalancer().weights([], np.zeros((0, 0))), r"at least one objective"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    """Bad inputs are refused before any work, naming the argument."""
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------------ TorchJD oracle


def _jacobians(seed: int, decades: float, rank_deficient: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for trial in range(30):
        k = int(rng.integers(2, 8))
        n = int(rng.integers(1, k) if rank_deficient else rng.integers(k, k + 6))
        jacobian = rng.standard_normal((k, n)) * 10.0 ** rng.uniform(-decades, decades, (k, 1))
        if rank_deficient and trial % 2:
            jacobian[-1] = 2.0 * jacobian[0]  # a repeated direction (consistent system)
        out.append(jacobian)
    return out


@pytest.mark.parametrize("rank_deficient", [False, True], ids=["independent", "dependent"])
def test_matches_torchjd(rank_deficient):
    """With row norms within two decades, our direction equals TorchJD's IMTLG aggregation on
    the same Jacobian to 1e-8 (independent rows: both solve G v = n exactly, TorchJD through
    G's pseudo-inverse, whose rounding is cond(G)·ε ≤ ~1e-10 here) and to 1e-6 for dependent
    rows (both cut the same zero eigenvalues; the rest of G⁺ is as well conditioned)."""
    torch = pytest.importorskip("torch")
    aggregation = pytest.importorskip("torchjd.aggregation")
    for jacobian in _jacobians(5, 1.0, rank_deficient):
        weights = IMTLGBalancer().weights(np.ones(len(jacobian)), jacobian @ jacobian.T)
        expected = aggregation.IMTLG()(torch.tensor(jacobian)).numpy()
        rtol = 1e-6 if rank_deficient else 1e-8
        scale = max(np.linalg.norm(expected), np.linalg.norm(weights @ jacobian))
        np.testing.assert_allclose(weights @ jacobian, expected, rtol=rtol, atol=rtol * scale)


def test_badly_scaled_rows_exact_where_torchjd_rounds():
    """Row norms from 1e-3 to 1e3 make G ill-conditioned (cond ~1e12 and more) but not the
    cosine matrix: solving with the cosines, our weights match the 60-digit solution to 1e-9,
    while TorchJD's pseudo-inverse of G is only good to about ε·cond(G), the tolerance it is
    held to here."""
    torch = pytest.importorskip("torch")
    aggregation = pytest.importorskip("torchjd.aggregation")
    for jacobian in _jacobians(9, 3.0, rank_deficient=False):
        gram = jacobian @ jacobian.T
        gram = 0.5 * (gram + gram.T)
        weights = IMTLGBalancer().weights(np.ones(len(jacobian)), gram)
        exact = _exact_weights(gram) @ jacobian
        np.testing.assert_allclose(
            weights @ jacobian, exact, rtol=1e-9, atol=1e-9 * np.linalg.norm(exact)
        )
        expected = aggregation.IMTLG()(torch.tensor(jacobian)).numpy()
        rtol = 10 * np.finfo(float).eps * np.linalg.cond(gram)
        np.testing.assert_allclose(expected, exact, rtol=rtol, atol=rtol * np.linalg.norm(exact))
