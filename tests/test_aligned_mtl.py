"""AlignedMTLBalancer: the aligned gradients have condition number 1; TorchJD's AlignedMTL."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from properties import (
    assert_gram_scale_invariant,
    assert_permutation_equivariant,
    assert_valid_weights,
)
from strategies import gradient_cases, permutation_seeds, positive_losses, random_permutation

from moopt.balancers.aligned_mtl import AlignedMTLBalancer

MODES = ["min", "median", "rmse"]


def _aligned_weight_matrix(gram: np.ndarray, scale_mode: str) -> np.ndarray:
    """Column j: the weights for the preference e_j, i.e. the j-th aligned gradient
    ĝ_j = Σ_i W_ij g_i as a combination of the raw ones."""
    k = len(gram)
    return np.column_stack(
        [AlignedMTLBalancer(np.eye(k)[j], scale_mode).weights(np.ones(k), gram) for j in range(k)]
    )


@given(gradient_cases(min_k=1, max_k=7), st.data())
def test_aligned_gradients_are_orthogonal_with_equal_norms(case, data):
    """The defining property (condition number 1): the aligned gradients ĝ_j are orthogonal
    and all of squared norm s, the smallest eigenvalue of G ("min"): WᵀGW = s·I, to rounding
    relative to G's largest eigenvalue."""
    losses = data.draw(positive_losses(case.k))
    weights = AlignedMTLBalancer().weights(losses, case.gram)
    assert_valid_weights(weights, case.k, sums_to_one=False)
    matrix = _aligned_weight_matrix(case.gram, "min")
    eigenvalues = np.linalg.eigvalsh(case.gram)
    aligned_gram = matrix.T @ case.gram @ matrix
    np.testing.assert_allclose(
        aligned_gram, eigenvalues[0] * np.eye(case.k), atol=1e-12 * eigenvalues[-1]
    )
    # the default preference is the mean of the aligned gradients: w = W·1/k
    np.testing.assert_allclose(weights, matrix.mean(axis=1), rtol=1e-12, atol=1e-15)


@given(gradient_cases(min_k=3, max_k=7, full_rank=False))
def test_dependent_gradients_are_aligned_on_their_span(case):
    """With fewer dimensions than objectives, G has rank r < k: the aligned gradients have
    Gram s·P, P the projection onto the span of G (r eigenvalues s, the rest 0)."""
    eigenvalues = np.linalg.eigvalsh(case.gram)
    kept = eigenvalues[eigenvalues > eigenvalues[-1] * case.k * np.finfo(float).eps]
    matrix = _aligned_weight_matrix(case.gram, "min")
    aligned = np.linalg.eigvalsh(matrix.T @ case.gram @ matrix)
    expected = np.sort(np.r_[np.zeros(case.k - len(kept)), np.full(len(kept), kept[0])])
    np.testing.assert_allclose(aligned, expected, atol=1e-9 * eigenvalues[-1])


@given(
    gradient_cases(min_k=2, max_k=6), st.sampled_from(MODES), st.floats(-8, 8), permutation_seeds
)
def test_invariant_to_gram_scale_and_equivariant_to_relabelling(case, mode, log_factor, seed):
    """Scaling every gradient leaves the weights unchanged (s/λ_i is scale-free); relabelling
    the objectives (with the uniform preference) relabels them; both to rounding level times
    cond(G), which the eigendecomposition's small eigenvectors carry, relative to the largest
    weight: a small weight is a sum over eigenvectors that cancels, and keeps the rounding of
    its terms."""
    balancer = AlignedMTLBalancer(scale_mode=mode)
    losses = np.ones(case.k)
    rtol = 1e-14 * np.linalg.cond(case.gram) + 1e-12
    assert_gram_scale_invariant(balancer.weights, losses, case.gram, 10.0**log_factor, rtol)
    permutation = random_permutation(case.k, seed)
    assert_permutation_equivariant(balancer.weights, losses, case.gram, permutation, rtol)


def test_documented_example_and_scale_modes():
    """G = diag(1, 4, 9, 16): w_i = √s/(4√λ_i) with s = 1 ("min"), the lower median 4
    ("median", as torch.median) or the mean 7.5 ("rmse")."""
    gram = np.diag([1.0, 4.0, 9.0, 16.0])
    inverse_roots = np.array([1.0, 1 / 2, 1 / 3, 1 / 4]) / 4
    for mode, scale in [("min", 1.0), ("median", 4.0), ("rmse", 7.5)]:
        weights = AlignedMTLBalancer(scale_mode=mode).weights(np.ones(4), gram)
        np.testing.assert_allclose(weights, np.sqrt(scale) * inverse_roots, rtol=1e-15)


def test_single_objective_and_zero_gradients():
    """k = 1: the weight is the preference (the gradient is already aligned). All gradients
    zero (rank 0): the weights are the preference, as TorchJD's identity transformation."""
    np.testing.assert_allclose(AlignedMTLBalancer().weights([2.0], [[9.0]]), [1.0], rtol=1e-15)
    np.testing.assert_array_equal(AlignedMTLBalancer().weights(np.ones(3), np.zeros((3, 3))), 1 / 3)
    balancer = AlignedMTLBalancer(pref_vector=[1.0, 3.0])
    np.testing.assert_array_equal(balancer.weights(np.ones(2), np.zeros((2, 2))), [1.0, 3.0])


def test_pref_vector_fixes_k_and_weights_the_aligned_gradients():
    """A preference vector fixes k and is linear: w(p) = W p for the aligned weight matrix W."""
    rng = np.random.default_rng(1)
    jacobian = rng.standard_normal((3, 5))
    gram = jacobian @ jacobian.T
    pref = np.array([0.2, 0.5, 0.3])
    balancer = AlignedMTLBalancer(pref_vector=pref)
    assert balancer.num_objectives == 3
    np.testing.assert_allclose(
        balancer.weights(np.ones(3), gram), _aligned_weight_matrix(gram, "min") @ pref, rtol=1e-12
    )
    with pytest.raises(ValueError, match=r"losses must have 3 entries"):
        balancer.weights(np.ones(2), np.eye(2))


def test_state_dict_round_trip_into_a_fresh_instance():
    """A fresh default instance (no k) loads a configured one's state, k included."""
    gram = np.array([[2.0, 0.5, 0.1], [0.5, 1.0, -0.2], [0.1, -0.2, 3.0]])
    original = AlignedMTLBalancer(pref_vector=[1.0, 2.0, 0.5], scale_mode="rmse")
    restored = AlignedMTLBalancer()
    restored.load_state_dict(original.state_dict())
    assert restored.num_objectives == 3 and restored.scale_mode == "rmse"
    np.testing.assert_array_equal(
        restored.weights(np.ones(3), gram), original.weights(np.ones(3), gram)
    )


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda: AlignedMTLBalancer(scale_mode="max"),
            ValueError,
            r"scale_mode must be one of \('min', 'median', 'rmse'\), got 'max'",
        ),
        (lambda: AlignedMTLBalancer([1.0, -1.0]), ValueError, r"pref_vector must be ≥ 0"),
        (lambda: AlignedMTLBalancer([0.0, 0.0]), ValueError, r"pref_vector must not all be zero"),
        (
            lambda: AlignedMTLBalancer([1.0, float("nan")]),
            ValueError,
            r"pref_vector must be finite",
        ),
        (lambda: AlignedMTLBalancer("uniform"), TypeError, r"pref_vector must be an array-like"),
        (lambda: AlignedMTLBalancer().weights([1.0, 1.0]), ValueError, r"gram is required"),
        (
            lambda: AlignedMTLBalancer([1.0, 1.0]).load_state_dict(
                AlignedMTLBalancer([1.0, 1.0, 1.0]).state_dict()
            ),
            ValueError,
            r"state is for 3 objectives, this AlignedMTLBalancer has 2",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(make, error, message):
    """Bad settings and inputs are refused before any work, naming the argument."""
    with pytest.raises(error, match=message):
        make()


# ------------------------------------------------------------------------------ TorchJD oracle


def _jacobians(seed: int, decades: float, rank_deficient: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for trial in range(30):
        k = int(rng.integers(2, 8))
        n = int(rng.integers(1, k) if rank_deficient else rng.integers(k, k + 6))
        jacobian = rng.standard_normal((k, n)) * 10.0 ** rng.uniform(-decades, decades, (k, 1))
        if rank_deficient and trial % 2:
            jacobian[-1] = 2.0 * jacobian[0]
        out.append(jacobian)
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rank_deficient", [False, True], ids=["independent", "dependent"])
def test_matches_torchjd(mode, rank_deficient):
    """With row norms within two decades, our direction equals TorchJD's AlignedMTL
    aggregation (default preference) to 1e-7: the same eigendecomposition of the same Gram,
    the same rank cut (λ > λ_max·k·ε), computed by another LAPACK call on a Gram rounded in
    another order (measured differences below 1e-8)."""
    torch = pytest.importorskip("torch")
    aggregation = pytest.importorskip("torchjd.aggregation")
    for jacobian in _jacobians(2, 1.0, rank_deficient):
        weights = AlignedMTLBalancer(scale_mode=mode).weights(
            np.ones(len(jacobian)), jacobian @ jacobian.T
        )
        expected = aggregation.AlignedMTL(scale_mode=mode)(torch.tensor(jacobian)).numpy()
        np.testing.assert_allclose(
            weights @ jacobian, expected, rtol=1e-7, atol=1e-7 * np.linalg.norm(expected)
        )


def test_matches_torchjd_with_a_preference_vector():
    """A preference vector is applied as TorchJD's pref_vector (the aligned gradients'
    weights, not normalised)."""
    torch = pytest.importorskip("torch")
    aggregation = pytest.importorskip("torchjd.aggregation")
    pref = np.array([0.5, 2.0, 1.0, 0.1])
    for jacobian in _jacobians(4, 1.0, rank_deficient=False):
        if len(jacobian) != 4:
            continue
        weights = AlignedMTLBalancer(pref).weights(np.ones(4), jacobian @ jacobian.T)
        expected = aggregation.AlignedMTL(pref_vector=torch.tensor(pref))(torch.tensor(jacobian))
        np.testing.assert_allclose(weights @ jacobian, expected.numpy(), rtol=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_matches_torchjd_on_badly_scaled_rows(mode):
    """Row norms from 1e-3 to 1e3: G's small eigenvectors are only determined to about
    ε·cond(G), which Λ^(−½) then amplifies; both implementations decompose G, so they agree
    to 10·ε·cond(G) (measured: at most 1.2·ε·cond(G)), not better."""
    torch = pytest.importorskip("torch")
    aggregation = pytest.importorskip("torchjd.aggregation")
    for jacobian in _jacobians(3, 3.0, rank_deficient=False):
        gram = jacobian @ jacobian.T
        weights = AlignedMTLBalancer(scale_mode=mode).weights(np.ones(len(jacobian)), gram)
        expected = aggregation.AlignedMTL(scale_mode=mode)(torch.tensor(jacobian)).numpy()
        rtol = 10 * np.finfo(float).eps * np.linalg.cond(gram) + 1e-9
        np.testing.assert_allclose(
            weights @ jacobian, expected, rtol=rtol, atol=rtol * np.linalg.norm(expected)
        )
