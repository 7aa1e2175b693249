"""moopt.pytorch.balanced_backward: .grad = Σ w_i ∇L_i exactly, in every mode."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moopt import (  # noqa: E402
    Balancer,
    CoarseToFineBalancer,
    EqQPBalancer,
    MGDABalancer,
    WeightedSumBalancer,
)
from moopt.pytorch import NonFiniteError, balanced_backward, update_balancer  # noqa: E402

BALANCERS = {
    "weighted-sum": lambda: WeightedSumBalancer([1.0, 0.3]),
    "mgda": lambda: MGDABalancer(),
    "eq-qp": lambda: EqQPBalancer(),
    "coarse-to-fine": lambda: CoarseToFineBalancer(2),
}


class TwoHeads(torch.nn.Module):
    """A trunk producing shared features, two heads (one per objective), an unused layer."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh()).to(dtype)
        self.head_a = torch.nn.Linear(5, 1).to(dtype)
        self.head_b = torch.nn.Sequential(
            torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
        ).to(dtype)
        self.unused = torch.nn.Linear(3, 3).to(dtype)

    def losses(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        features = self.trunk(x)
        a = (self.head_a(features) - 1.0).pow(2).mean() + 0.1
        b = self.head_b(features).pow(2).sum(dim=1).mean() + features.abs().mean()
        return {"a": a, "b": b}, features


def _data(dtype=torch.float64):
    return torch.randn(16, 6, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _reference(model: TwoHeads, x: torch.Tensor, weights: np.ndarray) -> list[torch.Tensor | None]:
    """Σ w_i ∇L_i with plain autograd, one objective at a time (None if none reaches it)."""
    losses, _ = model.losses(x)
    params = list(model.parameters())
    per_objective = [
        torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        for loss in losses.values()
    ]
    out = []
    for j in range(len(params)):
        terms = [
            float(w) * g[j] for w, g in zip(weights, per_objective, strict=True) if g[j] is not None
        ]
        out.append(sum(terms[1:], terms[0]) if terms else None)
    return out


def _parameter_gram(model: TwoHeads, x: torch.Tensor) -> np.ndarray:
    losses, _ = model.losses(x)
    rows = []
    for loss in losses.values():
        grads = torch.autograd.grad(
            loss, list(model.parameters()), retain_graph=True, allow_unused=True
        )
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for p, g in zip(model.parameters(), grads, strict=True)
                ]
            )
        )
    g = torch.stack(rows).double()
    return (g @ g.T).numpy()


def _assert_grads(
    model: TwoHeads, expected: list[torch.Tensor | None], atol: float = 1e-10
) -> None:
    for (name, param), want in zip(model.named_parameters(), expected, strict=True):
        if want is None:
            assert param.grad is None, name
        else:
            assert param.grad is not None, name
            torch.testing.assert_close(param.grad, want, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("name", sorted(BALANCERS))
@pytest.mark.parametrize("mode", ["sequential", "batched", "features"])
def test_grad_equals_weighted_sum_of_gradients(name, mode):
    """.grad equals Σ w_i ∇L_i from plain autograd to 1e-10 (float64), for every balancer, in
    sequential, batched and features modes; the unused layer keeps .grad None."""
    model = TwoHeads()
    x = _data()
    losses, features = model.losses(x)
    step = balanced_backward(
        losses,
        BALANCERS[name](),
        model.parameters(),
        features=features if mode == "features" else None,
        gram_mode="batched" if mode == "batched" else "sequential",
    )
    assert step.names == ("a", "b")
    np.testing.assert_allclose(step.losses, [v.item() for v in losses.values()], rtol=1e-15)
    _assert_grads(model, _reference(model, x, step.weights))


@pytest.mark.parametrize("gram_mode", ["sequential", "batched"])
def test_gram_is_the_parameter_gram(gram_mode):
    """Without features, BalancedStep.gram is the Gram of the full parameter gradients."""
    model = TwoHeads()
    x = _data()
    losses, _ = model.losses(x)
    step = balanced_backward(losses, MGDABalancer(), model.parameters(), gram_mode=gram_mode)
    np.testing.assert_allclose(step.gram, _parameter_gram(model, x), rtol=1e-12)


@pytest.mark.parametrize("gram_mode", ["sequential", "batched"])
def test_gram_in_features_mode_is_the_feature_gram(gram_mode):
    """In features mode the Gram is that of ∂L_i/∂features, and it is what the balancer got."""
    model = TwoHeads()
    x = _data()
    losses, features = model.losses(x)
    expected_rows = [
        torch.autograd.grad(loss, features, retain_graph=True)[0].reshape(-1)
        for loss in losses.values()
    ]
    g = torch.stack(expected_rows)
    seen = {}

    class Recording(EqQPBalancer):
        def _weights(self, losses, gram):
            seen["gram"] = gram
            return super()._weights(losses, gram)

    step = balanced_backward(
        losses, Recording(), model.parameters(), features=features, gram_mode=gram_mode
    )
    np.testing.assert_allclose(step.gram, (g @ g.T).numpy(), rtol=1e-12)
    np.testing.assert_array_equal(step.gram, seen["gram"])


def test_weighted_sum_is_bit_identical_to_plain_backward():
    """Through the glue, weighted sum [1, λ'] gives exactly the .grad of
    (L_a + λ' L_b).backward()."""
    model, x = TwoHeads(), _data()
    losses, _ = model.losses(x)
    (losses["a"] + 0.3 * losses["b"]).backward()
    expected = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    losses, _ = model.losses(x)
    balanced_backward(losses, WeightedSumBalancer([1.0, 0.3]), model.parameters())
    for param, want in zip(model.parameters(), expected, strict=True):
        if want is None:
            assert param.grad is None
        else:
            assert torch.equal(param.grad, want)


@pytest.mark.parametrize("mode", ["sequential", "batched", "features"])
def test_accumulates_onto_existing_grad(mode):
    """Like Tensor.backward, the balanced gradient is added to an existing .grad."""
    model, x = TwoHeads(), _data()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    losses, features = model.losses(x)
    step = balanced_backward(
        losses,
        EqQPBalancer(),
        model.parameters(),
        features=features if mode == "features" else None,
        gram_mode="batched" if mode == "batched" else "sequential",
    )
    expected = [
        torch.full_like(p, 0.5) if g is None else g + 0.5
        for p, g in zip(model.parameters(), _reference(model, x, step.weights), strict=True)
    ]
    _assert_grads(model, expected)


def test_only_the_given_params_are_filled():
    """Parameters not in params keep their .grad (None), as with backward(inputs=...)."""
    model, x = TwoHeads(), _data()
    losses, features = model.losses(x)
    balanced_backward(losses, EqQPBalancer(), model.head_b.parameters(), features=features)
    assert all(p.grad is None for p in model.trunk.parameters())
    assert all(p.grad is None for p in model.head_a.parameters())
    assert all(p.grad is not None for p in model.head_b.parameters())


def test_objective_that_reaches_only_some_parameters():
    """head_a's parameters get w_a ∇L_a only: objective b contributes zero, not an error."""
    model, x = TwoHeads(), _data()
    losses, _ = model.losses(x)
    step = balanced_backward(losses, MGDABalancer(), model.parameters())
    grad_a = torch.autograd.grad(model.losses(x)[0]["a"], model.head_a.weight)[0]
    torch.testing.assert_close(
        model.head_a.weight.grad, step.weights[0] * grad_a, rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["sequential", "features"])
def test_low_precision_parameters(dtype, mode):
    """float32 and bfloat16 parameters: .grad has the parameter's dtype and matches the float64
    computation to the precision of the dtype; the Gram is accumulated in float32."""
    model, x = TwoHeads(dtype), _data(dtype)
    losses, features = model.losses(x)
    step = balanced_backward(
        losses,
        EqQPBalancer(),
        model.parameters(),
        features=features if mode == "features" else None,
    )
    assert step.gram.dtype == np.float64
    reference = _reference(model, x, step.weights)
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    for param, want in zip(model.parameters(), reference, strict=True):
        if want is None:
            continue
        assert param.grad.dtype == dtype
        torch.testing.assert_close(param.grad.float(), want.float(), rtol=tolerance, atol=tolerance)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["sequential", "batched", "features"])
def test_cuda(mode):
    """On CUDA the result equals the CPU computation (float64)."""
    model, x = TwoHeads().cuda(), _data().cuda()
    losses, features = model.losses(x)
    step = balanced_backward(
        losses,
        EqQPBalancer(),
        model.parameters(),
        features=features if mode == "features" else None,
        gram_mode="batched" if mode == "batched" else "sequential",
    )
    _assert_grads(model, _reference(model, x, step.weights))


def test_update_balancer_reevaluates_without_gradients():
    """update_balancer runs the closure under no_grad and feeds the coarse-to-fine update."""
    model, x = TwoHeads(), _data()
    balancer = CoarseToFineBalancer(2)
    losses, _ = model.losses(x)
    balanced_backward(losses, balancer, model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    grad_enabled = []

    def closure():
        grad_enabled.append(torch.is_grad_enabled())
        return model.losses(x)[0]

    new = update_balancer(balancer, closure)
    assert grad_enabled == [False]
    np.testing.assert_allclose(new, [v.item() for v in model.losses(x)[0].values()], rtol=1e-12)
    assert not np.array_equal(balancer.logits, np.zeros(2))


def test_update_balancer_every_n_steps():
    """With every=n the closure runs only when step % n == 0."""
    balancer = CoarseToFineBalancer(2)
    calls = []

    def closure():
        calls.append(1)
        return [torch.tensor(1.0), torch.tensor(2.0)]

    for step in range(8):
        balancer.weights([1.5, 2.5])
        update_balancer(balancer, closure, step=step, every=4)
    assert len(calls) == 2


def test_update_balancer_skips_stateless_balancers():
    """Balancers that do not learn from updates never pay for the extra forward."""

    def closure():
        raise AssertionError("must not be called")

    for balancer in (WeightedSumBalancer([1, 1]), MGDABalancer(), EqQPBalancer()):
        assert update_balancer(balancer, closure) is None


def _scalar(value=1.0, requires_grad=True):
    return torch.tensor(value, dtype=torch.float64, requires_grad=requires_grad)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda p: balanced_backward([], EqQPBalancer(), [p]), ValueError, r"losses is empty"),
        (
            lambda p: balanced_backward([p * 1, p * 2], EqQPBalancer(), []),
            ValueError,
            r"params is empty",
        ),
        (
            lambda p: balanced_backward({"rate": p.expand(3) * 1, "d": p * 1}, EqQPBalancer(), [p]),
            ValueError,
            r"loss 'rate' must be a scalar tensor, got shape \(3,\)",
        ),
        (
            lambda p: balanced_backward(
                {"rate": p * 1, "distortion": _scalar(2.0, False)}, EqQPBalancer(), [p]
            ),
            ValueError,
            r"loss 'distortion' does not require grad",
        ),
        (
            lambda p: balanced_backward(
                {"rate": p * 1, "distortion": p * float("nan")}, EqQPBalancer(), [p]
            ),
            ValueError,
            r"loss 'distortion' is nan: the objective is not finite",
        ),
        (
            lambda p: balanced_backward(
                [p * float("inf"), p * 1], WeightedSumBalancer([1, 1]), [p]
            ),
            ValueError,
            r"loss 'objective 0' is inf",
        ),
        (lambda p: balanced_backward(p * 1, EqQPBalancer(), [p]), TypeError, r"got one tensor"),
        (
            lambda p: balanced_backward([p * 1, 2.0], EqQPBalancer(), [p]),
            TypeError,
            r"loss 'objective 1' must be a torch.Tensor, got float",
        ),
        (
            lambda p: balanced_backward([p * 1, p * 2], EqQPBalancer(), [p], gram_mode="vmap"),
            ValueError,
            r"gram_mode must be one of \('sequential', 'batched'\), got 'vmap'",
        ),
        (
            lambda p: balanced_backward([p * 1, p * 2], EqQPBalancer(), [p], features=p.detach()),
            ValueError,
            r"features\[0\] has no autograd history",
        ),
        (
            lambda p: balanced_backward([p * 1, p * 2], EqQPBalancer(), [_scalar(1.0, False)]),
            ValueError,
            r"params\[0\] \(shape \(\)\) does not require grad",
        ),
        (
            lambda p: update_balancer(CoarseToFineBalancer(2), lambda: [p, p], every=2),
            ValueError,
            r"step is required when every > 1",
        ),
        (
            lambda p: update_balancer(CoarseToFineBalancer(2), lambda: [p, p], step=1, every=0),
            ValueError,
            r"every must be an integer ≥ 1, got 0",
        ),
    ],
)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(_scalar(1.5))


def test_error_when_a_parameter_is_used_on_both_sides_of_the_features():
    """A weight used before and after the features cannot be split into trunk and head."""
    w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    x = torch.tensor(3.0, dtype=torch.float64)
    features = w * x
    losses = [features * w, features**2]
    with pytest.raises(ValueError, match=r"used both before and after the features"):
        balanced_backward(losses, EqQPBalancer(), [w], features=features)


@pytest.mark.parametrize("gram_mode", ["sequential", "batched"])
def test_non_finite_gradient_names_the_objective(gram_mode):
    """An ∞ gradient (finite losses) is caught from the Gram's diagonal and named.

    (The batched pass multiplies the ∞ by the other objective's zero and names both.)
    """
    p = _scalar(0.0)
    losses = {"rate": p * 2 + 1.0, "distortion": torch.sqrt(p) + 1.0}  # d sqrt(p)/dp = ∞ at 0
    named = "'distortion'" if gram_mode == "sequential" else "'rate' and 'distortion'"
    with pytest.raises(NonFiniteError, match=f"the gradient of {named} is not finite"):
        balanced_backward(losses, EqQPBalancer(), [p], gram_mode=gram_mode)
    assert p.grad is None  # nothing written


def test_non_finite_gradient_in_features_mode():
    p = _scalar(0.0)
    feature = p * 1.0
    losses = {"rate": feature * 2 + 1.0, "distortion": torch.sqrt(feature) + 1.0}
    with pytest.raises(NonFiniteError, match=r"the gradient of 'distortion' is not finite"):
        balanced_backward(losses, MGDABalancer(), [p], features=feature)


def test_balancer_is_any_balancer():
    """A user-defined balancer works through the same glue."""

    class Half(Balancer):
        requires_gram = False

        def _weights(self, losses, gram):
            return np.full(len(losses), 0.5)

        def _config(self):
            return {}

        def _load_state(self, state):
            pass

    model, x = TwoHeads(), _data()
    losses, _ = model.losses(x)
    step = balanced_backward(losses, Half(), model.parameters())
    _assert_grads(model, _reference(model, x, np.array([0.5, 0.5])))
    np.testing.assert_array_equal(step.weights, [0.5, 0.5])


@pytest.mark.parametrize("gram_mode", ["sequential", "batched"])
def test_aliased_and_expanded_gradients(gram_mode):
    """Autograd may hand back one tensor for two inputs ((p + q).sum()) or an expanded view
    (p.sum()); the result is still exactly Σ w_i ∇L_i and the inputs are not corrupted."""
    p = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([0.3, 0.1, -1.0], dtype=torch.float64, requires_grad=True)
    losses = [(p + q).sum() + 10.0, (p * q).sum() + p.pow(2).sum() + 10.0]
    step = balanced_backward(losses, MGDABalancer("l2"), [p, q, p], gram_mode=gram_mode)
    w = step.weights
    expected_p = w[0] * torch.ones(3, dtype=torch.float64) + w[1] * (q.detach() + 2 * p.detach())
    expected_q = w[0] * torch.ones(3, dtype=torch.float64) + w[1] * p.detach()
    torch.testing.assert_close(p.grad, expected_p, rtol=0, atol=1e-12)
    torch.testing.assert_close(q.grad, expected_q, rtol=0, atol=1e-12)
