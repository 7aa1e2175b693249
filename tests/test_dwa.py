"""DWABalancer: Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

TorchJD does not implement DWA, so these tests check the defining equation against a
re-derivation written out in the test, hand-computed values, the invariances that hold, and
the state round trip.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from properties import assert_valid_weights
from refusals import bad_input_test
from strategies import gradient_cases, permutation_seeds, positive_losses, random_permutation

from moopt.balancers.dwa import DWABalancer


def _loss_sequences(min_k: int = 1, max_k: int = 6, min_steps: int = 1, max_steps: int = 8):
    """A strategy for a list of positive loss vectors of one length k."""
    return st.integers(min_k, max_k).flatmap(
        lambda k: st.lists(positive_losses(k), min_size=min_steps, max_size=max_steps)
    )


def _reference(sequence, temperature):
    """The paper's rule written out: λ_i(t) = 1 for t = 1, 2, then
    λ_i(t) = K exp(w_i(t−1)/T) / Σ_j exp(w_j(t−1)/T) with w_i(t−1) = L_i(t−1)/L_i(t−2)."""
    out = []
    for t, losses in enumerate(sequence):
        k = len(losses)
        if t < 2:
            out.append(np.ones(k))
            continue
        ratio = np.asarray(sequence[t - 1]) / np.asarray(sequence[t - 2])
        exp = np.exp(ratio / temperature - np.max(ratio / temperature))
        out.append(k * exp / exp.sum())
    return out


def _run(balancer, sequence):
    return [balancer.weights(losses) for losses in sequence]


@given(_loss_sequences(), st.sampled_from([0.5, 1.0, 2.0, 10.0]))
def test_matches_the_defining_equation(sequence, temperature):
    """Every call returns the paper's weights: ones for the first two calls, then k times the
    softmax of the last loss ratios over T."""
    actual = _run(DWABalancer(temperature), sequence)
    for got, want in zip(actual, _reference(sequence, temperature), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)


@given(_loss_sequences(min_steps=3))
def test_weights_are_positive_and_sum_to_k(sequence):
    """The weights are positive float64 and sum to k (equal weights are 1 each)."""
    k = len(sequence[0])
    for weights in _run(DWABalancer(), sequence):
        assert_valid_weights(weights, k, sums_to_one=False)
        assert np.all(weights >= 0)
        np.testing.assert_allclose(weights.sum(), k, rtol=1e-12)


def test_hand_computed_values():
    """L(1) = (1, 2), L(2) = (0.5, 3): r = (0.5, 1.5), T = 2, so
    w = 2·(e^0.25, e^0.75)/(e^0.25 + e^0.75) = (2/(1 + e^0.5), 2e^0.5/(1 + e^0.5))."""
    balancer = DWABalancer()
    np.testing.assert_array_equal(balancer.weights([1.0, 2.0]), [1.0, 1.0])
    np.testing.assert_array_equal(balancer.weights([0.5, 3.0]), [1.0, 1.0])
    e = np.exp(0.5)
    np.testing.assert_allclose(
        balancer.weights([7.0, 7.0]), [2 / (1 + e), 2 * e / (1 + e)], rtol=1e-15
    )
    # the next call uses r = (7/0.5, 7/3) = (14, 7/3)
    expected = 2 * np.exp(np.array([14.0, 7 / 3]) / 2) / np.exp(np.array([14.0, 7 / 3]) / 2).sum()
    np.testing.assert_allclose(balancer.weights([1.0, 1.0]), expected, rtol=1e-14)


@given(_loss_sequences(min_steps=3), st.data())
def test_current_losses_do_not_enter_their_own_weights(sequence, data):
    """The weights of call t depend on the losses of calls t−1 and t−2 only."""
    other = data.draw(positive_losses(len(sequence[0])))
    a, b = DWABalancer(), DWABalancer()
    _run(a, sequence[:-1])
    _run(b, sequence[:-1])
    np.testing.assert_array_equal(a.weights(sequence[-1]), b.weights(other))


@given(_loss_sequences(min_k=2, min_steps=3), st.data())
def test_invariant_to_rescaling_an_objective(sequence, data):
    """The ratios L_i(t−1)/L_i(t−2) do not change when objective i is rescaled by c_i > 0 (λ·D),
    so neither do the weights (and the rescaled gradient enters the update with its factor)."""
    k = len(sequence[0])
    factors = 10.0 ** np.array(data.draw(st.lists(st.floats(-3, 3), min_size=k, max_size=k)))
    plain = _run(DWABalancer(), sequence)
    scaled = _run(DWABalancer(), [np.asarray(losses) * factors for losses in sequence])
    for got, want in zip(scaled, plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@given(_loss_sequences(min_k=2, min_steps=3), permutation_seeds)
def test_permutation_equivariant(sequence, seed):
    """Relabelling the objectives in every call relabels the weights."""
    perm = random_permutation(len(sequence[0]), seed)
    plain = _run(DWABalancer(), sequence)
    permuted = _run(DWABalancer(), [np.asarray(losses)[perm] for losses in sequence])
    for got, want in zip(permuted, plain, strict=True):
        np.testing.assert_allclose(got, want[perm], rtol=1e-12)


@given(gradient_cases(min_k=2, max_k=5), st.data())
def test_gram_is_ignored(case, data):
    """DWA needs only the losses: passing the Gram along changes nothing."""
    sequence = data.draw(st.lists(positive_losses(case.k), min_size=3, max_size=5))
    a, b = DWABalancer(), DWABalancer()
    with_gram = [a.weights(losses, case.gram) for losses in sequence]
    without = [b.weights(losses) for losses in sequence]
    for got, want in zip(with_gram, without, strict=True):
        np.testing.assert_array_equal(got, want)


def test_temperature_limits():
    """T → ∞ gives equal weights 1; T → 0 gives all k on the largest ratio."""
    sequence = [[1.0, 1.0, 1.0], [0.5, 0.9, 0.7], [1.0, 1.0, 1.0]]
    hot = _run(DWABalancer(1e9), sequence)[-1]
    np.testing.assert_allclose(hot, np.ones(3), rtol=1e-8)
    cold = _run(DWABalancer(1e-4), sequence)[-1]
    np.testing.assert_allclose(cold, [0.0, 3.0, 0.0], atol=1e-12)


def test_overflowing_ratio_takes_the_limit():
    """A ratio beyond the float range (1e200/1e-200) gets all the weight, without a warning."""
    balancer = DWABalancer()
    _run(balancer, [[1e-200, 1.0], [1e200, 1.0]])
    np.testing.assert_array_equal(balancer.weights([1.0, 1.0]), [2.0, 0.0])


def test_history_keeps_the_last_two_calls():
    """The history holds the losses of the last two calls, oldest first, as copies."""
    balancer = DWABalancer()
    losses = np.array([3.0, 4.0])
    balancer.weights([1.0, 2.0])
    balancer.weights(losses)
    losses[:] = 9.0
    balancer.weights([5.0, 6.0])
    assert len(balancer.history) == 2
    np.testing.assert_array_equal(balancer.history[0], [3.0, 4.0])
    np.testing.assert_array_equal(balancer.history[1], [5.0, 6.0])


def test_num_objectives_fixed_by_the_first_call_or_given():
    """k is None until the first call fixes it, unless given; a call of another length fails."""
    balancer = DWABalancer()
    assert balancer.num_objectives is None
    balancer.weights([1.0, 2.0, 3.0])
    assert balancer.num_objectives == 3
    with pytest.raises(ValueError, match=r"losses must have 3 entries"):
        balancer.weights([1.0, 2.0])
    assert DWABalancer(num_objectives=2).num_objectives == 2
    with pytest.raises(ValueError, match=r"losses must have 2 entries"):
        DWABalancer(num_objectives=2).weights([1.0, 2.0, 3.0])


@pytest.mark.parametrize("split", [0, 1, 2, 4])
def test_state_round_trip_into_a_fresh_balancer(split):
    """A fresh DWABalancer (no k yet) loading the state after `split` calls continues exactly."""
    sequence = [np.random.default_rng(s).uniform(0.1, 5.0, 3) for s in range(7)]
    original = DWABalancer(temperature=0.7)
    _run(original, sequence[:split])
    restored = DWABalancer()
    restored.load_state_dict(original.state_dict())
    assert restored.temperature == 0.7
    assert restored.num_objectives == original.num_objectives
    for got, want in zip(
        _run(restored, sequence[split:]), _run(original, sequence[split:]), strict=True
    ):
        np.testing.assert_array_equal(got, want)


def test_update_is_not_needed():
    """requires_update is false and update() only checks its input: the next weights are the
    same with or without it."""
    assert not DWABalancer.requires_update and not DWABalancer.requires_gram
    a, b = DWABalancer(), DWABalancer()
    for losses in ([1.0, 2.0], [0.5, 1.9], [0.4, 1.0]):
        a.weights(losses)
        a.update([0.1, 0.1])
        b.weights(losses)
    np.testing.assert_array_equal(a.weights([1.0, 1.0]), b.weights([1.0, 1.0]))


def test_repr():
    """repr() shows the settings."""
    assert repr(DWABalancer()) == "DWABalancer(temperature=2.0, num_objectives=None)"


NAN = float("nan")

CASES = {
    "temperature zero": (lambda: DWABalancer(0.0), ValueError, r"temperature must be .* > 0"),
    "temperature negative": (lambda: DWABalancer(-1), ValueError, r"temperature must be .* > 0"),
    "temperature nan": (lambda: DWABalancer(NAN), ValueError, r"temperature must be .* > 0"),
    "temperature str": (lambda: DWABalancer("2"), TypeError, r"temperature must be a real"),
    "num_objectives zero": (
        lambda: DWABalancer(num_objectives=0),
        ValueError,
        r"num_objectives must be ≥ 1",
    ),
    "num_objectives float": (
        lambda: DWABalancer(num_objectives=2.0),
        TypeError,
        r"num_objectives must be an integer",
    ),
    "zero loss": (
        lambda: DWABalancer().weights([1.0, 0.0]),
        ValueError,
        r"losses\[1\] = 0 must be > 0: DWA divides each loss by its previous value",
    ),
    "nan loss": (
        lambda: DWABalancer().weights([1.0, NAN]),
        ValueError,
        r"losses must be finite",
    ),
    "state from another class": (
        lambda: DWABalancer().load_state_dict({"balancer": "RLWBalancer"}),
        ValueError,
        r"state is from balancer 'RLWBalancer', cannot load it into DWABalancer",
    ),
    "state history too long": (
        lambda: DWABalancer().load_state_dict(
            {**DWABalancer(num_objectives=1).state_dict(), "history": [[1.0]] * 3}
        ),
        ValueError,
        r"state\['history'\] must hold at most 2 loss vectors",
    ),
    "state history wrong length": (
        lambda: DWABalancer().load_state_dict(
            {**DWABalancer(num_objectives=2).state_dict(), "history": [[1.0]]}
        ),
        ValueError,
        r"state\['history'\]\[0\] must have 2 entries",
    ),
}


test_bad_input_gets_a_clear_error = bad_input_test(CASES)


def test_errors_come_before_any_state_change():
    """A rejected call leaves the history and k as they were."""
    balancer = DWABalancer()
    balancer.weights([1.0, 2.0])
    before = balancer.state_dict()
    with pytest.raises(ValueError):
        balancer.weights([1.0, -2.0])
    after = balancer.state_dict()
    assert after["num_objectives"] == before["num_objectives"]
    assert len(after["history"]) == len(before["history"]) == 1
    np.testing.assert_array_equal(after["history"][0], before["history"][0])
