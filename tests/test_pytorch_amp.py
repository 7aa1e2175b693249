"""moopt.pytorch under mixed precision: autocast losses of 16 bits, a float16 GradScaler.

The balancer sees the unscaled loss values and Gram; .grad is Σ w_i ∇L_i with unrounded
weights (times the scale under a scaler); a step whose gradient overflows leaves the balancer
as it was and makes the scaler skip the optimizer step."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moopt import (  # noqa: E402
    CoarseToFineBalancer,
    EqQPBalancer,
    MGDABalancer,
    TargetBalancer,
    WeightedSumBalancer,
)
from moopt.pytorch import balanced_backward, update_balancer  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BALANCERS = {
    "weighted-sum": lambda: WeightedSumBalancer([0.3, 0.7]),
    "coarse-to-fine": lambda: CoarseToFineBalancer(2),
    "mgda": lambda: MGDABalancer(),
    "eq-qp": lambda: EqQPBalancer(),
    "target eq-qp": lambda: TargetBalancer(EqQPBalancer(), [None, 0.5]),
    "target weighted-sum": lambda: TargetBalancer(WeightedSumBalancer([1.0, 1.0]), [0.5, None]),
}


class Net(torch.nn.Module):
    """A trunk producing features and two heads, float32 parameters."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh())
        self.head_a = torch.nn.Linear(16, 1)
        self.head_b = torch.nn.Linear(16, 2)

    def losses(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        features = self.trunk(x)
        a = self.head_a(features)
        b = self.head_b(features)
        return {"a": (a**2).mean(), "b": ((b - 1) ** 2).mean()}, features


def _reference(losses, params):
    """The per-objective gradients of the same (autocast) losses, flattened, in float64."""
    flat = []
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).double().reshape(-1)
                    for p, g in zip(params, grads, strict=True)
                ]
            )
        )
    return torch.stack(flat)


def _grad(params):
    return torch.cat([p.grad.double().reshape(-1) for p in params])


@pytest.mark.parametrize("name", sorted(BALANCERS))
@pytest.mark.parametrize("mode", ["parameters", "batched", "features"])
def test_bf16_autocast_on_the_cpu(name, mode):
    net = Net()
    params = list(net.parameters())
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, features = net.losses(x)
    assert {loss.dtype for loss in losses.values()} == {torch.bfloat16}  # autocast's losses
    reference = _reference(losses, params)
    balancer = BALANCERS[name]()
    step = balanced_backward(
        losses,
        balancer,
        params,
        features=features if mode == "features" else None,
        gram_mode="batched" if mode == "batched" else "sequential",
    )
    assert not step.skipped
    # the balancer saw the losses' own values, not rounded again
    assert step.losses.tolist() == [float(loss.detach()) for loss in losses.values()]
    expected = torch.as_tensor(step.weights) @ reference
    if step.gram is not None:  # exactly the Gram of the gradients of the autocast losses
        gram = reference[:, : sum(p.numel() for p in params)]
        if mode != "features":
            np.testing.assert_allclose(step.gram, (gram @ gram.T).numpy(), rtol=1e-5)
    if balancer.requires_gram and mode != "features":
        # per-objective float32 gradients, combined in float32: Σ w_i ∇L_i to float precision
        np.testing.assert_allclose(_grad(params), expected, rtol=1e-5, atol=1e-7)
    else:
        # one pass through the bf16 graph (the weighted sum, or Σ w_i ∂L_i/∂f into the trunk):
        # the gradient autocast gives, within bfloat16's precision of Σ w_i ∇L_i
        error = torch.linalg.vector_norm(_grad(params) - expected)
        assert error <= 0.02 * torch.linalg.vector_norm(expected)


def _overflowing_losses(net, x):
    """Finite losses of the usual size whose gradient (≈ 1e35), scaled, overflows float32."""
    losses, features = net.losses(x)
    losses["b"] = losses["b"] + 1e-3 * torch.sin(1e38 * net.head_b.bias).sum()
    return losses, features


@pytest.mark.parametrize("name", sorted(BALANCERS))
@pytest.mark.parametrize("features", [False, True])
def test_grad_scaler_unscales_what_the_balancer_sees(name, features):
    net = Net()
    params = list(net.parameters())
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(2))
    plain_balancer, scaled_balancer = BALANCERS[name](), BALANCERS[name]()
    losses, feats = net.losses(x)
    plain = balanced_backward(losses, plain_balancer, params, features=feats if features else None)
    unscaled = [p.grad.clone() for p in params]
    net.zero_grad()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    losses, feats = net.losses(x)
    scaled = balanced_backward(
        losses, scaled_balancer, params, features=feats if features else None, grad_scaler=scaler
    )
    assert not scaled.skipped
    np.testing.assert_array_equal(scaled.losses, plain.losses)
    if plain.gram is not None:
        np.testing.assert_allclose(scaled.gram, plain.gram, rtol=1e-6)
    np.testing.assert_allclose(scaled.weights, plain.weights, rtol=1e-6)
    for param, expected in zip(params, unscaled, strict=True):  # .grad holds s·Σ w_i ∇L_i
        torch.testing.assert_close(param.grad / 2.0**10, expected, rtol=1e-5, atol=1e-7)
    optimizer = torch.optim.SGD(params, lr=0.1)
    scaler.unscale_(optimizer)
    for param, expected in zip(params, unscaled, strict=True):
        torch.testing.assert_close(param.grad, expected, rtol=1e-5, atol=1e-7)


def _state(balancer):
    return copy.deepcopy(balancer.state_dict())


def _same_state(left, right):
    assert left.keys() == right.keys()
    for key in left:
        if isinstance(left[key], dict):
            _same_state(left[key], right[key])
        else:
            np.testing.assert_array_equal(
                np.asarray(left[key], dtype=object), np.asarray(right[key], dtype=object)
            )


@pytest.mark.parametrize("name", sorted(BALANCERS))
@pytest.mark.parametrize("features", [False, True])
def test_an_overflowing_step_is_skipped_and_does_not_update_the_balancer(name, features):
    net = Net()
    params = list(net.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(3))
    balancer = BALANCERS[name]()
    losses, feats = net.losses(x)  # one ordinary step first: stateful balancers have state
    balanced_backward(losses, balancer, params, features=feats if features else None)
    update_balancer(balancer, lambda: net.losses(x)[0])
    net.zero_grad()
    before, weights_before = _state(balancer), [p.detach().clone() for p in params]

    losses, feats = _overflowing_losses(net, x)
    step = balanced_backward(
        losses, balancer, params, features=feats if features else None, grad_scaler=scaler
    )
    assert step.skipped and np.isnan(step.weights).all()
    assert np.isfinite(step.losses).all()
    _same_state(_state(balancer), before)
    called = []
    assert update_balancer(balancer, lambda: called.append(1), after=step) is None
    assert not called
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    for param, value in zip(params, weights_before, strict=True):
        assert torch.equal(param.detach(), value)  # the optimizer step was skipped
    assert scaler.get_scale() == scale / 2


def test_a_disabled_scaler_changes_nothing():
    net = Net()
    params = list(net.parameters())
    x = torch.randn(8, 6)
    losses, _ = net.losses(x)
    plain = balanced_backward(losses, EqQPBalancer(), params)
    expected = [p.grad.clone() for p in params]
    net.zero_grad()
    losses, _ = net.losses(x)
    step = balanced_backward(
        losses, EqQPBalancer(), params, grad_scaler=torch.amp.GradScaler("cpu", enabled=False)
    )
    np.testing.assert_array_equal(step.gram, plain.gram)
    for param, value in zip(params, expected, strict=True):
        assert torch.equal(param.grad, value)


@CUDA
@pytest.mark.parametrize("name", ["coarse-to-fine", "eq-qp", "target weighted-sum"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_autocast_and_grad_scaler(name, dtype):
    """On a GPU: float16 with a scaler and bfloat16 without; the balancer sees the values and
    Gram of the autocast losses, unscaled; an overflow is skipped."""
    net = Net().cuda()
    params = list(net.parameters())
    x = torch.randn(64, 6, device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == "float16")
    optimizer = torch.optim.Adam(params, lr=1e-3)
    balancer = BALANCERS[name]()
    with torch.autocast("cuda", dtype=getattr(torch, dtype)):
        losses, _ = net.losses(x)
    reference = _reference(losses, params)
    step = balanced_backward(losses, balancer, params, grad_scaler=scaler)
    assert not step.skipped
    assert step.losses.tolist() == [float(loss.detach()) for loss in losses.values()]
    if step.gram is not None:
        np.testing.assert_allclose(step.gram, (reference @ reference.T).cpu().numpy(), rtol=1e-4)
    scaler.unscale_(optimizer)
    expected = torch.as_tensor(step.weights, device="cuda") @ reference
    torch.testing.assert_close(_grad(params), expected, rtol=1e-4, atol=1e-6)
    scaler.step(optimizer)
    scaler.update()
    if dtype == "float16":
        optimizer.zero_grad()
        before = _state(balancer)
        losses, _ = _overflowing_losses(net, x)
        step = balanced_backward(losses, balancer, params, grad_scaler=scaler)
        assert step.skipped
        _same_state(_state(balancer), before)
