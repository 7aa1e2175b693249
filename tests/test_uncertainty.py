"""UncertaintyBalancer: Kendall, Gal & Cipolla (CVPR 2018) with closed-form log-variances.

TorchJD does not implement uncertainty weighting, so these tests check that the weights are
exp(−s) at the minimiser s of the Kendall objective (analytically, with scipy, and against
gradient descent on s in torch), hand-computed values of the loss average, the invariances
that hold, and the state round trip.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from properties import assert_valid_weights
from refusals import bad_input_test
from strategies import permutation_seeds, positive_losses, random_permutation

from moopt.balancers.uncertainty import UncertaintyBalancer


def _loss_sequences(min_k: int = 1, max_k: int = 6, min_steps: int = 1, max_steps: int = 8):
    """A strategy for a list of positive loss vectors of one length k."""
    return st.integers(min_k, max_k).flatmap(
        lambda k: st.lists(positive_losses(k), min_size=min_steps, max_size=max_steps)
    )


def _run(balancer, sequence):
    return [balancer.weights(losses) for losses in sequence]


def _kendall(s, losses):
    """The Kendall objective Σ_i exp(−s_i) L_i + s_i."""
    return float(np.sum(np.exp(-s) * losses + s))


@given(_loss_sequences(), st.sampled_from([0.0, 0.5, 0.9, 0.99]))
def test_weights_are_one_over_the_loss_average(sequence, decay):
    """w = 1/m with m the exponential moving average of the losses: m = L at the first call,
    then m ← β m + (1 − β) L, the current losses included."""
    balancer = UncertaintyBalancer(ema_decay=decay)
    average = None
    for losses in sequence:
        losses = np.asarray(losses)
        average = losses if average is None else decay * average + (1 - decay) * losses
        weights = balancer.weights(losses)
        np.testing.assert_allclose(weights, 1.0 / average, rtol=1e-12)
        np.testing.assert_allclose(balancer.loss_average, average, rtol=1e-12)


@given(_loss_sequences(max_steps=4), st.sampled_from([0.0, 0.9]))
def test_log_variances_minimise_the_kendall_objective(sequence, decay):
    """s = log m is the stationary point of the convex Σ_i exp(−s_i) m_i + s_i (its gradient
    1 − exp(−s_i) m_i vanishes), and the weights are exp(−s)."""
    balancer = UncertaintyBalancer(ema_decay=decay)
    weights = _run(balancer, sequence)[-1]
    s = balancer.log_variances
    m = balancer.loss_average
    np.testing.assert_allclose(1.0 - np.exp(-s) * m, 0.0, atol=1e-12)
    np.testing.assert_allclose(weights, np.exp(-s), rtol=1e-12)
    for step in (-1e-3, 1e-3):
        assert _kendall(s + step, m) > _kendall(s, m)


@given(positive_losses(3))
def test_closed_form_agrees_with_a_numerical_minimiser(losses):
    """scipy's bounded scalar minimiser of exp(−s)·L + s finds s = log L, so w = 1/L
    (ema_decay=0). Tolerance 1e-6 in s: the minimiser's xatol is set to 1e-10 but the
    objective is flat (curvature L·exp(−s) = 1), so s is only found to about sqrt(eps)."""
    optimize = pytest.importorskip("scipy.optimize")
    weights = UncertaintyBalancer(ema_decay=0.0).weights(losses)
    for i, loss in enumerate(losses):
        result = optimize.minimize_scalar(
            lambda s, loss=loss: np.exp(-s) * loss + s,
            bounds=(np.log(loss) - 5, np.log(loss) + 5),
            method="bounded",
            options={"xatol": 1e-10},
        )
        np.testing.assert_allclose(result.x, np.log(loss), atol=1e-6)
        np.testing.assert_allclose(weights[i], np.exp(-result.x), rtol=1e-6)


def test_closed_form_is_where_learned_log_variances_converge():
    """Kendall et al. learn s by gradient descent on Σ exp(−s_i) L_i + s_i; with the losses held
    fixed, torch's Adam on s converges to the closed form, and the network gradient of the
    Kendall loss is then Σ_i w_i ∇L_i with our weights. Tolerance 1e-10: on this convex
    one-dimensional problem 4000 Adam steps reach s = log L to about 1e-15, so 1e-10 leaves
    room for other torch builds without hiding a wrong closed form."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    losses = np.array([0.02, 1.5, 40.0])
    jacobian = rng.standard_normal((3, 7)) * np.array([[1e-3], [1.0], [1e3]])
    s = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([s], lr=0.05)
    target = torch.from_numpy(losses)
    for _ in range(4000):
        adam.zero_grad()
        (torch.exp(-s) * target + s).sum().backward()
        adam.step()
    learned = s.detach().numpy()
    weights = UncertaintyBalancer(ema_decay=0.0).weights(losses)
    np.testing.assert_allclose(np.exp(-learned), weights, rtol=1e-10)
    # d/dθ Σ exp(−s_i) L_i(θ) + s_i = Σ exp(−s_i) ∇L_i: the network sees the weighted sum
    direction = weights @ jacobian
    np.testing.assert_allclose(
        np.exp(-learned) @ jacobian, direction, rtol=1e-10, atol=1e-10 * np.linalg.norm(direction)
    )


def test_hand_computed_values():
    """β = 0.5: m(1) = (2, 0.1), m(2) = (1.5, 0.1), m(3) = (1.0, 0.3); w = 1/m."""
    balancer = UncertaintyBalancer(ema_decay=0.5)
    np.testing.assert_allclose(balancer.weights([2.0, 0.1]), [0.5, 10.0], rtol=1e-15)
    np.testing.assert_allclose(balancer.weights([1.0, 0.1]), [1 / 1.5, 10.0], rtol=1e-15)
    np.testing.assert_allclose(balancer.weights([0.5, 0.5]), [1.0, 1 / 0.3], rtol=1e-15)
    np.testing.assert_allclose(balancer.log_variances, np.log([1.0, 0.3]), rtol=1e-15)


def test_default_decay_and_log_variances_before_the_first_call():
    """The default smoothing is β = 0.9; nothing is known before the first call."""
    balancer = UncertaintyBalancer()
    assert balancer.ema_decay == 0.9
    assert balancer.loss_average is None and balancer.log_variances is None


@given(_loss_sequences(min_steps=2), st.sampled_from([0.0, 0.9]), st.data())
def test_lambda_free_rescaling_an_objective_divides_its_weight(sequence, decay, data):
    """Rescaling objective i by c_i (λ·D) in every call divides w_i by c_i, so w_i·∇(c_i L_i)
    and the update are unchanged: the method is λ-free."""
    k = len(sequence[0])
    factors = 10.0 ** np.array(data.draw(st.lists(st.floats(-3, 3), min_size=k, max_size=k)))
    plain = _run(UncertaintyBalancer(ema_decay=decay), sequence)
    scaled = _run(
        UncertaintyBalancer(ema_decay=decay), [np.asarray(losses) * factors for losses in sequence]
    )
    for got, want in zip(scaled, plain, strict=True):
        np.testing.assert_allclose(got * factors, want, rtol=1e-12)


@given(_loss_sequences(min_k=2), permutation_seeds)
def test_permutation_equivariant(sequence, seed):
    """Relabelling the objectives in every call relabels the weights."""
    perm = random_permutation(len(sequence[0]), seed)
    plain = _run(UncertaintyBalancer(), sequence)
    permuted = _run(UncertaintyBalancer(), [np.asarray(losses)[perm] for losses in sequence])
    for got, want in zip(permuted, plain, strict=True):
        np.testing.assert_allclose(got, want[perm], rtol=1e-12)


@given(_loss_sequences())
def test_weights_are_positive_and_finite(sequence):
    """The weights are positive finite float64 (not normalised)."""
    k = len(sequence[0])
    for weights in _run(UncertaintyBalancer(), sequence):
        assert_valid_weights(weights, k, sums_to_one=False)
        assert np.all(weights > 0)


def test_gram_is_ignored():
    """Uncertainty weighting needs only the losses: passing the Gram along changes nothing."""
    g = np.random.default_rng(0).standard_normal((2, 4))
    a, b = UncertaintyBalancer(), UncertaintyBalancer()
    for losses in ([1.0, 2.0], [0.5, 1.9]):
        np.testing.assert_array_equal(a.weights(losses, g @ g.T), b.weights(losses))


def test_num_objectives_fixed_by_the_first_call_or_given():
    """k is None until the first call fixes it, unless given."""
    balancer = UncertaintyBalancer()
    assert balancer.num_objectives is None
    balancer.weights([1.0, 2.0])
    assert balancer.num_objectives == 2
    with pytest.raises(ValueError, match=r"losses must have 2 entries"):
        balancer.weights([1.0, 2.0, 3.0])
    assert UncertaintyBalancer(num_objectives=4).num_objectives == 4


@pytest.mark.parametrize("split", [0, 1, 3])
def test_state_round_trip_into_a_fresh_balancer(split):
    """A fresh UncertaintyBalancer (no k yet) loading the state after `split` calls continues
    exactly."""
    sequence = [np.random.default_rng(s).uniform(0.1, 5.0, 3) for s in range(6)]
    original = UncertaintyBalancer(ema_decay=0.7)
    _run(original, sequence[:split])
    restored = UncertaintyBalancer()
    restored.load_state_dict(original.state_dict())
    assert restored.ema_decay == 0.7
    for got, want in zip(
        _run(restored, sequence[split:]), _run(original, sequence[split:]), strict=True
    ):
        np.testing.assert_array_equal(got, want)


def test_update_is_not_needed():
    """requires_update is false and update() changes nothing."""
    assert not UncertaintyBalancer.requires_update and not UncertaintyBalancer.requires_gram
    a, b = UncertaintyBalancer(), UncertaintyBalancer()
    a.weights([1.0, 2.0])
    a.update([0.1, 0.1])
    b.weights([1.0, 2.0])
    np.testing.assert_array_equal(a.weights([1.0, 1.0]), b.weights([1.0, 1.0]))


def test_repr():
    """repr() shows the settings."""
    assert repr(UncertaintyBalancer()) == "UncertaintyBalancer(ema_decay=0.9, num_objectives=None)"


NAN = float("nan")

CASES = {
    "decay one": (lambda: UncertaintyBalancer(1.0), ValueError, r"ema_decay must be in \[0, 1\)"),
    "decay negative": (
        lambda: UncertaintyBalancer(-0.1),
        ValueError,
        r"ema_decay must be a finite number ≥ 0",
    ),
    "decay str": (lambda: UncertaintyBalancer("0.9"), TypeError, r"ema_decay must be a real"),
    "num_objectives zero": (
        lambda: UncertaintyBalancer(num_objectives=0),
        ValueError,
        r"num_objectives must be ≥ 1",
    ),
    "zero loss": (
        lambda: UncertaintyBalancer().weights([0.0, 1.0]),
        ValueError,
        r"losses\[0\] = 0 must be > 0: the closed-form log-variance is s_i = log EMA\(L_i\)",
    ),
    "negative loss": (
        lambda: UncertaintyBalancer().weights([1.0, -1.0]),
        ValueError,
        r"losses\[1\] = -1 must be > 0",
    ),
    "inf loss": (
        lambda: UncertaintyBalancer().weights([1.0, float("inf")]),
        ValueError,
        r"losses must be finite",
    ),
    "state average not positive": (
        lambda: UncertaintyBalancer().load_state_dict(
            {**UncertaintyBalancer(num_objectives=2).state_dict(), "loss_average": [1.0, 0.0]}
        ),
        ValueError,
        r"state\['loss_average'\]\[1\] = 0 must be > 0",
    ),
    "state average without k": (
        lambda: UncertaintyBalancer().load_state_dict(
            {**UncertaintyBalancer().state_dict(), "loss_average": [1.0, 2.0]}
        ),
        ValueError,
        r"state\['loss_average'\] is set but state\['num_objectives'\] is None",
    ),
    "state misses entries": (
        lambda: UncertaintyBalancer().load_state_dict(
            {"balancer": "UncertaintyBalancer", "num_objectives": None}
        ),
        ValueError,
        r"state for UncertaintyBalancer misses the entries \['ema_decay', 'loss_average'\]",
    ),
}


test_bad_input_gets_a_clear_error = bad_input_test(CASES)


def test_errors_come_before_any_state_change():
    """A rejected call leaves the loss average as it was."""
    balancer = UncertaintyBalancer()
    balancer.weights([1.0, 2.0])
    before = balancer.loss_average.copy()
    with pytest.raises(ValueError):
        balancer.weights([1.0, 0.0])
    np.testing.assert_array_equal(balancer.loss_average, before)
