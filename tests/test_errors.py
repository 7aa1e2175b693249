"""Bad input: a clear TypeError or ValueError before any work, naming the argument, what was
wrong and what is allowed."""

from __future__ import annotations

import numpy as np
import pytest
from refusals import bad_input_test

from moopt import (
    CoarseToFineBalancer,
    EqQPBalancer,
    MGDABalancer,
    WeightedSumBalancer,
    eq_qp_weights,
    mgda_weights,
)

NAN = float("nan")
INF = float("inf")
GOOD_GRAM = [[2.0, 0.5], [0.5, 1.0]]


def _update_before_weights():
    CoarseToFineBalancer(2).update([1.0, 1.0])


def _nan_in_update():
    balancer = CoarseToFineBalancer(2)
    balancer.weights([1.0, 1.0])
    balancer.update([1.0, NAN])


def _new_loss_below_floor():
    balancer = CoarseToFineBalancer(2, loss_floor=0.0)
    balancer.weights([1.0, 1.0])
    balancer.update([1.0, 0.0])


def _state_from(source, target):
    def load():
        target.load_state_dict(source.state_dict())

    return load


CASES = {
    # shapes and k
    "losses 2-D": (
        lambda: EqQPBalancer().weights([[1.0, 2.0]], GOOD_GRAM),
        ValueError,
        r"losses must be one-dimensional .* got shape \(1, 2\)",
    ),
    "losses empty (k = 0)": (
        lambda: WeightedSumBalancer([1.0]).weights([]),
        ValueError,
        r"losses must hold at least one objective, got an empty array",
    ),
    "losses wrong k": (
        lambda: CoarseToFineBalancer(3).weights([1.0, 2.0]),
        ValueError,
        r"losses must have 3 entries \(one per objective\), got 2",
    ),
    "gram wrong shape": (
        lambda: MGDABalancer().weights([1.0, 2.0], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        ValueError,
        r"gram must have shape \(2, 2\) for 2 objectives, got shape \(2, 3\)",
    ),
    "gram k differs from losses": (
        lambda: EqQPBalancer().weights([1.0, 2.0, 3.0], GOOD_GRAM),
        ValueError,
        r"gram must have shape \(3, 3\) for 3 objectives, got shape \(2, 2\)",
    ),
    "solver gram not square": (
        lambda: eq_qp_weights([1.0, 2.0]),
        ValueError,
        r"gram must be a square k×k matrix, got shape \(2,\)",
    ),
    "solver gram empty (k = 0)": (
        lambda: mgda_weights(np.zeros((0, 0))),
        ValueError,
        r"gram must be at least 1×1 \(one objective\)",
    ),
    "num_objectives 0": (
        lambda: CoarseToFineBalancer(0),
        ValueError,
        r"num_objectives must be ≥ 1, got 0",
    ),
    "num_objectives negative": (
        lambda: CoarseToFineBalancer(-2),
        ValueError,
        r"num_objectives must be ≥ 1, got -2",
    ),
    "num_objectives not an int": (
        lambda: CoarseToFineBalancer(2.0),
        TypeError,
        r"num_objectives must be an integer, got float",
    ),
    # non-finite values
    "NaN loss": (
        lambda: CoarseToFineBalancer(2).weights([1.0, NAN]),
        ValueError,
        r"losses must be finite, got NaN or ±inf at entries \[1\]",
    ),
    "infinite loss": (
        lambda: WeightedSumBalancer([1.0, 1.0]).weights([INF, 1.0]),
        ValueError,
        r"losses must be finite, got NaN or ±inf at entries \[0\]",
    ),
    "NaN in gram": (
        lambda: MGDABalancer().weights([1.0, 1.0], [[1.0, NAN], [NAN, 1.0]]),
        ValueError,
        r"gram must be finite, got NaN or ±inf at index \(0, 1\), \(1, 0\)",
    ),
    "infinite gram in solver": (
        lambda: eq_qp_weights([[INF, 0.0], [0.0, 1.0]]),
        ValueError,
        r"gram must be finite, got NaN or ±inf at index \(0, 0\)",
    ),
    # Gram structure
    "gram None where required": (
        lambda: EqQPBalancer().weights([1.0, 2.0]),
        ValueError,
        r"gram is required: this balancer needs the 2×2 Gram matrix .* got None",
    ),
    "gram not symmetric": (
        lambda: MGDABalancer().weights([1.0, 1.0], [[1.0, 0.5], [0.4, 1.0]]),
        ValueError,
        r"gram must be symmetric: max \|Q_ij - Q_ji\| = 0.1 exceeds 1e-05 × max diagonal entry",
    ),
    "gram not PSD": (
        lambda: eq_qp_weights([[1.0, 2.0], [2.0, 1.0]]),
        ValueError,
        r"gram must be positive semi-definite: its smallest eigenvalue -1 is below -1e-05 ×",
    ),
    "gram negative diagonal": (
        lambda: mgda_weights([[-1.0, 0.0], [0.0, 1.0]]),
        ValueError,
        r"gram is not a Gram matrix: its diagonal .* must be ≥ 0",
    ),
    # losses where logs are taken
    "EqQP loss at the floor": (
        lambda: EqQPBalancer().weights([1.0, 0.0], GOOD_GRAM),
        ValueError,
        r"losses\[1\] = 0 must be greater than loss_floor = 0: .* log\(loss - loss_floor\)",
    ),
    "coarse-to-fine loss below the floor": (
        lambda: CoarseToFineBalancer(2).weights([-1.5, 1.0]),
        ValueError,
        r"losses\[0\] = -1.5 must be greater than loss_floor = -1",
    ),
    "MGDA loss-normalised loss below the floor": (
        lambda: MGDABalancer("loss").weights([-0.1, 1.0], GOOD_GRAM),
        ValueError,
        r"losses\[0\] = -0.1 must be greater than loss_floor = 0",
    ),
    "new loss at the floor": (
        _new_loss_below_floor,
        ValueError,
        r"new_losses\[1\] = 0 must be greater than loss_floor = 0",
    ),
    # fixed weights
    "negative fixed weight": (
        lambda: WeightedSumBalancer([1.0, -0.5]),
        ValueError,
        r"weights must be ≥ 0, got \[1.0, -0.5\]",
    ),
    "all-zero fixed weights": (
        lambda: WeightedSumBalancer([0.0, 0.0]),
        ValueError,
        r"weights must not all be zero",
    ),
    "empty fixed weights": (
        lambda: WeightedSumBalancer([]),
        ValueError,
        r"weights must hold at least one objective",
    ),
    # hyper-parameters
    "negative logit_lr": (
        lambda: CoarseToFineBalancer(2, logit_lr=-0.1),
        ValueError,
        r"logit_lr must be a finite number ≥ 0, got -0.1",
    ),
    "negative gamma": (
        lambda: CoarseToFineBalancer(2, gamma=-1e-3),
        ValueError,
        r"gamma must be a finite number ≥ 0, got -0.001",
    ),
    "NaN gamma": (
        lambda: CoarseToFineBalancer(2, gamma=NAN),
        ValueError,
        r"gamma must be a finite number ≥ 0, got nan",
    ),
    "unknown logit_optimizer": (
        lambda: CoarseToFineBalancer(2, logit_optimizer="rmsprop"),
        ValueError,
        r"logit_optimizer must be one of \('adam', 'sgd'\), got 'rmsprop'",
    ),
    "unknown normalization": (
        lambda: MGDABalancer("max"),
        ValueError,
        r"normalization must be one of \('none', 'loss', 'l2'\), got 'max'",
    ),
    "loss_floor of the wrong length": (
        lambda: CoarseToFineBalancer(3, loss_floor=[0.0, 0.0]),
        ValueError,
        r"loss_floor must be a scalar or have 3 entries \(one per objective\)",
    ),
    "log_losses not a bool": (
        lambda: EqQPBalancer(log_losses="yes"),
        TypeError,
        r"log_losses must be True or False, got 'yes'",
    ),
    # update
    "update before weights": (
        _update_before_weights,
        ValueError,
        r"update\(\) called before weights\(\)",
    ),
    "NaN in update": (
        _nan_in_update,
        ValueError,
        r"new_losses must be finite, got NaN or ±inf at entries \[1\]",
    ),
    # state dicts
    "state from another balancer": (
        _state_from(MGDABalancer(), EqQPBalancer()),
        ValueError,
        r"state is from balancer 'MGDABalancer', cannot load it into EqQPBalancer",
    ),
    "state for another k": (
        _state_from(CoarseToFineBalancer(3), CoarseToFineBalancer(2)),
        ValueError,
        r"state is for 3 objectives, this CoarseToFineBalancer has 2",
    ),
    "state for another k (weighted sum)": (
        _state_from(WeightedSumBalancer([1, 2, 3]), WeightedSumBalancer([1, 2])),
        ValueError,
        r"state is for 3 objectives, this WeightedSumBalancer has 2",
    ),
    "state missing entries": (
        lambda: CoarseToFineBalancer(2).load_state_dict(
            {"balancer": "CoarseToFineBalancer", "num_objectives": 2}
        ),
        ValueError,
        r"state for CoarseToFineBalancer misses the entries \['adam_exp_avg'",
    ),
    "state not a mapping": (
        lambda: EqQPBalancer().load_state_dict([("balancer", "EqQPBalancer")]),
        TypeError,
        r"state must be a mapping from state_dict\(\), got list",
    ),
    # wrong types
    "losses None": (
        lambda: WeightedSumBalancer([1.0]).weights(None),
        TypeError,
        r"losses must be an array-like of real numbers, got None",
    ),
    "losses a string": (
        lambda: CoarseToFineBalancer(2).weights("1 2"),
        TypeError,
        r"losses must be an array-like of real numbers, got str",
    ),
    "complex losses": (
        lambda: CoarseToFineBalancer(2).weights(np.array([1 + 1j, 2.0])),
        TypeError,
        r"losses must hold real numbers \(float or int\), got dtype complex128",
    ),
    "ragged gram": (
        lambda: eq_qp_weights([[1.0, 0.0], [0.0]]),
        TypeError,
        r"gram must be an array-like of real numbers; it could not be converted",
    ),
    "gram of strings": (
        lambda: mgda_weights([["a", "b"], ["c", "d"]]),
        TypeError,
        r"gram must hold real numbers \(float or int\), got dtype <U1",
    ),
}


test_bad_input_gets_a_clear_error = bad_input_test(CASES)


def test_errors_come_before_any_state_change():
    """A rejected call leaves a stateful balancer exactly as it was."""
    balancer = CoarseToFineBalancer(2)
    balancer.weights([1.0, 2.0])
    before = balancer.state_dict()
    with pytest.raises(ValueError):
        balancer.update([1.0, NAN])
    with pytest.raises(ValueError):
        balancer.weights([1.0, -5.0])
    after = balancer.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(
            np.asarray(after[key], dtype=object), np.asarray(before[key], dtype=object)
        )
