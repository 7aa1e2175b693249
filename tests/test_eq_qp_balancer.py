"""EqQPBalancer: equal first-order decrease of every log-loss, mapped to raw-gradient weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from properties import assert_parallel, assert_valid_weights
from strategies import gradient_cases, positive_losses

from moopt import EqQPBalancer
from moopt.balancers.eq_qp import RENORMALISATION_RTOL
from moopt.solvers import eq_qp_weights, mgda_weights


def _log_gram(gram: np.ndarray, shifted: np.ndarray) -> np.ndarray:
    return gram / np.outer(shifted, shifted)


def _unguarded(gram: np.ndarray, shifted: np.ndarray) -> bool:
    raw = eq_qp_weights(_log_gram(gram, shifted)) / shifted
    return raw.sum() > RENORMALISATION_RTOL * np.abs(raw).sum()


@given(gradient_cases(min_k=2, max_k=6), st.data())
def test_every_log_loss_decreases_at_the_same_rate(case, data):
    """With log_losses=True the direction d = Σ w_i g_i lowers every log ℓ_i at the same
    positive first-order rate: (Qw)_i / ℓ_i = ∇log ℓ_i · d is equal for all i and > 0."""
    losses = data.draw(positive_losses(case.k))
    assume(_unguarded(case.gram, losses))
    balancer = EqQPBalancer()
    weights = balancer.weights(losses, case.gram)
    assert not balancer.last_guarded
    assert_valid_weights(weights, case.k)
    rates = case.gram @ weights / losses
    assert rates.min() > 0
    # rounding: the KKT residual of the log-loss QP, times the renormalisation factor
    log_gram = _log_gram(case.gram, losses)
    qp_weights = eq_qp_weights(log_gram)
    factor = 1.0 / (qp_weights / losses).sum()
    tolerance = 1e-9 * factor * np.abs(log_gram).max() * np.abs(qp_weights).sum()
    np.testing.assert_allclose(rates, rates.mean(), rtol=1e-9, atol=tolerance)


@given(gradient_cases(min_k=2, max_k=6, full_rank=False), st.data())
def test_exactly_the_renormalised_qp_solution_when_unguarded(case, data):
    """Whenever Σ w_i/ℓ_i > 1e-3·Σ|w_i/ℓ_i| (w the QP solution on the log-loss Gram), the result
    is exactly (w_i/ℓ_i) / Σ_j (w_j/ℓ_j)."""
    losses = data.draw(positive_losses(case.k))
    floor = data.draw(st.sampled_from([0.0, -1.0]))
    shifted = losses - floor
    assume(_unguarded(case.gram, shifted))
    raw = eq_qp_weights(_log_gram(case.gram, shifted)) / shifted
    weights = EqQPBalancer(loss_floor=floor).weights(losses, case.gram)
    np.testing.assert_array_equal(weights, raw / raw.sum())


@given(gradient_cases(min_k=2, max_k=5), st.data())
def test_lambda_cancels_from_the_direction(case, data):
    """Scaling objective i by a_i > 0 (as λ scales D) leaves the direction unchanged up to a
    positive factor: the log-loss gradients ∇L_i/L_i do not change (floor 0). (Only the
    renormalisation guard, when it acts, depends on the scaling.)"""
    losses = data.draw(positive_losses(case.k))
    factors = 10.0 ** np.array(
        data.draw(st.lists(st.floats(-3, 3), min_size=case.k, max_size=case.k))
    )
    # the guard depends on Σ w_i/ℓ_i, which the scaling changes: compare unguarded steps
    scaled_g = case.gradients * factors[:, None]
    assume(_unguarded(case.gram, losses) and _unguarded(scaled_g @ scaled_g.T, losses * factors))
    balancer = EqQPBalancer()
    direction = balancer.weights(losses, case.gram) @ case.gradients
    scaled = balancer.weights(losses * factors, scaled_g @ scaled_g.T) @ scaled_g
    assert_parallel(scaled, direction, rtol=1e-5)


@given(gradient_cases(min_k=2, max_k=6, full_rank=False))
def test_raw_mode_is_the_qp_solution(case):
    """log_losses=False returns eq_qp_weights of the raw Gram, whatever the losses."""
    losses = np.linspace(-5, 5, case.k)  # no logs taken: any finite losses are allowed
    np.testing.assert_array_equal(
        EqQPBalancer(log_losses=False).weights(losses, case.gram), eq_qp_weights(case.gram)
    )


def test_guard_when_the_renormalisation_would_turn_the_step_into_ascent():
    """h₁ = (1, 0), h₂ = (2, 0.1) give the QP solution w ≈ (1.99, −0.99); with ℓ = (10, 1),
    Σ w_i/ℓ_i < 0 and rescaling would reverse the step. The guard returns the MGDA weights on
    the log-loss Gram instead: non-negative, summing to 1, non-increasing on every log-loss."""
    shifted = np.array([10.0, 1.0])
    h = np.array([[1.0, 0.0], [2.0, 0.1]])
    g = h * shifted[:, None]
    balancer = EqQPBalancer()
    weights = balancer.weights(shifted, g @ g.T)
    assert balancer.last_guarded
    assert_valid_weights(weights, 2)
    assert np.all(weights >= 0)
    alpha = mgda_weights(h @ h.T)
    np.testing.assert_allclose(weights, (alpha / shifted) / (alpha / shifted).sum(), rtol=1e-12)
    assert np.all(h @ (weights @ g) >= 0)


@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
def test_singular_gram_gives_finite_weights(scale):
    """Identical log-loss gradients (a singular Gram) still give finite weights summing to 1."""
    losses = np.array([2.0, 4.0])
    g = np.sqrt(scale) * np.array([[1.0, 1.0], [2.0, 2.0]])  # h₁ = h₂
    balancer = EqQPBalancer()
    weights = balancer.weights(losses, g @ g.T)
    assert_valid_weights(weights, 2)
    assert balancer.last_solution is not None and not balancer.last_solution.exact


def test_documented_example_two_orthogonal_gradients():
    """g = diag(1, 2), L = (1, 4): h = diag(1, ½), w = (0.2, 0.8), raw (0.2, 0.2) -> (½, ½)."""
    g = np.diag([1.0, 2.0])
    np.testing.assert_allclose(EqQPBalancer().weights([1.0, 4.0], g @ g.T), [0.5, 0.5])
