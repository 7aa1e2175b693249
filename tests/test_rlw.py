"""RLWBalancer: Random Loss Weighting (Lin et al., TMLR 2022), w = softmax(ξ), ξ ~ N(0, I).

TorchJD implements the method as `torchjd.aggregation.Random` (softmax of `torch.randn`), with
torch's global generator. The oracle tests feed it our draw (so the directions must agree to
rounding) and compare the two weight distributions over many draws.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from properties import assert_on_simplex
from refusals import bad_input_test
from strategies import positive_losses

from moopt.balancers.rlw import RLWBalancer


def _softmax(x):
    exp = np.exp(x - x.max())
    return exp / exp.sum()


def _jacobian(rng, k, n, scales):
    """k rows of dimension n: Gaussian, with the given per-row scales, the last row made to
    conflict with the first (negative inner product)."""
    jacobian = rng.standard_normal((k, n)) * np.asarray(scales)[:, None]
    unit = jacobian[0] / np.linalg.norm(jacobian[0])
    jacobian[-1] -= (jacobian[-1] @ unit) * unit
    jacobian[-1] -= 0.5 * np.linalg.norm(jacobian[-1]) * unit
    return jacobian


@pytest.mark.parametrize(
    "scales", [[1.0, 1.0, 1.0], [1e-3, 1.0, 1e3], [1e3, 1e-3, 1.0, 10.0]], ids=str
)
def test_direction_matches_torchjd_random_on_the_same_draw(monkeypatch, scales):
    """Given the same normal draw ξ, TorchJD's Random aggregator returns w @ J with our
    w = balancer.weights(losses, J Jᵀ), for well and badly scaled, conflicting rows.
    Tolerance rtol 1e-12 (atol 1e-12·‖d‖): both are a float64 softmax and one matrix product."""
    torch = pytest.importorskip("torch")
    aggregation = pytest.importorskip("torchjd.aggregation")
    k = len(scales)
    rng = np.random.default_rng(k)
    jacobian = _jacobian(rng, k, 9, scales)
    assert jacobian[0] @ jacobian[-1] < 0
    balancer = RLWBalancer(seed=5)
    expected_draws = np.random.default_rng(5).standard_normal((4, k))
    for draw in expected_draws:
        weights = balancer.weights(rng.uniform(0.1, 3.0, k), jacobian @ jacobian.T)
        monkeypatch.setattr(
            torch,
            "randn",
            lambda n, *, device=None, dtype=None, d=draw: torch.tensor(d, dtype=dtype),
        )
        theirs = aggregation.Random()(torch.from_numpy(jacobian)).numpy()
        ours = weights @ jacobian
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12 * np.linalg.norm(theirs))


def test_weight_distribution_matches_torchjd_random():
    """Over 3000 draws (k = 3), the largest and the first weight have the same distribution as
    TorchJD's Random weights, and each mean weight is 1/k within 4 standard errors. The
    seeds are fixed, so the test is deterministic; the threshold p > 0.001 of the two-sample
    Kolmogorov–Smirnov test keeps it from failing by chance under another torch build
    (p is 0.61 and 0.013 here), while a wrong distribution (e.g. uniform logits) gives
    p < 1e-10."""
    torch = pytest.importorskip("torch")
    aggregation = pytest.importorskip("torchjd.aggregation")
    stats = pytest.importorskip("scipy.stats")
    k, draws = 3, 3000
    matrix = torch.eye(k, dtype=torch.float64)  # Random(I) returns the weights themselves
    torch.manual_seed(0)
    theirs = np.stack([aggregation.Random()(matrix).numpy() for _ in range(draws)])
    balancer = RLWBalancer(seed=0)
    ours = np.stack([balancer.weights(np.ones(k)) for _ in range(draws)])
    for statistic in (lambda w: w.max(axis=1), lambda w: w[:, 0]):
        assert stats.ks_2samp(statistic(ours), statistic(theirs)).pvalue > 1e-3
    standard_error = ours.std(axis=0) / np.sqrt(draws)
    assert np.all(np.abs(ours.mean(axis=0) - 1 / k) < 4 * standard_error)


@given(st.integers(1, 8), st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_weights_are_softmax_of_the_seeded_normal_draws(k, seed, calls):
    """Call t returns softmax of the t-th standard_normal(k) of default_rng(seed)."""
    balancer = RLWBalancer(seed=seed)
    reference = np.random.default_rng(seed)
    for _ in range(calls):
        weights = balancer.weights(np.ones(k))
        np.testing.assert_allclose(weights, _softmax(reference.standard_normal(k)), rtol=1e-13)
        assert_on_simplex(weights, k)
        assert np.all(weights > 0)


@given(st.integers(1, 6).flatmap(lambda k: st.lists(positive_losses(k), min_size=2, max_size=4)))
def test_losses_and_gram_are_ignored(sequence):
    """The weights depend on the seed and the call count only, not on the losses or a Gram."""
    k = len(sequence[0])
    a, b = RLWBalancer(seed=3), RLWBalancer(seed=3)
    for losses in sequence:
        np.testing.assert_array_equal(a.weights(losses, np.eye(k)), b.weights(np.ones(k)))


def test_every_call_draws_and_seeds_differ():
    """Two calls give different weights, and so do two seeds; the same seed repeats."""
    a = RLWBalancer()
    first, second = a.weights([1.0, 1.0, 1.0]), a.weights([1.0, 1.0, 1.0])
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(RLWBalancer().weights([1.0, 2.0, 3.0]), first)
    assert not np.array_equal(RLWBalancer(seed=1).weights([1.0, 1.0, 1.0]), first)


@pytest.mark.parametrize("split", [0, 1, 5])
def test_state_round_trip_continues_bit_identically(split):
    """A fresh RLWBalancer (other seed, no k yet) loading the state after `split` calls makes
    exactly the draws the original makes next."""
    original = RLWBalancer(seed=11)
    for _ in range(split):
        original.weights([1.0, 2.0, 3.0, 4.0])
    state = original.state_dict()
    restored = RLWBalancer(seed=99)
    restored.load_state_dict(state)
    assert restored.seed == 11 and restored.num_objectives == original.num_objectives
    for _ in range(5):
        np.testing.assert_array_equal(
            restored.weights([1.0, 1.0, 1.0, 1.0]), original.weights([1.0, 1.0, 1.0, 1.0])
        )


def test_state_holds_the_generator_as_plain_values():
    """The generator state is numpy's PCG64 bit_generator.state: plain strings and ints, and a
    snapshot that later draws do not change."""
    balancer = RLWBalancer(seed=2)
    balancer.weights([1.0, 1.0])
    state = balancer.state_dict()
    generator = state["generator"]
    assert generator["bit_generator"] == "PCG64"
    assert all(isinstance(v, int) for v in generator["state"].values())
    frozen = repr(state)
    balancer.weights([1.0, 1.0])
    assert repr(state) == frozen


def test_num_objectives_fixed_by_the_first_call_or_given():
    """k is None until the first call fixes it, unless given."""
    balancer = RLWBalancer()
    assert balancer.num_objectives is None
    balancer.weights([1.0, 2.0])
    assert balancer.num_objectives == 2
    with pytest.raises(ValueError, match=r"losses must have 2 entries"):
        balancer.weights([1.0, 2.0, 3.0])
    assert RLWBalancer(num_objectives=3).num_objectives == 3


def test_flags_and_repr():
    """RLW needs neither the Gram nor update(); its weights sum to 1; repr shows the settings."""
    assert not RLWBalancer.requires_gram and not RLWBalancer.requires_update
    assert RLWBalancer.weights_sum_to_one
    assert repr(RLWBalancer(seed=4)) == "RLWBalancer(seed=4, num_objectives=None)"


def _state_with(**changes):
    return {**RLWBalancer(num_objectives=2).state_dict(), **changes}


CASES = {
    "seed negative": (lambda: RLWBalancer(seed=-1), ValueError, r"seed must be ≥ 0, got -1"),
    "seed float": (lambda: RLWBalancer(seed=1.5), TypeError, r"seed must be an integer"),
    "seed bool": (lambda: RLWBalancer(seed=True), TypeError, r"seed must be an integer"),
    "nan loss": (
        lambda: RLWBalancer().weights([1.0, float("nan")]),
        ValueError,
        r"losses must be finite",
    ),
    "state generator not a dict": (
        lambda: RLWBalancer().load_state_dict(_state_with(generator=42)),
        ValueError,
        r"state\['generator'\] must be the bit_generator.state dict of a PCG64",
    ),
    "state generator of another kind": (
        lambda: RLWBalancer().load_state_dict(_state_with(generator=np.random.MT19937(0).state)),
        ValueError,
        r"state\['generator'\] must be the bit_generator.state dict of a PCG64",
    ),
    "state generator broken": (
        lambda: RLWBalancer().load_state_dict(
            _state_with(generator={"bit_generator": "PCG64", "state": {}})
        ),
        ValueError,
        r"state\['generator'\] is not a valid PCG64 state",
    ),
    "state for other k": (
        lambda: RLWBalancer(num_objectives=3).load_state_dict(_state_with()),
        ValueError,
        r"state is for 2 objectives, this RLWBalancer has 3",
    ),
}


test_bad_input_gets_a_clear_error = bad_input_test(CASES)


def test_errors_come_before_any_state_change():
    """A rejected call does not draw: the next draw is the one that was due."""
    a, b = RLWBalancer(), RLWBalancer()
    a.weights([1.0, 1.0])
    b.weights([1.0, 1.0])
    with pytest.raises(ValueError):
        a.weights([1.0, float("inf")])
    with pytest.raises(ValueError):
        a.load_state_dict(_state_with(generator=42))
    np.testing.assert_array_equal(a.weights([1.0, 1.0]), b.weights([1.0, 1.0]))
