"""WeightedSumBalancer: fixed weights, returned exactly as given."""

from __future__ import annotations

import numpy as np

from moopt import WeightedSumBalancer


def test_returns_weights_exactly_as_given_not_normalised():
    """[1, λ'] reproduces standard training: the weights are not rescaled to sum to 1."""
    balancer = WeightedSumBalancer([1.0, 0.0130 * 255**2])
    weights = balancer.weights([0.5, 300.0])
    np.testing.assert_array_equal(weights, [1.0, 0.0130 * 255**2])


def test_ignores_losses_and_gram():
    """The weights depend on neither the losses nor a Gram passed along."""
    balancer = WeightedSumBalancer([2, 1, 0])
    np.testing.assert_array_equal(balancer.weights([1.0, 2.0, 3.0]), [2.0, 1.0, 0.0])
    np.testing.assert_array_equal(balancer.weights([9.0, 9.0, 9.0], np.eye(3)), [2.0, 1.0, 0.0])


def test_returned_array_is_a_copy():
    """Changing a returned array does not change the balancer."""
    balancer = WeightedSumBalancer([1.0, 2.0])
    balancer.weights([1.0, 1.0])[:] = 7.0
    np.testing.assert_array_equal(balancer.weights([1.0, 1.0]), [1.0, 2.0])


def test_input_array_is_copied():
    """Changing the array the balancer was built from does not change it."""
    fixed = np.array([1.0, 2.0])
    balancer = WeightedSumBalancer(fixed)
    fixed[:] = 5.0
    np.testing.assert_array_equal(balancer.weights([1.0, 1.0]), [1.0, 2.0])


def test_num_objectives_from_weights():
    """k is fixed by the number of weights."""
    assert WeightedSumBalancer([1, 1, 1]).num_objectives == 3
