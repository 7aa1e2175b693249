"""CoarseToFineBalancer: FAMO-style logits learned from how each log-loss fell."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from properties import assert_valid_weights
from strategies import positive_losses

from moopt import CoarseToFineBalancer


def _reference_run(losses_seq, new_losses_seq, *, lr, gamma, floor, optimizer):
    """An independent re-derivation of Solution 1 (METHOD.md), written out step by step.

    Weights w_i = c·z_i/ℓ_i with z = softmax(ξ) and c = 1/Σ z_j/ℓ_j; after the step
    δ_i = log ℓ_i − log ℓ'_i, the logit gradient is Jᵀδ with J = diag(z) − zzᵀ, plus γξ;
    Adam uses the textbook m, v moments with bias correction.
    """
    k = len(losses_seq[0])
    xi = np.zeros(k)
    m = np.zeros(k)
    v = np.zeros(k)
    out = []
    for t, (losses, new_losses) in enumerate(zip(losses_seq, new_losses_seq, strict=True), start=1):
        ell = np.asarray(losses) - floor
        z = np.exp(xi) / np.exp(xi).sum()
        c = 1.0 / np.sum(z / ell)
        out.append(c * z / ell)
        delta = np.log(ell) - np.log(np.asarray(new_losses) - floor)
        jacobian = np.diag(z) - np.outer(z, z)
        grad = jacobian.T @ delta + gamma * xi
        if optimizer == "sgd":
            xi = xi - lr * grad
        else:
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad**2
            m_hat = m / (1 - 0.9**t)
            v_hat = v / (1 - 0.999**t)
            xi = xi - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
    return out, xi


def _random_sequence(seed: int, k: int, steps: int):
    rng = np.random.default_rng(seed)
    losses = rng.uniform(0.1, 10.0, k)
    before, after = [], []
    for _ in range(steps):
        new = losses * rng.uniform(0.7, 1.1, k)
        before.append(losses)
        after.append(new)
        losses = new * rng.uniform(0.9, 1.1, k)  # the next batch
    return before, after


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("floor", [-1.0, 0.0])
@pytest.mark.parametrize("seed", range(4))
def test_matches_an_independent_rederivation(optimizer, floor, seed):
    """Fifty steps of weights/update equal the re-derivation of the update in this test."""
    k = 2 + seed % 3
    before, after = _random_sequence(seed, k, 50)
    lr, gamma = (0.025, 0.003) if optimizer == "adam" else (0.5, 0.01)
    expected, logits = _reference_run(
        before, after, lr=lr, gamma=gamma, floor=floor, optimizer=optimizer
    )
    balancer = CoarseToFineBalancer(
        k, logit_lr=lr, gamma=gamma, loss_floor=floor, logit_optimizer=optimizer
    )
    for losses, new_losses, want in zip(before, after, expected, strict=True):
        np.testing.assert_allclose(balancer.weights(losses), want, rtol=1e-12, atol=1e-14)
        balancer.update(new_losses)
    np.testing.assert_allclose(balancer.logits, logits, rtol=1e-10, atol=1e-13)


def test_adam_matches_torch_adam():
    """The NumPy Adam on the logits follows torch.optim.Adam(lr, weight_decay=γ) step by step."""
    torch = pytest.importorskip("torch")
    before, after = _random_sequence(11, 3, 40)
    balancer = CoarseToFineBalancer(3, logit_lr=0.05, gamma=0.003)
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([logits], lr=0.05, weight_decay=0.003)
    for losses, new_losses in zip(before, after, strict=True):
        balancer.weights(losses)
        z = torch.softmax(logits.detach(), 0).numpy()
        delta = np.log(losses + 1.0) - np.log(new_losses + 1.0)
        logits.grad = torch.from_numpy((np.diag(z) - np.outer(z, z)) @ delta)
        adam.step()
        balancer.update(new_losses)
        np.testing.assert_allclose(balancer.logits, logits.detach().numpy(), rtol=1e-12, atol=1e-15)


@given(st.integers(1, 8).flatmap(lambda k: positive_losses(k, low=1e-2, high=1e2)))
def test_first_step_weights_are_inverse_shifted_losses(losses):
    """With ξ = 0 (uniform z) the first weights are w_i ∝ 1/ℓ_i = 1/(L_i − m), summing to 1."""
    balancer = CoarseToFineBalancer(len(losses))
    weights = balancer.weights(losses)
    assert_valid_weights(weights, len(losses))
    assert np.all(weights > 0)
    inverse = 1.0 / (losses + 1.0)
    np.testing.assert_allclose(weights, inverse / inverse.sum(), rtol=1e-12)


@given(
    positive_losses(2, low=0.1, high=10.0),
    st.floats(0.5, 0.99),
    st.floats(0.5, 0.99),
)
def test_objective_whose_log_loss_fell_more_loses_weight(losses, keep_0, keep_1):
    """After one update, the objective with the larger log-loss decrease δ_i has a smaller
    softmax weight z_i than before, and the other a larger one."""
    if abs(np.log(keep_0) - np.log(keep_1)) < 1e-3:
        return
    balancer = CoarseToFineBalancer(2, loss_floor=0.0)
    balancer.weights(losses)
    before = balancer.softmax_weights
    balancer.update(losses * [keep_0, keep_1])
    after = balancer.softmax_weights
    faster = 0 if keep_0 < keep_1 else 1
    assert after[faster] < before[faster]
    assert after[1 - faster] > before[1 - faster]


@given(st.integers(2, 6), st.integers(0, 2**32 - 1))
def test_weights_positive_and_sum_to_one_along_a_run(k, seed):
    """Along any run the weights stay positive and sum to 1."""
    balancer = CoarseToFineBalancer(k, logit_lr=0.5)
    for losses, new_losses in zip(*_random_sequence(seed, k, 20), strict=True):
        weights = balancer.weights(losses)
        assert_valid_weights(weights, k)
        assert np.all(weights > 0)
        balancer.update(new_losses)


def test_weight_decay_pulls_logits_back_to_uniform():
    """With no loss change (δ = 0), γ > 0 shrinks the logits towards 0 (uniform weights)."""
    balancer = CoarseToFineBalancer(2, logit_lr=0.1, gamma=0.5, logit_optimizer="sgd")
    state = balancer.state_dict()
    state["logits"] = np.array([1.0, -1.0])
    balancer.load_state_dict(state)
    for _ in range(10):
        balancer.weights([1.0, 1.0])
        balancer.update([1.0, 1.0])
    np.testing.assert_allclose(balancer.logits, np.array([1.0, -1.0]) * 0.95**10, rtol=1e-12)


def test_repeated_weights_calls_update_from_the_latest():
    """weights() may be called several times between updates (amortised re-evaluation); the
    update uses the losses of the latest call."""
    a = CoarseToFineBalancer(2, logit_optimizer="sgd", logit_lr=1.0)
    b = CoarseToFineBalancer(2, logit_optimizer="sgd", logit_lr=1.0)
    a.weights([5.0, 5.0])
    a.weights([2.0, 3.0])
    b.weights([2.0, 3.0])
    a.update([1.5, 2.9])
    b.update([1.5, 2.9])
    np.testing.assert_array_equal(a.logits, b.logits)


def test_state_round_trip_keeps_the_pending_losses():
    """A state dict taken between weights() and update() restores the pending losses, so the
    restored balancer's update() is the one the original would have made."""
    original = CoarseToFineBalancer(3)
    original.weights([1.0, 2.0, 3.0])
    original.update([0.9, 1.9, 2.5])
    original.weights([0.8, 1.7, 2.4])
    restored = CoarseToFineBalancer(3)
    restored.load_state_dict(original.state_dict())
    original.update([0.7, 1.6, 2.4])
    restored.update([0.7, 1.6, 2.4])
    np.testing.assert_array_equal(restored.logits, original.logits)
    np.testing.assert_array_equal(
        restored.weights([1.0, 1.0, 1.0]), original.weights([1.0, 1.0, 1.0])
    )


def test_per_objective_floor():
    """loss_floor may be given per objective."""
    balancer = CoarseToFineBalancer(2, loss_floor=[0.0, -1.0])
    inverse = 1.0 / np.array([2.0, 3.0])
    np.testing.assert_allclose(balancer.weights([2.0, 2.0]), inverse / inverse.sum())
