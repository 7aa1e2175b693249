"""The Balancer contract, checked on every balancer: shapes, sums, state dicts, array-likes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from properties import assert_permutation_equivariant, assert_valid_weights
from strategies import gradient_cases, permutation_seeds, random_permutation

from moopt import (
    AlignedMTLBalancer,
    Balancer,
    CAGradBalancer,
    CoarseToFineBalancer,
    ConFIGBalancer,
    DualProjBalancer,
    DWABalancer,
    EqQPBalancer,
    FairGradBalancer,
    GradNormBalancer,
    GradVacBalancer,
    IMTLGBalancer,
    MGDABalancer,
    NashMTLBalancer,
    PCGradBalancer,
    RLWBalancer,
    STCHBalancer,
    TargetBalancer,
    UncertaintyBalancer,
    UPGradBalancer,
    WeightedSumBalancer,
)

K = 3

FACTORIES = {
    "weighted-sum": lambda: WeightedSumBalancer([1.0, 0.5, 2.0]),
    "mgda": lambda: MGDABalancer(),
    "mgda-loss": lambda: MGDABalancer("loss"),
    "mgda-l2": lambda: MGDABalancer("l2"),
    "eq-qp": lambda: EqQPBalancer(),
    "eq-qp-raw": lambda: EqQPBalancer(log_losses=False),
    "coarse-to-fine-adam": lambda: CoarseToFineBalancer(K),
    "coarse-to-fine-sgd": lambda: CoarseToFineBalancer(K, logit_lr=0.1, logit_optimizer="sgd"),
    "target-weighted-sum": lambda: TargetBalancer(WeightedSumBalancer([1, 1, 1]), [None, 1, None]),
    "target-coarse-to-fine": lambda: TargetBalancer(CoarseToFineBalancer(K), [1.0, None, None]),
    "target-eq-qp": lambda: TargetBalancer(EqQPBalancer(), [None, None, 2.0]),
    "target-mgda": lambda: TargetBalancer(MGDABalancer("loss"), {0: 1.0, 2: 1.5}, num_objectives=K),
    "dwa": lambda: DWABalancer(),
    "dwa-t1": lambda: DWABalancer(temperature=1.0, num_objectives=K),
    "uncertainty": lambda: UncertaintyBalancer(),
    "uncertainty-raw": lambda: UncertaintyBalancer(ema_decay=0.0),
    "rlw": lambda: RLWBalancer(),
    "rlw-seed": lambda: RLWBalancer(seed=7, num_objectives=K),
    "stch": lambda: STCHBalancer(),
    "stch-running-min": lambda: STCHBalancer([1.0, 2.0, 0.5], mu=0.5, ideal_point="running_min"),
    "target-dwa": lambda: TargetBalancer(DWABalancer(), [None, 1.0, None]),
    "target-uncertainty": lambda: TargetBalancer(UncertaintyBalancer(), [1.0, None, None]),
    "target-stch": lambda: TargetBalancer(STCHBalancer(), {1: 1.0}, num_objectives=K),
    "upgrad": lambda: UPGradBalancer(),
    "upgrad-pref": lambda: UPGradBalancer([0.5, 0.2, 0.3]),
    "dualproj": lambda: DualProjBalancer(),
    "pcgrad": lambda: PCGradBalancer(seed=0),
    "gradvac": lambda: GradVacBalancer(seed=0),
    "gradvac-beta": lambda: GradVacBalancer(beta=0.01, seed=1),
    "config": lambda: ConFIGBalancer(),
    "cagrad": lambda: CAGradBalancer(),
    "cagrad-c0.9": lambda: CAGradBalancer(c=0.9),
    "nash-mtl": lambda: NashMTLBalancer(),
    "nash-mtl-unscaled": lambda: NashMTLBalancer(max_norm=0.0),
    "imtl-g": lambda: IMTLGBalancer(),
    "aligned-mtl": lambda: AlignedMTLBalancer(),
    "aligned-mtl-pref": lambda: AlignedMTLBalancer([0.5, 0.3, 0.2], scale_mode="median"),
    "fairgrad": lambda: FairGradBalancer(),
    "fairgrad-alpha2": lambda: FairGradBalancer(alpha=2.0),
    "gradnorm": lambda: GradNormBalancer(),
    "gradnorm-k": lambda: GradNormBalancer(alpha=0.5, lr=0.1, num_objectives=K),
    "target-nash-mtl": lambda: TargetBalancer(NashMTLBalancer(), [None, 1.0, None]),
}
balancer_names = pytest.mark.parametrize("name", sorted(FACTORIES))


def _trajectory(seed: int, steps: int = 6) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A reproducible sequence of (losses, gram, new_losses) for K objectives."""
    rng = np.random.default_rng(seed)
    out = []
    losses = rng.uniform(0.5, 5.0, K)
    for _ in range(steps):
        g = rng.standard_normal((K, 5))
        new_losses = losses * rng.uniform(0.8, 1.05, K)
        out.append((losses, g @ g.T, new_losses))
        losses = new_losses
    return out


def _run(balancer: Balancer, trajectory) -> list[np.ndarray]:
    weights = []
    for losses, gram, new_losses in trajectory:
        weights.append(balancer.weights(losses, gram))
        balancer.update(new_losses)
    return weights


def _assert_plain(value) -> None:
    """State dicts hold only plain Python and NumPy values (no objects of ours)."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            _assert_plain(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _assert_plain(item)
    else:
        assert value is None or isinstance(value, (bool, int, float, str, np.ndarray)), value


@balancer_names
def test_weights_are_float64_and_sum_to_one(name):
    """weights() returns float64 of shape (k,), summing to 1 where the class declares it."""
    balancer = FACTORIES[name]()
    for losses, gram, new_losses in _trajectory(0):
        weights = balancer.weights(losses, gram)
        assert_valid_weights(weights, K, sums_to_one=balancer.weights_sum_to_one)
        balancer.update(new_losses)


@balancer_names
@pytest.mark.parametrize("kind", [list, tuple, np.asarray, lambda x: np.asarray(x, np.float32)])
def test_accepts_any_array_like(name, kind):
    """Lists, tuples and arrays of any real dtype give the same weights as float64 arrays."""
    losses, gram, new_losses = _trajectory(1)[0]
    losses32, gram32 = losses.astype(np.float32), gram.astype(np.float32)
    expected = FACTORIES[name]().weights(losses32.astype(float), gram32.astype(float))
    balancer = FACTORIES[name]()
    as_kind = (lambda a: kind(a.tolist())) if kind in (list, tuple) else kind
    gram_arg = [list(row) for row in gram32.tolist()] if kind in (list, tuple) else kind(gram32)
    actual = balancer.weights(as_kind(losses32), gram_arg)
    np.testing.assert_allclose(actual, expected, rtol=1e-12)
    balancer.update(as_kind(new_losses))


@balancer_names
def test_state_dict_round_trip_continues_exactly(name):
    """A balancer restored from state_dict() mid-run continues bit-identically to the original."""
    trajectory = _trajectory(2, steps=8)
    original = FACTORIES[name]()
    _run(original, trajectory[:4])
    state = original.state_dict()
    _assert_plain(state)
    restored = FACTORIES[name]()
    restored.load_state_dict(state)
    for expected, actual in zip(
        _run(original, trajectory[4:]), _run(restored, trajectory[4:]), strict=True
    ):
        np.testing.assert_array_equal(actual, expected)


@balancer_names
def test_state_dict_is_a_snapshot(name):
    """Later steps do not change a state dict already taken."""
    trajectory = _trajectory(3)
    balancer = FACTORIES[name]()
    _run(balancer, trajectory[:2])
    state = balancer.state_dict()
    frozen = repr(state)
    _run(balancer, trajectory[2:])
    assert repr(state) == frozen


@balancer_names
def test_state_dict_names_the_balancer(name):
    """The state dict says which balancer it is from, so another cannot load it by mistake."""
    state = FACTORIES[name]().state_dict()
    assert state["balancer"] == type(FACTORIES[name]()).__name__


@given(gradient_cases(min_k=K, max_k=K), permutation_seeds)
def test_gram_balancers_are_permutation_equivariant(case, seed):
    """For the deterministic Gram-based balancers, relabelling the objectives (losses and Gram)
    relabels the weights."""
    losses = np.random.default_rng(seed).uniform(0.5, 5.0, K)
    perm = random_permutation(K, seed)
    names = ("mgda", "mgda-loss", "mgda-l2", "eq-qp", "eq-qp-raw", "upgrad", "dualproj", "config")
    for name in names:
        balancer = FACTORIES[name]()
        assert_permutation_equivariant(balancer.weights, losses, case.gram, perm, rtol=1e-7)


def test_repr_shows_the_configuration():
    """repr() shows the settings a balancer was built with."""
    assert repr(MGDABalancer("l2")) == "MGDABalancer(normalization='l2', loss_floor=0.0)"
    assert "logit_lr=0.025" in repr(CoarseToFineBalancer(2))
    assert repr(WeightedSumBalancer([1, 2])) == "WeightedSumBalancer(weights=[1.0, 2.0])"


@pytest.mark.parametrize("name", ["weighted-sum", "mgda", "eq-qp", "upgrad", "dualproj", "config"])
def test_update_does_not_change_stateless_balancers(name):
    """update() is a no-op for stateless balancers: the next weights are the same."""
    losses, gram, new_losses = _trajectory(4)[0]
    balancer = FACTORIES[name]()
    before = balancer.weights(losses, gram)
    balancer.update(new_losses)
    np.testing.assert_array_equal(balancer.weights(losses, gram), before)


def test_declared_sums():
    """Which balancers declare weights that sum to 1 (the contract test holds them to it)."""
    assert not WeightedSumBalancer.weights_sum_to_one
    assert not TargetBalancer(EqQPBalancer(), [1.0, None]).weights_sum_to_one
    for name in ("mgda", "eq-qp", "coarse-to-fine-adam"):
        assert FACTORIES[name]().weights_sum_to_one
    for name in ("upgrad", "dualproj", "pcgrad", "gradvac", "config"):  # TorchJD's scales
        assert not FACTORIES[name]().weights_sum_to_one


def test_requires_gram_flags():
    """Only the Gram-based methods ask for the Gram (and so for k gradients)."""
    assert MGDABalancer.requires_gram and EqQPBalancer.requires_gram
    for balancer in (UPGradBalancer, DualProjBalancer, PCGradBalancer, GradVacBalancer):
        assert balancer.requires_gram and not balancer.requires_update
    assert ConFIGBalancer.requires_gram and not ConFIGBalancer.requires_update
    assert not WeightedSumBalancer.requires_gram
    assert not CoarseToFineBalancer.requires_gram
