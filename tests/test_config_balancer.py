"""ConFIGBalancer: TorchJD's ConFIG (pseudo-inverse of the unit gradients) from the Gram alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from properties import (
    assert_permutation_equivariant,
    cosine_condition,
)
from strategies import gradient_cases, permutation_seeds, random_permutation
from torchjd.aggregation import ConFIG

from moopt import ConFIGBalancer


def _torchjd(gradients: np.ndarray, preference: np.ndarray | None = None) -> np.ndarray:
    pref = None if preference is None else torch.tensor(preference)
    return ConFIG(pref)(torch.tensor(gradients)).numpy()


def _tolerance(gradients: np.ndarray) -> float:
    """Relative accuracy of a solve on the Gram: 1e-10 plus rounding times cond(C)."""
    return 1e-10 + 1e-14 * cosine_condition(gradients)


@given(gradient_cases(min_k=1, max_k=7))
def test_matches_torchjd(case):
    """The direction Σ w_i g_i is TorchJD's ConFIG output for linearly independent gradients, to
    1e-10 plus the rounding that the condition number of the cosine matrix amplifies."""
    direction = ConFIGBalancer().weights(np.ones(case.k), case.gram) @ case.gradients
    expected = _torchjd(case.gradients)
    atol = _tolerance(case.gradients) * np.abs(expected).max()
    np.testing.assert_allclose(direction, expected, rtol=0, atol=atol)


@given(gradient_cases(min_k=2, max_k=6), st.data())
def test_matches_torchjd_with_a_preference(case, data):
    preference = np.array(data.draw(st.lists(st.floats(0.1, 3), min_size=case.k, max_size=case.k)))
    direction = ConFIGBalancer(preference).weights(np.ones(case.k), case.gram) @ case.gradients
    expected = _torchjd(case.gradients, preference)
    atol = _tolerance(case.gradients) * np.abs(expected).max()
    np.testing.assert_allclose(direction, expected, rtol=0, atol=atol)


@pytest.mark.parametrize(("k", "n"), [(3, 1), (4, 2), (6, 3)])
def test_matches_torchjd_for_dependent_gradients(k, n):
    """More objectives than dimensions: both take the minimum-norm (pseudo-inverse) solution."""
    rng = np.random.default_rng(k * 10 + n)
    g = rng.standard_normal((k, n)) * 10.0 ** rng.uniform(-1, 1, (k, 1))
    direction = ConFIGBalancer().weights(np.ones(k), g @ g.T) @ g
    expected = _torchjd(g)
    np.testing.assert_allclose(direction, expected, rtol=0, atol=1e-8 * np.abs(expected).max())


@pytest.mark.parametrize("factor", [1e-8, 1.0, 10.0, 1e9])
def test_unreachable_preference_gives_no_direction(factor):
    """Opposite gradients and p = (1, 1): no direction has cosine +c with both, Û⁺p is 0 up to
    rounding, and both TorchJD and the balancer return a direction of rounding size (normalize's
    eps keeps the rounding from being scaled up to a unit vector)."""
    g = np.array([[0.34892495], [-10.37347372]]) * np.sqrt(factor)
    weights = ConFIGBalancer().weights([1.0, 1.0], g @ g.T)
    scale = np.abs(g).max()
    assert np.abs(weights @ g).max() <= 1e-6 * scale
    assert np.abs(_torchjd(g)).max() <= 1e-6 * scale


def test_zero_gradient_gets_no_weight():
    """A zero gradient has unit vector 0 in TorchJD (nan_to_num) and weight 0 here; all zero
    gradients give all zero weights (TorchJD's output is the zero vector)."""
    g = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 1.0, 0.5]])
    weights = ConFIGBalancer().weights(np.ones(3), g @ g.T)
    assert weights[0] == 0.0
    np.testing.assert_allclose(weights @ g, _torchjd(g), atol=1e-12)
    np.testing.assert_array_equal(ConFIGBalancer().weights([1.0, 1.0], np.zeros((2, 2))), 0.0)


@given(gradient_cases(min_k=2, max_k=6))
def test_equal_cosines_and_no_conflict(case):
    """For independent gradients the direction has the same cosine with every gradient, and
    that cosine is positive: the direction conflicts with none."""
    g = case.gradients
    direction = ConFIGBalancer().weights(np.ones(case.k), case.gram) @ g
    cosines = g @ direction / np.linalg.norm(g, axis=1) / np.linalg.norm(direction)
    np.testing.assert_allclose(cosines, cosines.mean(), rtol=1e-7)
    assert cosines.min() > 0


@given(gradient_cases(min_k=2, max_k=6))
def test_length_is_the_sum_of_projections(case):
    """‖d‖ = Σ_i g_iᵀd / ‖d‖ (ConFIG's length: the projections of the gradients on d, summed)."""
    g = case.gradients
    direction = ConFIGBalancer().weights(np.ones(case.k), case.gram) @ g
    length = np.linalg.norm(direction)
    np.testing.assert_allclose(length, (g @ direction).sum() / length, rtol=1e-6)


@given(gradient_cases(min_k=2, max_k=6), st.floats(-12, 12))
def test_scale_invariant(case, log_factor):
    """For independent gradients the weights do not depend on the overall scale (up to the
    rounding that the condition number of the cosine matrix amplifies)."""
    balancer = ConFIGBalancer()
    plain = balancer.weights(np.ones(case.k), case.gram)
    scaled = balancer.weights(np.ones(case.k), 10.0**log_factor * case.gram)
    atol = _tolerance(case.gradients) * np.abs(plain).max()
    np.testing.assert_allclose(scaled, plain, rtol=0, atol=atol)


@given(gradient_cases(min_k=2, max_k=6, full_rank=False), st.floats(-12, 12))
def test_scale_invariant_direction(case, log_factor):
    """Also for dependent gradients the direction does not depend on the overall scale, up to
    the rounding-size directions of an unreachable preference (see above)."""
    g = case.gradients
    balancer = ConFIGBalancer()
    scaled = balancer.weights(np.ones(case.k), 10.0**log_factor * case.gram) @ g
    plain = balancer.weights(np.ones(case.k), case.gram) @ g
    np.testing.assert_allclose(scaled, plain, rtol=0, atol=1e-6 * np.abs(g).sum())


@given(gradient_cases(min_k=2, max_k=6), permutation_seeds)
def test_permutation_equivariant(case, seed):
    perm = random_permutation(case.k, seed)
    assert_permutation_equivariant(
        ConFIGBalancer().weights, np.ones(case.k), case.gram, perm, rtol=1e-7
    )


def test_settings():
    assert ConFIGBalancer().num_objectives is None
    assert ConFIGBalancer([1, 2, 3]).num_objectives == 3
    assert repr(ConFIGBalancer([1, 2])) == "ConFIGBalancer(pref_vector=[1.0, 2.0])"
    with pytest.raises(ValueError, match="pref_vector must be one-dimensional"):
        ConFIGBalancer([[1.0]])
