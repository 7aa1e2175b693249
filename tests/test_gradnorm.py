"""GradNormBalancer: the documented update, its fixed points, invariances and state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from properties import assert_valid_weights
from strategies import gradient_cases, permutation_seeds, random_permutation

from moopt.balancers.gradnorm import GradNormBalancer


def _trajectory(seed: int, k: int, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(losses, gram) per step: losses falling at per-objective rates, random Grams whose
    gradient norms differ by up to two decades."""
    rng = np.random.default_rng(seed)
    losses = rng.uniform(0.5, 5.0, k)
    rates = rng.uniform(0.9, 1.0, k)
    out = []
    for _ in range(steps):
        g = rng.standard_normal((k, k + 2)) * 10.0 ** rng.uniform(-1, 1, (k, 1))
        out.append((losses.copy(), g @ g.T))
        losses = losses * rates
    return out


def _run(balancer: GradNormBalancer, trajectory) -> np.ndarray:
    return np.array([balancer.weights(losses, gram) for losses, gram in trajectory])


def _expected_step(logits, losses, initial, norms, alpha, lr):
    """The documented update, written out independently: one gradient step of the logits on
    L_grad/Ḡ_W through W = k·softmax(ξ)."""
    k = len(logits)
    w = np.exp(logits - logits.max())
    w /= w.sum()
    big_w = k * w
    weighted = big_w * norms
    mean = weighted.mean()
    ratio = losses / initial
    target = mean * (ratio / ratio.mean()) ** alpha
    d_loss_d_big_w = norms * np.sign(weighted - target) / mean
    jacobian = k * (np.diag(w) - np.outer(w, w))  # ∂W/∂ξ
    return logits - lr * jacobian.T @ d_loss_d_big_w


def test_first_step_is_uniform_and_remembers_the_initial_losses():
    """The first call returns 1/k and stores L(0); the weights always sum to 1."""
    balancer = GradNormBalancer()
    weights = balancer.weights([2.0, 0.5, 1.0], np.diag([1.0, 4.0, 9.0]))
    np.testing.assert_array_equal(weights, 1 / 3)
    np.testing.assert_array_equal(balancer.state_dict()["initial_losses"], [2.0, 0.5, 1.0])
    assert balancer.num_objectives == 3
    assert GradNormBalancer.requires_gram and not GradNormBalancer.requires_update
    assert GradNormBalancer.weights_sum_to_one


@pytest.mark.parametrize(("alpha", "lr"), [(1.5, 0.025), (0.5, 0.3), (0.0, 0.1)])
def test_each_call_takes_the_documented_step(alpha, lr):
    """Every call returns softmax(ξ) and then moves ξ exactly as the documented equations:
    ∂L_grad/∂W_i = n_i sign(W_i n_i − Ḡ_W r_i^α), divided by Ḡ_W, through W = k·softmax(ξ)."""
    balancer = GradNormBalancer(alpha=alpha, lr=lr)
    trajectory = _trajectory(0, 4, 10)
    initial = trajectory[0][0]
    logits = np.zeros(4)
    for losses, gram in trajectory:
        weights = balancer.weights(losses, gram)
        np.testing.assert_allclose(weights, np.exp(logits) / np.exp(logits).sum(), rtol=1e-13)
        logits = _expected_step(logits, losses, initial, np.sqrt(np.diag(gram)), alpha, lr)
        np.testing.assert_allclose(balancer.logits, logits, rtol=1e-13, atol=1e-15)


@given(st.integers(1, 6), st.integers(0, 2**32 - 1), st.floats(0.0, 3.0), st.floats(0.0, 1.0))
def test_weights_are_positive_and_sum_to_one(k, seed, alpha, lr):
    """Whatever the losses, Grams and settings, the weights are positive and sum to 1."""
    balancer = GradNormBalancer(alpha=alpha, lr=lr)
    for weights in _run(balancer, _trajectory(seed, k, 15)):
        assert_valid_weights(weights, k)
        assert np.all(weights > 0)


def test_equal_training_rates_balance_the_weighted_gradient_norms():
    """With losses that do not change (every r_i = 1) and a fixed Gram, the weighted gradient
    norms W_i n_i converge to their mean (w ∝ 1/n_i), up to the sign-step oscillation of the
    L1 loss, whose size is set by lr."""
    norms = np.array([1.0, 10.0, 0.1])
    balancer = GradNormBalancer(lr=0.01)
    for _ in range(3000):
        weights = balancer.weights([1.0, 2.0, 3.0], np.diag(norms**2))
    weighted = weights * norms
    np.testing.assert_allclose(weighted / weighted.mean(), 1.0, atol=0.05)


def test_slower_objectives_get_larger_weighted_gradient_norms():
    """An objective whose loss falls slower (larger relative inverse rate r_i) ends with a
    larger share of the weighted gradient norm: W_i n_i / Ḡ_W is ordered as r_i."""
    norms = np.array([1.0, 1.0, 1.0])
    balancer = GradNormBalancer(alpha=1.5, lr=0.01)
    balancer.weights([1.0, 1.0, 1.0], np.diag(norms**2))
    for _ in range(3000):
        weights = balancer.weights([0.9, 0.5, 0.2], np.diag(norms**2))
    shares = weights * norms / (weights * norms).mean()
    assert shares[0] > shares[1] > shares[2]


def test_alpha_zero_ignores_the_training_rates():
    """α = 0: the targets are all Ḡ_W, so the weighted norms balance whatever the rates."""
    norms = np.array([2.0, 0.5])
    balancer = GradNormBalancer(alpha=0.0, lr=0.01)
    balancer.weights([1.0, 1.0], np.diag(norms**2))
    for _ in range(3000):
        weights = balancer.weights([1.0, 0.01], np.diag(norms**2))
    np.testing.assert_allclose(weights[0] * norms[0], weights[1] * norms[1], rtol=0.05)


def test_lr_zero_and_zero_gradients_leave_the_weights_unchanged():
    """lr = 0 keeps the uniform weights; all-zero gradients carry no information and leave
    the weights as they are."""
    trajectory = _trajectory(1, 3, 8)
    np.testing.assert_array_equal(_run(GradNormBalancer(lr=0.0), trajectory), 1 / 3)
    balancer = GradNormBalancer()
    _run(balancer, trajectory)
    before = balancer.logits.copy()
    balancer.weights([1.0, 1.0, 1.0], np.zeros((3, 3)))
    np.testing.assert_array_equal(balancer.logits, before)


@given(
    st.integers(0, 2**32 - 1), st.floats(-6, 6), st.lists(st.floats(-3, 3), min_size=3, max_size=3)
)
def test_invariant_to_gradient_scale_and_loss_units(seed, log_scale, log_units):
    """Scaling every gradient by one factor, or measuring each loss in other units (L_i → a_i L_i
    at every step), gives the same weights: the step uses n_i/Ḡ_W and L_i(t)/L_i(0) only."""
    trajectory = _trajectory(seed, 3, 12)
    expected = _run(GradNormBalancer(), trajectory)
    units = 10.0 ** np.array(log_units)
    scaled = [(losses * units, 10.0**log_scale * gram) for losses, gram in trajectory]
    np.testing.assert_allclose(_run(GradNormBalancer(), scaled), expected, rtol=1e-10)


@given(gradient_cases(min_k=3, max_k=3), permutation_seeds)
def test_permutation_equivariant_over_a_run(case, seed):
    """Relabelling the objectives at every step relabels the weights at every step."""
    trajectory = _trajectory(seed % 1000, case.k, 10)
    permutation = random_permutation(case.k, seed)
    expected = _run(GradNormBalancer(), trajectory)
    relabelled = [
        (losses[permutation], gram[np.ix_(permutation, permutation)]) for losses, gram in trajectory
    ]
    np.testing.assert_allclose(
        _run(GradNormBalancer(), relabelled), expected[:, permutation], rtol=1e-12
    )


@pytest.mark.parametrize("fresh", [GradNormBalancer, lambda: GradNormBalancer(num_objectives=4)])
def test_state_dict_restores_mid_run_exactly(fresh):
    """A fresh instance (k unknown or given) loads a used one's state and continues
    bit-identically; the state is plain values and a snapshot."""
    trajectory = _trajectory(2, 4, 12)
    original = GradNormBalancer(alpha=0.8, lr=0.1)
    _run(original, trajectory[:5])
    state = original.state_dict()
    frozen = repr(state)
    restored = fresh()
    restored.load_state_dict(state)
    assert (restored.alpha, restored.lr, restored.num_objectives) == (0.8, 0.1, 4)
    np.testing.assert_array_equal(_run(restored, trajectory[5:]), _run(original, trajectory[5:]))
    assert repr(state) == frozen


def test_fresh_state_loads_into_a_fresh_instance():
    """The state of an unused instance (no k, no initial losses) loads too."""
    restored = GradNormBalancer()
    restored.load_state_dict(GradNormBalancer(alpha=2.0).state_dict())
    assert restored.alpha == 2.0 and restored.num_objectives is None
    np.testing.assert_array_equal(restored.weights([1.0, 2.0], np.eye(2)), [0.5, 0.5])


def test_errors_come_before_any_state_change():
    """A rejected call leaves the balancer exactly as it was."""
    balancer = GradNormBalancer()
    balancer.weights([1.0, 2.0], np.eye(2))
    before = repr(balancer.state_dict())
    for losses, gram in [([1.0, 0.0], np.eye(2)), ([1.0, 2.0, 3.0], np.eye(3)), ([1.0, 2.0], None)]:
        with pytest.raises(ValueError):
            balancer.weights(losses, gram)
    assert repr(balancer.state_dict()) == before


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: GradNormBalancer(alpha=-1.0), ValueError, r"alpha must be a finite number ≥ 0"),
        (lambda: GradNormBalancer(lr=float("nan")), ValueError, r"lr must be a finite number"),
        (lambda: GradNormBalancer(lr="fast"), TypeError, r"lr must be a real number, got str"),
        (lambda: GradNormBalancer(num_objectives=0), ValueError, r"num_objectives must be ≥ 1"),
        (
            lambda: GradNormBalancer().weights([1.0, -0.5], np.eye(2)),
            ValueError,
            r"losses\[1\] = -0.5 must be > 0: GradNorm divides the losses by their initial",
        ),
        (
            lambda: GradNormBalancer(num_objectives=3).weights([1.0, 1.0], np.eye(2)),
            ValueError,
            r"losses must have 3 entries",
        ),
        (lambda: GradNormBalancer().weights([1.0, 1.0]), ValueError, r"gram is required"),
        (
            lambda: GradNormBalancer(num_objectives=2).load_state_dict(
                GradNormBalancer(num_objectives=3).state_dict()
            ),
            ValueError,
            r"state is for 3 objectives, this GradNormBalancer has 2",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(make, error, message):
    """Bad settings and inputs are refused before any work, naming the argument."""
    with pytest.raises(error, match=message):
        make()
