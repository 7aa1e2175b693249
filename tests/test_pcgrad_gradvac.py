"""PCGrad and GradVac: TorchJD's algorithms on the Gram, with the random visiting orders given
to both (TorchJD's torch.randperm is replaced by a list of drawn permutations)."""

from __future__ import annotations

from collections.abc import Iterator
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from properties import assert_gram_scale_invariant
from strategies import gradient_cases
from torchjd.aggregation import GradVacWeighting, PCGradWeighting

from moopt import GradVacBalancer, PCGradBalancer
from moopt.balancers.gradvac import gradvac_weights
from moopt.balancers.pcgrad import pcgrad_weights


def _replayed_randperm(permutations: list[torch.Tensor]):
    """A stand-in for torch.randperm that returns the given permutations in turn."""
    remaining: Iterator[torch.Tensor] = iter(permutations)

    def randperm(n: int, *args, **kwargs) -> torch.Tensor:
        permutation = next(remaining)
        assert len(permutation) == n
        return permutation

    return mock.patch("torch.randperm", randperm)


def _torchjd_pcgrad(gram: np.ndarray, orders: list[np.ndarray]) -> np.ndarray:
    """TorchJD's PCGrad with the orders given: it draws one torch.randperm(k) per objective."""
    with _replayed_randperm([torch.tensor(order) for order in orders]):
        return PCGradWeighting()(torch.tensor(gram)).numpy()


def _torchjd_gradvac_step(weighting: GradVacWeighting, gram: np.ndarray, orders) -> np.ndarray:
    """One TorchJD GradVac step with the orders given: for objective i it draws
    torch.randperm(k − 1) and visits others[perm], others = [j ≠ i]; replay the same visits."""
    k = len(gram)
    permutations = []
    for i, order in enumerate(orders):
        others = [j for j in range(k) if j != i]
        visits = [j for j in order if j != i]
        permutations.append(torch.tensor([others.index(j) for j in visits], dtype=torch.long))
    with _replayed_randperm(permutations):
        return weighting(torch.tensor(gram)).numpy()


def _orders(k: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(k) for _ in range(k)]


def _drifting_grams(case, steps: int, seed: int) -> list[np.ndarray]:
    """Grams of the case's gradients perturbed at every step (so the cosines move)."""
    rng = np.random.default_rng(seed)
    g = case.gradients
    noise_scale = np.linalg.norm(g, axis=1, keepdims=True) / np.sqrt(g.shape[1])
    grams = []
    for _ in range(steps):
        moved = g + 0.7 * rng.standard_normal(g.shape) * noise_scale
        grams.append(moved @ moved.T)
    return grams


# --------------------------------------------------------------------------- PCGrad


@given(gradient_cases(min_k=1, max_k=7, full_rank=False), st.integers(0, 2**32 - 1))
def test_pcgrad_matches_torchjd(case, seed):
    """pcgrad_weights with TorchJD's orders gives TorchJD's PCGrad weights (same float64
    operations, so to rounding)."""
    orders = _orders(case.k, seed)
    expected = _torchjd_pcgrad(case.gram, orders)
    np.testing.assert_allclose(pcgrad_weights(case.gram, orders), expected, rtol=1e-12)


def test_pcgrad_two_objectives_need_no_order():
    """For k = 2 the order does not matter: the balancer equals TorchJD's unpatched PCGrad."""
    g = np.array([[1.0, 0.2], [-2.0, 1.0]])
    expected = PCGradWeighting()(torch.tensor(g @ g.T)).numpy()
    np.testing.assert_allclose(PCGradBalancer().weights([1.0, 1.0], g @ g.T), expected)


@given(gradient_cases(min_k=2, max_k=6, full_rank=False), st.integers(0, 2**32 - 1))
def test_pcgrad_follows_the_paper(case, seed):
    """Algorithm 1 on the gradients themselves: each g_i^PC has the parts along the gradients it
    conflicted with removed, in order; the direction is Σ g_i^PC."""
    g = case.gradients
    orders = _orders(case.k, seed)
    expected = np.zeros(g.shape[1])
    for i, order in enumerate(orders):
        projected = g[i].copy()
        for j in order:
            if j != i and projected @ g[j] < 0:
                projected -= (projected @ g[j]) / (g[j] @ g[j]) * g[j]
        expected += projected
    direction = pcgrad_weights(case.gram, orders) @ g
    scale = np.linalg.norm(g, axis=1).sum()
    np.testing.assert_allclose(direction, expected, rtol=0, atol=1e-9 * scale)


@given(gradient_cases(min_k=1, max_k=6, full_rank=False), st.integers(0, 2**32 - 1))
def test_pcgrad_weights_are_at_least_one(case, seed):
    """Each projection only adds positive multiples of other gradients: every w_i ≥ 1, and
    without conflicts w = 1 (the plain sum)."""
    weights = pcgrad_weights(case.gram, _orders(case.k, seed))
    assert np.all(weights >= 1.0)
    g = np.abs(case.gradients)  # non-negative entries: no conflicts
    np.testing.assert_array_equal(pcgrad_weights(g @ g.T, _orders(case.k, seed)), 1.0)


def test_pcgrad_draws_orders_from_its_seed():
    """The balancer uses pcgrad_weights with the permutations its generator draws: the same
    seed gives the same weights at every step, and the orders really are random (other seeds
    give other weights for k = 4 conflicting gradients)."""
    g = np.random.default_rng(3).standard_normal((4, 3))
    gram = g @ g.T
    generator = np.random.default_rng(11)
    balancer, twin = PCGradBalancer(seed=11), PCGradBalancer(seed=11)
    for _ in range(5):
        expected = pcgrad_weights(gram, [generator.permutation(4) for _ in range(4)])
        np.testing.assert_array_equal(balancer.weights(np.ones(4), gram), expected)
        np.testing.assert_array_equal(twin.weights(np.ones(4), gram), expected)
    first_steps = {tuple(PCGradBalancer(seed=s).weights(np.ones(4), gram)) for s in range(8)}
    assert len(first_steps) > 1


@pytest.mark.parametrize("balancer_class", [PCGradBalancer, GradVacBalancer])
def test_unseeded_generator_is_restored(balancer_class):
    """Without a seed the orders come from the operating system, yet a balancer restored from
    the state dict continues exactly as the original."""
    g = np.random.default_rng(8).standard_normal((5, 3))
    original = balancer_class()
    original.weights(np.ones(5), g @ g.T)
    restored = balancer_class()
    restored.load_state_dict(original.state_dict())
    assert restored.seed is None
    for _ in range(4):
        np.testing.assert_array_equal(
            restored.weights(np.ones(5), g @ g.T), original.weights(np.ones(5), g @ g.T)
        )


@given(gradient_cases(min_k=2, max_k=5), st.floats(-12, 12))
def test_pcgrad_scale_invariant(case, log_factor):
    weights = lambda losses, gram: PCGradBalancer(seed=1).weights(losses, gram)  # noqa: E731
    assert_gram_scale_invariant(weights, np.ones(case.k), case.gram, 10.0**log_factor)


def test_orders_are_checked():
    with pytest.raises(ValueError, match="orders must hold 2 permutations of range"):
        pcgrad_weights(np.eye(2), [[0, 1]])
    with pytest.raises(ValueError, match="orders must hold 2 permutations of range"):
        pcgrad_weights(np.eye(2), [[0, 0], [1, 0]])
    with pytest.raises(ValueError, match="seed must be ≥ 0"):
        PCGradBalancer(seed=-1)
    with pytest.raises(TypeError, match="seed must be an integer or None"):
        PCGradBalancer(seed=1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- GradVac


@given(gradient_cases(min_k=1, max_k=6), st.floats(0, 1), st.integers(0, 999))
def test_gradvac_matches_torchjd_without_eps(case, beta, seed):
    """Over several steps, gradvac_weights with TorchJD's orders gives TorchJD's GradVac weights
    and EMA targets, with TorchJD's eps set to 0 (ours has none). The gradients are linearly
    independent, so no g_i^PC vanishes (TorchJD without eps would divide 0 by 0)."""
    weighting = GradVacWeighting(beta=beta, eps=0.0)
    targets = np.zeros((case.k, case.k))
    for step, gram in enumerate(_drifting_grams(case, 5, seed)):
        orders = _orders(case.k, seed + step)
        expected = _torchjd_gradvac_step(weighting, gram, orders)
        weights, targets = gradvac_weights(gram, targets, beta, orders)
        np.testing.assert_allclose(weights, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
        np.testing.assert_allclose(targets, weighting._phi_t.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 8])
def test_gradvac_close_to_torchjd_default_eps(n):
    """With TorchJD's default eps = 1e-8 and gradients of norm about 1, the directions differ by
    about eps (relative), also for dependent gradients (n < k)."""
    rng = np.random.default_rng(5)
    weighting = GradVacWeighting()  # beta = 0.5, eps = 1e-8
    balancer_targets = np.zeros((4, 4))
    for step in range(6):
        g = rng.standard_normal((4, n)) / np.sqrt(n)
        orders = _orders(4, step)
        expected = _torchjd_gradvac_step(weighting, g @ g.T, orders) @ g
        weights, balancer_targets = gradvac_weights(g @ g.T, balancer_targets, 0.5, orders)
        np.testing.assert_allclose(weights @ g, expected, rtol=0, atol=1e-6 * np.abs(g).sum())
        np.testing.assert_allclose(balancer_targets, weighting._phi_t.numpy(), atol=1e-6)


def test_gradvac_defaults_match_torchjd():
    assert GradVacBalancer().beta == GradVacWeighting().beta == 0.5


@given(gradient_cases(min_k=2, max_k=6, full_rank=False), st.integers(0, 2**32 - 1))
def test_gradvac_with_beta_zero_is_pcgrad(case, seed):
    """β = 0 keeps every target at 0, where GradVac's correction is PCGrad's projection: the
    balancers with the same seed (so the same orders) agree at every step."""
    gradvac, pcgrad = GradVacBalancer(beta=0.0, seed=seed % 1000), PCGradBalancer(seed=seed % 1000)
    for gram in _drifting_grams(case, 3, seed % 1000):
        expected = pcgrad.weights(np.ones(case.k), gram)
        np.testing.assert_allclose(gradvac.weights(np.ones(case.k), gram), expected, rtol=1e-9)
    np.testing.assert_array_equal(gradvac.targets, 0.0)


def test_gradvac_correction_reaches_the_target():
    """For k = 2 the correction of g_1 makes cos(g_1^PC, g_2) exactly the target."""
    g = np.array([[1.0, 0.0], [-1.0, 2.0]])
    targets = np.array([[0.0, 0.4], [0.4, 0.0]])
    weights, _ = gradvac_weights(g @ g.T, targets, 0.5, [[0, 1], [1, 0]])
    # weights = c_1 + c_2 with c_1 = e_1 + a e_2 and c_2 = e_2 + b e_1; recover each row
    for i, j in ((0, 1), (1, 0)):
        one_row_targets = np.zeros((2, 2))
        one_row_targets[i, j] = 0.4
        one_row_targets[j, i] = -1.0  # never above any cosine: row j is left unchanged
        w, _ = gradvac_weights(g @ g.T, one_row_targets, 0.5, [[0, 1], [1, 0]])
        corrected = w @ g - g[j]
        cosine = corrected @ g[j] / np.linalg.norm(corrected) / np.linalg.norm(g[j])
        assert cosine == pytest.approx(0.4, abs=1e-14)
    assert weights[0] > 1 and weights[1] > 1


def test_gradvac_targets_follow_the_ema():
    """Targets start at 0 and move by β towards the cosines seen; with no correction needed
    (cosines above the targets) the weights are 1."""
    g = np.array([[1.0, 0.0], [1.0, 1.0]])  # cosine 1/√2
    balancer = GradVacBalancer(beta=0.25, seed=0)
    assert balancer.targets is None and balancer.num_objectives is None
    np.testing.assert_allclose(balancer.weights([1.0, 1.0], g @ g.T), [1.0, 1.0])
    np.testing.assert_allclose(balancer.targets, [[0.0, 0.25 / np.sqrt(2)], [0.25 / np.sqrt(2), 0]])
    balancer.weights([1.0, 1.0], g @ g.T)
    expected = (1 - 0.75**2) / np.sqrt(2)
    np.testing.assert_allclose(balancer.targets[0, 1], expected, rtol=1e-15)
    assert balancer.num_objectives == 2
    with pytest.raises(ValueError, match="losses must have 2 entries"):
        balancer.weights([1.0, 1.0, 1.0], np.eye(3))
    balancer.reset()
    assert balancer.targets is None and balancer.num_objectives is None
    balancer.weights([1.0, 1.0, 1.0], np.eye(3))


def test_gradvac_cancelled_gradient_counts_as_zero():
    """In one dimension PCGrad's first correction cancels g_i exactly: what is left is rounding,
    whose cosine counts as 0 (no further correction; the target moves towards 0)."""
    g = np.array([[0.3], [-0.7], [0.11]])
    orders = [[0, 1, 2], [1, 0, 2], [2, 1, 0]]
    targets = np.zeros((3, 3))
    weights, new_targets = gradvac_weights(g @ g.T, targets, 0.5, orders)
    np.testing.assert_allclose(weights @ g, pcgrad_weights(g @ g.T, orders) @ g, atol=1e-15)
    assert new_targets[0, 2] == 0.0  # g_0 was cancelled by g_1 before g_2 was visited


def test_gradvac_degenerate_cases_stay_finite():
    """A zero gradient gets no correction (TorchJD would add about 1/eps of it), nor does a
    pair whose target is 1; cosines are clipped, so targets stay in [−1, 1]."""
    g = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 1e-9]])
    balancer = GradVacBalancer(beta=1.0, seed=0)
    for _ in range(3):
        weights = balancer.weights(np.ones(3), g @ g.T)
        assert np.all(np.isfinite(weights))
        assert np.all(np.abs(balancer.targets) <= 1.0)
    parallel = np.array([[1.0, 0.0], [2.0, 0.0]])
    targets = np.array([[0.0, 1.0], [1.0, 0.0]])
    w, new_targets = gradvac_weights(parallel @ parallel.T, targets, 0.5, [[0, 1], [1, 0]])
    np.testing.assert_array_equal(w, [1.0, 1.0])
    np.testing.assert_array_equal(new_targets, targets)  # the cosines seen are 1 too


@given(gradient_cases(min_k=2, max_k=5), st.floats(-12, 12))
def test_gradvac_scale_invariant(case, log_factor):
    """Without an eps, the weights and targets do not depend on the overall scale."""
    grams = _drifting_grams(case, 3, 0)
    factor = 10.0**log_factor
    plain, scaled = GradVacBalancer(seed=2), GradVacBalancer(seed=2)
    for gram in grams:
        np.testing.assert_allclose(
            scaled.weights(np.ones(case.k), factor * gram),
            plain.weights(np.ones(case.k), gram),
            rtol=1e-8,
        )


def test_gradvac_settings_are_checked():
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        GradVacBalancer(beta=1.5)
    with pytest.raises(TypeError, match="beta must be a real number"):
        GradVacBalancer(beta="0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"targets must have shape \(2, 2\)"):
        gradvac_weights(np.eye(2), np.zeros((3, 3)), 0.5, [[0, 1], [0, 1]])
    with pytest.raises(ValueError, match=r"targets must hold cosines in \[-1, 1\]"):
        gradvac_weights(np.eye(2), np.full((2, 2), 2.0), 0.5, [[0, 1], [0, 1]])
    assert repr(GradVacBalancer(0.1, seed=3)) == "GradVacBalancer(beta=0.1, seed=3)"


def test_gradvac_state_dict_holds_the_targets():
    g = np.array([[1.0, 0.0], [-1.0, 1.0], [0.0, 1.0]])
    balancer = GradVacBalancer(seed=4)
    assert balancer.state_dict()["targets"] is None
    balancer.weights(np.ones(3), g @ g.T)
    state = balancer.state_dict()
    np.testing.assert_array_equal(state["targets"], balancer.targets)
    restored = GradVacBalancer()
    restored.load_state_dict(state)
    assert restored.num_objectives == 3 and restored.seed == 4
    np.testing.assert_array_equal(
        restored.weights(np.ones(3), g @ g.T), balancer.weights(np.ones(3), g @ g.T)
    )
    with pytest.raises(ValueError, match="generator state"):
        GradVacBalancer().load_state_dict({**state, "rng": 5})
    with pytest.raises(ValueError, match=r"state\['targets'\] must have shape \(3, 3\)"):
        GradVacBalancer().load_state_dict({**state, "targets": np.zeros((2, 2))})
