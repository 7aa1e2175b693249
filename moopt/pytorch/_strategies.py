"""The three ways from losses to ``.grad``, by whether and where the balancer needs a Gram.

Each reads in order: (per-objective gradients → Gram →) weights → ``Σ_i w_i ∇L_i`` →
``.grad``. A final pass (the weighted loss; in features mode, the trunk) writes ``.grad``
directly with ``torch.autograd.backward`` when there is one process and no scaler; otherwise
its gradients are averaged over the processes and checked for overflow before they are
accumulated.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from moopt.pytorch._collectives import reduce_rows
from moopt.pytorch._combine import accumulate, accumulate_all, combine
from moopt.pytorch._gram import check_gram, gram_matrix, per_objective_gradients
from moopt.pytorch._graph import split_at_features
from moopt.pytorch._step import PreparedStep
from moopt.pytorch._types import BalancedStep
from moopt.validation import FloatArray


def no_gram_backward(step: PreparedStep) -> BalancedStep:
    """Back-propagate ``Σ_i w_i L_i`` once, for a balancer that needs no Gram."""
    weights = step.balancer.weights(step.values)
    losses = step.losses
    total = sum(
        (loss * float(w) for loss, w in zip(losses, weights, strict=True)),
        start=torch.zeros((), dtype=losses[0].dtype, device=losses[0].device),
    )
    if step.world == 1 and not step.scaling.active:
        torch.autograd.backward(total, inputs=step.params, retain_graph=step.retain_graph)
        return BalancedStep(weights, step.values, None, step.names)
    local: list[torch.Tensor | None] = list(
        torch.autograd.grad(total, step.params, retain_graph=step.retain_graph, allow_unused=True)
    )
    local = reduce_rows([local], step.world)[0]
    if step.scaling.overflowed(local):
        return _skipped(step, None)
    accumulate_all(step.params, local)
    return BalancedStep(weights, step.values, None, step.names)


def parameter_gram_backward(step: PreparedStep) -> BalancedStep:
    """Weigh the objectives by the Gram of their parameter gradients, then combine those."""
    params = step.params
    grads = per_objective_gradients(step.losses, params, step.gram_mode, step.retain_graph)
    grads = reduce_rows(grads, step.world)  # the Gram of the *global* gradients
    gram = gram_matrix(grads, len(params)) / step.scaling.scale**2
    if step.scaling.gram_overflowed(gram):
        return _skipped(step, gram)
    check_gram(step.names, gram)
    weights = step.balancer.weights(step.values, gram)
    combined = [combine(grads, weights, j) for j in range(len(params))]
    if step.scaling.overflowed(combined):
        return _skipped(step, gram)
    accumulate_all(params, combined)
    return BalancedStep(weights, step.values, gram, step.names)


def feature_gram_backward(step: PreparedStep, features: list[torch.Tensor]) -> BalancedStep:
    """Weigh the objectives by the Gram of their feature gradients; back-propagate the trunk once.

    The k per-objective passes stop at the features, collecting the heads' gradients on the
    way; the weighted feature gradient then goes through the trunk in one pass.
    """
    trunk, heads = split_at_features(step.losses, features, step.params)
    inputs = features + heads
    # the trunk is not traversed here, so its buffers survive for the final pass
    grads = per_objective_gradients(step.losses, inputs, step.gram_mode, retain_graph=True)
    count = len(features)
    gram = gram_matrix([row[:count] for row in grads], count, disjoint_world=step.world)
    gram = gram / step.scaling.scale**2
    if step.scaling.gram_overflowed(gram):
        return _skipped(step, gram)
    check_gram(step.names, gram)
    weights = step.balancer.weights(step.values, gram)
    head_grads = [combine(grads, weights, j) for j in range(count, len(inputs))]
    feature_grads = [combine(grads, weights, j) for j in range(count)]
    trunk_grads = _trunk_backward(step, trunk, features, feature_grads)
    # heads (and, distributed, the trunk) averaged over the processes in one all-reduce
    reduced = reduce_rows([head_grads + trunk_grads], step.world)[0]
    if step.scaling.overflowed(reduced):
        return _skipped(step, gram)
    accumulate_all(heads + trunk[: len(trunk_grads)], reduced)
    return BalancedStep(weights, step.values, gram, step.names)


def _trunk_backward(
    step: PreparedStep,
    trunk: list[torch.Tensor],
    features: list[torch.Tensor],
    feature_grads: list[torch.Tensor | None],
) -> list[torch.Tensor | None]:
    """Back-propagate the weighted feature gradient ``Σ_i w_i ∂L_i/∂f`` through the trunk.

    Returns the trunk's gradients when they must still be averaged or checked; otherwise
    they went straight into ``.grad`` (or no trunk parameter is reached) and the list is
    empty.
    """
    reached = [(f, g) for f, g in zip(features, feature_grads, strict=True) if g is not None]
    if not (trunk and reached):
        return []
    outputs, gradients = [f for f, _ in reached], [g for _, g in reached]
    if step.world == 1 and not step.scaling.active:
        torch.autograd.backward(
            outputs, grad_tensors=gradients, inputs=trunk, retain_graph=step.retain_graph
        )
        return []
    return list(
        torch.autograd.grad(
            outputs,
            trunk,
            grad_outputs=gradients,
            retain_graph=step.retain_graph,
            allow_unused=True,
        )
    )


def _skipped(step: PreparedStep, gram: FloatArray | None) -> BalancedStep:
    """Skip the step: the balancer as it was, ∞ in every ``.grad`` for the scaler to see."""
    if step.scaling.balancer_state is not None:
        step.balancer.load_state_dict(step.scaling.balancer_state)
    for param in step.params:
        accumulate(param, torch.full_like(param, math.inf))
    nan_weights = np.full(len(step.losses), np.nan)
    return BalancedStep(nan_weights, step.values, gram, step.names, skipped=True)
