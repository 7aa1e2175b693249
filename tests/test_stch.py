"""STCHBalancer: smooth Tchebycheff scalarization (Lin et al., ICML 2024).

TorchJD does not implement STCH, so these tests check that the weights are the gradient of the
smooth Tchebycheff value S_μ(L) = μ log Σ exp(p_i (L_i − z_i)/μ) (by finite differences and by
torch autograd through a model), its limits, hand-computed values, the
invariances that hold, the running-minimum ideal point and the state round trip.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from properties import assert_on_simplex, assert_valid_weights
from refusals import bad_input_test
from strategies import permutation_seeds, positive_losses, random_permutation

from moopt.balancers.stch import STCHBalancer


def _value(losses, preference, mu, ideal):
    """S_μ(L) = μ log Σ_i exp(p_i (L_i − z_i) / μ), computed stably."""
    scores = preference * (np.asarray(losses) - ideal) / mu
    top = scores.max()
    return mu * (top + np.log(np.exp(scores - top).sum()))


def _cases(min_k: int = 1, max_k: int = 6):
    """(losses, preference) pairs with positive losses and non-negative preferences."""
    return st.integers(min_k, max_k).flatmap(
        lambda k: st.tuples(
            positive_losses(k, low=1e-2, high=1e2),
            st.lists(st.floats(0.0, 3.0), min_size=k, max_size=k).filter(lambda p: max(p) > 0),
        )
    )


@given(_cases(), st.sampled_from([0.1, 1.0, 10.0]), st.sampled_from([0.0, 0.5]))
def test_weights_are_the_gradient_of_the_smooth_tchebycheff_value(case, mu, ideal):
    """w_i = ∂S_μ/∂L_i (central differences of S_μ itself, step 1e-6·max(1, |L_i|); tolerance
    1e-6 relative to the largest weight covers the O(h²) truncation and the rounding of S_μ)."""
    losses, preference = case
    preference = np.asarray(preference)
    weights = STCHBalancer(preference, mu=mu, ideal_point=ideal).weights(losses)
    gradient = np.empty(len(losses))
    for i in range(len(losses)):
        h = 1e-6 * max(1.0, abs(losses[i]))
        up, down = losses.copy(), losses.copy()
        up[i] += h
        down[i] -= h
        gradient[i] = (_value(up, preference, mu, ideal) - _value(down, preference, mu, ideal)) / (
            2 * h
        )
    np.testing.assert_allclose(weights, gradient, rtol=0, atol=1e-6 * max(1.0, weights.max()))


@pytest.mark.parametrize("scales", [[1.0, 1.0, 1.0], [1e-3, 1.0, 1e3]], ids=str)
@pytest.mark.parametrize("ideal_point", [0.0, "running_min"])
def test_direction_is_the_autograd_gradient_of_the_stch_loss(scales, ideal_point):
    """For losses L_i(θ) of a small model, torch autograd of μ·logsumexp(p ⊙ (L(θ) − z)/μ)
    (z held fixed, as in the method) equals Σ_i w_i ∇L_i with our weights and the Jacobian of
    L at θ, for well and badly scaled objectives. Tolerance 1e-10: one float64 logsumexp and
    its backward pass against our softmax."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    targets = torch.from_numpy(rng.standard_normal((3, 6)))
    scale = torch.tensor(scales, dtype=torch.float64)
    preference = np.array([1.0, 0.5, 2.0])
    mu = 0.3
    balancer = STCHBalancer(preference, mu=mu, ideal_point=ideal_point)
    for step in range(3):
        theta = torch.from_numpy(rng.standard_normal(6) * (1 + step)).requires_grad_(True)
        losses = scale * ((theta - targets) ** 2).sum(dim=1) / 6

        jacobian = np.stack(
            [torch.autograd.grad(losses[i], theta, retain_graph=True)[0].numpy() for i in range(3)]
        )
        values = losses.detach().numpy()
        if ideal_point == 0.0:
            ideal = np.zeros(3)
        elif balancer.running_min is None:
            ideal = values.copy()
        else:
            ideal = np.minimum(balancer.running_min, values)
        weights = balancer.weights(values, jacobian @ jacobian.T)
        stch = mu * torch.logsumexp(
            torch.from_numpy(preference) * (losses - torch.from_numpy(ideal)) / mu, dim=0
        )
        (expected,) = torch.autograd.grad(stch, theta)
        expected = expected.numpy()
        np.testing.assert_allclose(
            weights @ jacobian, expected, rtol=1e-10, atol=1e-10 * np.linalg.norm(expected)
        )


def test_hand_computed_values():
    """L = (1, 2), μ = 0.5: scores (2, 4), w = (1, e²)/(1 + e²); with p = (3, 1) the scores are
    (6, 4) and w = (3e², 1)/(1 + e²); a fixed z = (0.5, 1.5) gives scores (1, 1), w = (½, ½)."""
    e2 = np.exp(2.0)
    np.testing.assert_allclose(
        STCHBalancer(mu=0.5).weights([1.0, 2.0]), [1 / (1 + e2), e2 / (1 + e2)], rtol=1e-15
    )
    np.testing.assert_allclose(
        STCHBalancer([3.0, 1.0], mu=0.5).weights([1.0, 2.0]),
        [3 * e2 / (1 + e2), 1 / (1 + e2)],
        rtol=1e-15,
    )
    np.testing.assert_allclose(
        STCHBalancer(mu=0.5, ideal_point=[0.5, 1.5]).weights([1.0, 2.0]), [0.5, 0.5], rtol=1e-15
    )


def test_defaults():
    """Defaults: uniform preference p = 1, μ = 1 (LibMTL's STCH_mu), ideal point 0."""
    balancer = STCHBalancer()
    assert balancer.preference is None and balancer.mu == 1.0 and balancer.ideal_point == 0.0
    np.testing.assert_allclose(
        balancer.weights([1.0, 2.0, 3.0]), np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    )


@given(st.integers(1, 6).flatmap(lambda k: positive_losses(k)), st.floats(1e-3, 1e3))
def test_uniform_preference_weights_are_on_the_simplex(losses, mu):
    """With p = 1 the weights are the softmax itself: non-negative, summing to 1."""
    assert_on_simplex(STCHBalancer(mu=mu).weights(losses), len(losses))


@given(_cases(), st.floats(1e-3, 1e3))
def test_weights_sum_to_the_softmax_average_of_the_preference(case, mu):
    """Σ_i w_i = Σ_i softmax_i · p_i lies between min p and max p; w_i = 0 where p_i = 0."""
    losses, preference = case
    preference = np.asarray(preference)
    weights = STCHBalancer(preference, mu=mu).weights(losses)
    assert_valid_weights(weights, len(losses), sums_to_one=False)
    assert np.all(weights >= 0)
    assert np.all(weights[preference == 0] == 0)
    assert preference.min() - 1e-12 <= weights.sum() <= preference.max() + 1e-12


@given(_cases(min_k=2))
def test_small_mu_is_tchebycheff_large_mu_is_a_weighted_sum(case):
    """μ → 0: w → p_i on the objective with the largest p_i(L_i − z_i) (Tchebycheff);
    μ → ∞: w → p/k (a weighted sum)."""
    losses, preference = case
    preference = np.asarray(preference)
    excess = preference * losses
    top = np.sort(excess)[-2:]
    if top[1] - top[0] < 1e-3 * max(top[1], 1.0):
        return  # no unique maximum
    cold = STCHBalancer(preference, mu=1e-6 * (top[1] - top[0])).weights(losses)
    expected = np.zeros(len(losses))
    expected[np.argmax(excess)] = preference[np.argmax(excess)]
    np.testing.assert_allclose(cold, expected, atol=1e-12)
    hot = STCHBalancer(preference, mu=1e12).weights(losses)
    np.testing.assert_allclose(hot, preference / len(losses), rtol=1e-6)


@given(_cases(min_k=2), st.data())
def test_rescaling_an_objective_acts_as_a_preference(case, data):
    """λ-dependence, exactly: rescaling objective i by c_i (z = 0 scales with it) gives the
    direction of preference c_i·p_i on the unscaled objectives, w'_i·c_i = w_i(c ⊙ p)."""
    losses, preference = case
    k = len(losses)
    factors = 10.0 ** np.array(data.draw(st.lists(st.floats(-2, 2), min_size=k, max_size=k)))
    scaled = STCHBalancer(preference, mu=0.7).weights(losses * factors)
    preferred = STCHBalancer(np.asarray(preference) * factors, mu=0.7).weights(losses)
    np.testing.assert_allclose(scaled * factors, preferred, rtol=1e-9, atol=1e-300)


@given(_cases(min_k=2), permutation_seeds)
def test_permutation_equivariant(case, seed):
    """Relabelling the objectives (losses, preference, ideal point) relabels the weights."""
    losses, preference = case
    preference = np.asarray(preference)
    perm = random_permutation(len(losses), seed)
    ideal = np.linspace(0.0, 1e-3, len(losses))
    weights = STCHBalancer(preference, mu=0.5, ideal_point=ideal).weights(losses)
    permuted = STCHBalancer(preference[perm], mu=0.5, ideal_point=ideal[perm]).weights(losses[perm])
    np.testing.assert_allclose(permuted, weights[perm], rtol=1e-12, atol=1e-300)


@given(st.integers(1, 6).flatmap(lambda k: positive_losses(k)), st.floats(-1e3, 1e3))
def test_uniform_preference_ignores_a_common_shift(losses, shift):
    """With p = 1, adding the same constant to every loss (or to the ideal point) leaves the
    softmax, and so the weights, unchanged."""
    np.testing.assert_allclose(
        STCHBalancer().weights(losses + shift), STCHBalancer().weights(losses), atol=1e-9
    )


def test_running_min_ideal_point():
    """ideal_point="running_min": z is the smallest value of each loss so far, this call's
    included, so the weights are softmax(p ⊙ (L − z)/μ) ⊙ p with that z."""
    balancer = STCHBalancer(mu=1.0, ideal_point="running_min")
    assert balancer.running_min is None
    np.testing.assert_allclose(balancer.weights([3.0, 2.0]), [0.5, 0.5])  # z = L
    np.testing.assert_array_equal(balancer.running_min, [3.0, 2.0])
    weights = balancer.weights([1.0, 4.0])  # z = (1, 2): excess (0, 2)
    np.testing.assert_array_equal(balancer.running_min, [1.0, 2.0])
    np.testing.assert_allclose(weights, [1 / (1 + np.exp(2)), np.exp(2) / (1 + np.exp(2))])
    weights = balancer.weights([2.0, 2.5])  # z = (1, 2): excess (1, 0.5)
    np.testing.assert_allclose(weights, np.exp([1.0, 0.5]) / np.exp([1.0, 0.5]).sum())


@given(st.integers(1, 5).flatmap(lambda k: st.lists(positive_losses(k), min_size=1, max_size=6)))
def test_running_min_is_the_elementwise_minimum(sequence):
    """The running minimum is the elementwise minimum of all losses passed so far."""
    balancer = STCHBalancer(ideal_point="running_min")
    for t, losses in enumerate(sequence, start=1):
        balancer.weights(losses)
        np.testing.assert_array_equal(balancer.running_min, np.min(sequence[:t], axis=0))


def test_extreme_scores_take_the_softmax_limit():
    """Scores beyond the float range do not warn: the largest takes all the weight, and a zero
    preference gives a score of 0 whatever the excess."""
    weights = STCHBalancer(mu=1e-300).weights([1e10, 1.0])
    np.testing.assert_array_equal(weights, [1.0, 0.0])
    weights = STCHBalancer([0.0, 1.0], mu=1e-300, ideal_point=[-1e308, 0.0]).weights([1e308, 1.0])
    np.testing.assert_array_equal(weights, [0.0, 1.0])


def test_num_objectives_fixed_by_settings_or_first_call():
    """k comes from num_objectives, a preference or a per-objective ideal point, or the first
    call; settings that disagree are refused."""
    assert STCHBalancer().num_objectives is None
    assert STCHBalancer([1.0, 2.0]).num_objectives == 2
    assert STCHBalancer(ideal_point=[0.0, 0.0, 0.0]).num_objectives == 3
    assert STCHBalancer(num_objectives=4).num_objectives == 4
    balancer = STCHBalancer()
    balancer.weights([1.0, 2.0])
    assert balancer.num_objectives == 2
    with pytest.raises(ValueError, match=r"losses must have 2 entries"):
        STCHBalancer([1.0, 1.0]).weights([1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: STCHBalancer(),
        lambda: STCHBalancer([1.0, 2.0, 0.5], mu=0.3, ideal_point="running_min"),
        lambda: STCHBalancer(mu=2.0, ideal_point=[0.1, 0.2, 0.3]),
    ],
    ids=["defaults", "running-min", "fixed-ideal"],
)
@pytest.mark.parametrize("split", [0, 2])
def test_state_round_trip_into_a_fresh_balancer(make, split):
    """A default STCHBalancer (no k yet) loading the state after `split` calls takes the
    settings and the running minimum and continues exactly."""
    sequence = [np.random.default_rng(s).uniform(0.1, 5.0, 3) for s in range(6)]
    original = make()
    for losses in sequence[:split]:
        original.weights(losses)
    restored = STCHBalancer()
    restored.load_state_dict(original.state_dict())
    assert repr(restored) == repr(original)
    for losses in sequence[split:]:
        np.testing.assert_array_equal(restored.weights(losses), original.weights(losses))


def test_flags_and_repr():
    """STCH needs neither the Gram nor update(); its weights sum to 1 only for p = 1."""
    assert not STCHBalancer.requires_gram and not STCHBalancer.requires_update
    assert not STCHBalancer.weights_sum_to_one
    assert repr(STCHBalancer([1, 2], ideal_point="running_min")) == (
        "STCHBalancer(preference=[1.0, 2.0], mu=1.0, ideal_point='running_min', num_objectives=2)"
    )


def _state_with(**changes):
    return {**STCHBalancer(num_objectives=2).state_dict(), **changes}


NAN = float("nan")

CASES = {
    "mu zero": (lambda: STCHBalancer(mu=0.0), ValueError, r"mu must be a finite number > 0"),
    "mu inf": (lambda: STCHBalancer(mu=float("inf")), ValueError, r"mu must be a finite"),
    "mu str": (lambda: STCHBalancer(mu="1"), TypeError, r"mu must be a real number"),
    "preference negative": (
        lambda: STCHBalancer([1.0, -1.0]),
        ValueError,
        r"preference must be ≥ 0, got \[1.0, -1.0\]",
    ),
    "preference zero": (
        lambda: STCHBalancer([0.0, 0.0]),
        ValueError,
        r"preference must not all be zero",
    ),
    "preference nan": (lambda: STCHBalancer([1.0, NAN]), ValueError, r"preference must be finite"),
    "ideal point word": (
        lambda: STCHBalancer(ideal_point="nadir"),
        ValueError,
        r"ideal_point must be a number, one number per objective or 'running_min', got 'nadir'",
    ),
    "ideal point nan": (
        lambda: STCHBalancer(ideal_point=NAN),
        ValueError,
        r"ideal_point must be finite",
    ),
    "ideal point bool": (
        lambda: STCHBalancer(ideal_point=True),
        TypeError,
        r"ideal_point must be a real number",
    ),
    "lengths disagree": (
        lambda: STCHBalancer([1.0, 1.0], ideal_point=[0.0, 0.0, 0.0]),
        ValueError,
        r"preference and ideal_point must have the same length",
    ),
    "num_objectives disagrees": (
        lambda: STCHBalancer([1.0, 1.0], num_objectives=3),
        ValueError,
        r"num_objectives=3, but preference or ideal_point has 2 entries",
    ),
    "nan loss": (lambda: STCHBalancer().weights([1.0, NAN]), ValueError, r"losses must be finite"),
    "state preference of other length": (
        lambda: STCHBalancer().load_state_dict(_state_with(preference=[1.0, 1.0, 1.0])),
        ValueError,
        r"state\['preference'\] or state\['ideal_point'\] has 3 entries",
    ),
    "state running min without running_min": (
        lambda: STCHBalancer().load_state_dict(_state_with(running_min=[1.0, 1.0])),
        ValueError,
        r"state\['running_min'\] is set, but state\['ideal_point'\] is not 'running_min'",
    ),
    "state mu": (
        lambda: STCHBalancer().load_state_dict(_state_with(mu=-1.0)),
        ValueError,
        r"state\['mu'\] must be a finite number > 0",
    ),
}


test_bad_input_gets_a_clear_error = bad_input_test(CASES)


def test_errors_come_before_any_state_change():
    """A rejected call or state leaves the running minimum and settings as they were."""
    balancer = STCHBalancer(ideal_point="running_min")
    balancer.weights([1.0, 2.0])
    with pytest.raises(ValueError):
        balancer.weights([0.5, NAN])
    with pytest.raises(ValueError):
        balancer.load_state_dict({**balancer.state_dict(), "mu": 0.0, "running_min": [0.1, 0.1]})
    np.testing.assert_array_equal(balancer.running_min, [1.0, 2.0])
    assert balancer.mu == 1.0
