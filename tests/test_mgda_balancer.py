"""MGDABalancer: the min-norm point, with optional gradient normalisation."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from properties import assert_on_simplex, assert_parallel
from strategies import gradient_cases, positive_losses

from moopt import MGDABalancer
from moopt.solvers import mgda_weights


@given(gradient_cases(min_k=2, max_k=6, full_rank=False), st.data())
def test_none_is_the_solver_on_the_raw_gram(case, data):
    """normalization="none": the weights are mgda_weights of the raw Gram, whatever the losses."""
    losses = data.draw(positive_losses(case.k))
    np.testing.assert_array_equal(
        MGDABalancer().weights(losses, case.gram), mgda_weights(case.gram)
    )


@given(gradient_cases(min_k=2, max_k=6), st.data())
def test_normalised_weights_are_nonnegative_and_sum_to_one(case, data):
    """Every normalisation returns non-negative weights summing to 1."""
    losses = data.draw(positive_losses(case.k))
    for normalization in ("none", "loss", "l2"):
        assert_on_simplex(MGDABalancer(normalization).weights(losses, case.gram), case.k)


@given(gradient_cases(min_k=2, max_k=5), st.data())
def test_loss_normalisation_is_invariant_to_rescaling_an_objective(case, data):
    """normalization="loss" (log-loss gradients): replacing L_i by a·L_i (so g_i by a·g_i) leaves
    the direction Σ w_i g_i unchanged up to a positive factor — λ cancels."""
    losses = data.draw(positive_losses(case.k))
    factors = 10.0 ** np.array(
        data.draw(st.lists(st.floats(-3, 3), min_size=case.k, max_size=case.k))
    )
    balancer = MGDABalancer("loss")
    direction = balancer.weights(losses, case.gram) @ case.gradients
    scaled_g = case.gradients * factors[:, None]
    scaled_w = balancer.weights(losses * factors, scaled_g @ scaled_g.T)
    assert_parallel(scaled_w @ scaled_g, direction, rtol=1e-5)


@given(gradient_cases(min_k=2, max_k=5), st.data())
def test_l2_normalisation_is_invariant_to_rescaling_a_gradient(case, data):
    """normalization="l2": rescaling any gradient g_i by a > 0 leaves the direction unchanged up
    to a positive factor."""
    losses = data.draw(positive_losses(case.k))
    factors = 10.0 ** np.array(
        data.draw(st.lists(st.floats(-3, 3), min_size=case.k, max_size=case.k))
    )
    balancer = MGDABalancer("l2")
    direction = balancer.weights(losses, case.gram) @ case.gradients
    scaled_g = case.gradients * factors[:, None]
    assert_parallel(balancer.weights(losses, scaled_g @ scaled_g.T) @ scaled_g, direction, 1e-5)


def test_l2_gives_equal_angles_for_two_objectives():
    """With unit-normalised gradients, the k = 2 min-norm direction bisects the angle."""
    g = np.array([[1.0, 0.0], [0.0, 10.0]])
    direction = MGDABalancer("l2").weights([1.0, 1.0], g @ g.T) @ g
    cosines = g @ direction / np.linalg.norm(g, axis=1) / np.linalg.norm(direction)
    np.testing.assert_allclose(cosines[0], cosines[1], rtol=1e-12)


def test_loss_normalisation_uses_the_floor():
    """normalization="loss" divides gradient i by ℓ_i = L_i − loss_floor."""
    g = np.eye(2)
    balancer = MGDABalancer("loss", loss_floor=-1.0)
    # h = (1/2, 1/4) along the axes: min-norm point weights α ∝ (1/4², 1/2²) = (0.2, 0.8),
    # raw weights ∝ α / ℓ = (0.1, 0.2) -> (1/3, 2/3)
    np.testing.assert_allclose(balancer.weights([1.0, 3.0], g), [1 / 3, 2 / 3], rtol=1e-12)


def test_zero_gradient_with_l2():
    """A zero gradient keeps scale 1 under "l2" and, being the min-norm point, takes all weight."""
    g = np.array([[0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(MGDABalancer("l2").weights([1.0, 1.0], g @ g.T), [1.0, 0.0])
