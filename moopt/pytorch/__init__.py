"""PyTorch glue: turn k scalar losses into ``.grad = Σ_i w_i ∇L_i`` with any balancer.

This is the only module of `moopt` that imports torch. One training step reads:

```python
out = model(x)
losses = {"rate": rate(out), "distortion": distortion(out)}
step = balanced_backward(losses, balancer, params)   # losses -> (Gram) -> w -> .grad
optimizer.step()
update_balancer(balancer, lambda: compute_losses(model, x))   # coarse-to-fine only
```

What it costs
-------------
* Balancers that need no Gram ([`requires_gram`][moopt.Balancer] false): one backward
  pass of ``Σ_i w_i L_i``, exactly what ``loss.backward()`` costs.
* Gram-based balancers, parameter mode: the k per-objective gradients, in k sequential
  backward passes (``gram_mode="sequential"``, the default, the fastest on CPU) or one
  vectorised pass (``"batched"``, ``torch.autograd.grad(..., is_grads_batched=True)``). The
  Gram is computed on the parameters' device; only the ``k × k`` matrix and the k losses
  reach the host. Passes share no work, so the part of the network that every objective
  depends on (a codec's encoder) is back-propagated k times.
* Gram-based balancers, ``features`` mode (the MGDA-UB idea): the Gram is that of the
  gradients with respect to shared features ``f`` (e.g. a codec's latent ``y``). The k
  per-objective passes stop at ``f``, collecting on the way the gradients of the parameters
  between ``f`` and the losses ("head" parameters: decoder, hyperprior, entropy models); then
  ``Σ_i w_i ∂L_i/∂f`` is back-propagated once through the "trunk" that produces ``f``. The
  ``.grad`` is still exactly ``Σ_i w_i ∇L_i`` for every parameter, at about the cost of one
  backward pass.

Data-parallel training
----------------------
With ``distributed=True`` every process passes the losses of its own samples (means over
them); the global objective is their mean over the processes. The glue talks to
``torch.distributed`` directly, with no ``DistributedDataParallel`` wrapper (whose hooks
fire only on ``backward`` and would reduce each per-objective pass separately):

* the k loss values are all-reduced (averaged) before the balancer sees them;
* no Gram: the weighted loss is differentiated locally and the gradient averaged in one
  all-reduce of a flat buffer;
* parameter Gram: the k per-objective gradients are averaged (one all-reduce of k flat
  gradients) *before* the Gram is formed — an average of local Grams is not the Gram of the
  global gradients — and ``Σ_i w_i ∇L_i`` is formed from the averaged gradients;
* features mode: each process holds its own samples' features, so the global feature Gram
  is the sum of the local ones divided by N² (one all-reduce of ``k(k+1)/2`` numbers); the
  head and trunk gradients are averaged like the plain gradient.

Every process then holds the same losses, Gram, weights and ``.grad``, and its balancer the
same state. Which parameters an objective reaches must be the same on every process (it is,
for one model and one loss function).

Mixed precision
---------------
Under ``torch.autocast`` the losses may come out in bfloat16 or float16. The balancer sees
their values as float64; the weighted sum and the combination ``Σ_i w_i ∇L_i`` are formed in
float32 or wider (a weight is never rounded to the losses' 8 or 11 bits), and the Gram is
accumulated in float32 from gradients of any precision.

With float16 pass the ``torch.amp.GradScaler`` as ``grad_scaler``. The glue then
back-propagates the *scaled* losses ``s·L_i`` (so small gradients survive float16), and
unscales what the balancer sees: the loss values are never scaled and the Gram is divided
by ``s²``. ``.grad`` receives ``s·Σ_i w_i ∇L_i``, which ``scaler.step(optimizer)`` unscales
as usual (``scaler.unscale_(optimizer)`` first if you clip). When a gradient overflows
(inf/NaN), the step is *skipped*: the balancer's state is restored to what it was before the
call (a skipped step does not update it), ``.grad`` keeps the non-finite values so that
``scaler.step`` skips the optimizer step and ``scaler.update()`` lowers the scale, and the
returned [`BalancedStep`][moopt.pytorch.BalancedStep] says ``skipped=True``; pass it to
[`update_balancer`][moopt.pytorch.update_balancer] as ``after=``, which then does nothing.

```python
scaler = torch.amp.GradScaler("cuda")
with torch.autocast("cuda", dtype=torch.float16):
    losses = compute_losses(model, x)
step = balanced_backward(losses, balancer, params, grad_scaler=scaler)
scaler.step(optimizer)
scaler.update()
update_balancer(balancer, closure, after=step)  # the closure under autocast too
```

bfloat16 has float32's exponent range and needs no scaler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from moopt.balancers.base import Balancer
from moopt.pytorch._checks import checked_features, loss_values, unpack_losses
from moopt.pytorch._collectives import world_size
from moopt.pytorch._step import prepare_step
from moopt.pytorch._strategies import (
    feature_gram_backward,
    no_gram_backward,
    parameter_gram_backward,
)
from moopt.pytorch._types import BalancedStep, GramMode, LossesLike, NonFiniteError
from moopt.validation import FloatArray

__all__ = [
    "BalancedStep",
    "GramMode",
    "NonFiniteError",
    "balanced_backward",
    "update_balancer",
]

# Defined in a private module; named by their public path in reprs, tracebacks and pickles.
BalancedStep.__module__ = NonFiniteError.__module__ = __name__


def balanced_backward(
    losses: LossesLike,
    balancer: Balancer,
    params: Iterable[torch.Tensor],
    *,
    features: torch.Tensor | Sequence[torch.Tensor] | None = None,
    gram_mode: GramMode = "sequential",
    retain_graph: bool = False,
    distributed: bool = False,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> BalancedStep:
    """Accumulate ``Σ_i w_i ∇L_i`` into ``.grad`` of ``params``, with ``w`` from ``balancer``.

    Parameters
    ----------
    losses : sequence or mapping of torch.Tensor
        The k scalar objective values of this step (a mapping names them, for messages).
    balancer : moopt.Balancer
        Any balancer; it gets the loss values and, if it needs it, the Gram.
    params : iterable of torch.Tensor
        The parameters whose ``.grad`` to fill. Gradients accumulate like
        ``Tensor.backward`` (onto an existing ``.grad``); parameters no objective reaches are
        left untouched, and an objective that does not reach a parameter contributes zero.
    features : torch.Tensor or sequence of torch.Tensor, optional
        Shared features the losses are computed from (e.g. a codec's latent ``y``). The Gram
        is then that of ``∂L_i/∂features`` and the trunk before the features is
        back-propagated once (see the module documentation). Ignored by balancers that need
        no Gram.
    gram_mode : {"sequential", "batched"}, default "sequential"
        How the per-objective gradients are computed: k backward passes, or one vectorised
        pass (``is_grads_batched=True``). Sequential is the faster on CPU
        (``benchmarks/step_overhead.py``).
    retain_graph : bool, default False
        Keep the autograd graph after the call (as in ``Tensor.backward``).
    distributed : bool, default False
        Data-parallel training on ``torch.distributed`` (every process calls this with the
        losses of its own samples, averaged over them): the balancer sees the losses and
        the Gram of the *global* objectives, so its weights are identical on every process,
        and ``.grad`` receives the global ``Σ_i w_i ∇L_i`` (see "Data-parallel training"
        in the module documentation). Do not wrap the model in
        ``DistributedDataParallel``: this call does the gradient averaging itself.
    grad_scaler : torch.amp.GradScaler, optional
        float16 mixed precision: back-propagate the scaled losses, show the balancer the
        unscaled values and Gram, and skip (balancer untouched, ``skipped=True``) when a
        gradient overflows; then call ``grad_scaler.step(optimizer)`` and
        ``grad_scaler.update()`` (see "Mixed precision" in the module documentation).

    Returns
    -------
    BalancedStep
        The weights, the loss values and the Gram handed to the balancer.

    Raises
    ------
    TypeError
        If ``losses``, ``params`` or ``features`` hold something other than tensors.
    ValueError
        If there are no losses or no params, a loss is not a scalar or does not require
        grad, a feature has no autograd history, ``gram_mode`` is unknown, or the balancer
        rejects its input.
    NonFiniteError
        (a ``ValueError``) If a loss is NaN/∞, or, for Gram-based balancers, an objective's
        gradient is; the message names the objective.

    Examples
    --------
    >>> import torch
    >>> from moopt import EqQPBalancer
    >>> theta = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> losses = {"a": (theta**2).sum(), "b": (theta - 3).abs().sum()}
    >>> step = balanced_backward(losses, EqQPBalancer(), [theta])
    >>> step.names, step.weights.sum()
    (('a', 'b'), 1.0)
    """
    step = prepare_step(losses, balancer, params, gram_mode, retain_graph, distributed, grad_scaler)
    if not balancer.requires_gram:
        return no_gram_backward(step)
    if features is None:
        return parameter_gram_backward(step)
    return feature_gram_backward(step, checked_features(features))


def update_balancer(
    balancer: Balancer,
    closure: Callable[[], LossesLike],
    *,
    step: int | None = None,
    every: int = 1,
    distributed: bool = False,
    after: BalancedStep | None = None,
) -> FloatArray | None:
    """Re-evaluate the objectives without gradients and pass them to ``balancer.update``.

    Call it after ``optimizer.step()`` with a closure that recomputes the k losses on the
    *same batch* at the new parameters. The coarse-to-fine balancer learns its weights from
    the change; stateless balancers ignore it (so the closure is not run for them).

    Amortising the extra forward pass: with ``every=n`` (and the current ``step``) the
    re-evaluation runs on one step in n only, cutting its cost by n. The balancer then learns
    from the log-loss decrease of one step in n — the same signal, sampled less often, so its
    logits move n times fewer times (raise ``logit_lr`` to compensate if needed). The
    closure may also evaluate a sub-batch to cheapen each call, but then ``weights`` must
    have received the losses of that same sub-batch, or the decrease mixes two batches.

    Parameters
    ----------
    balancer : moopt.Balancer
        The balancer that produced this step's weights.
    closure : callable
        Returns the k losses (sequence or mapping of scalar tensors, in the order given to
        [`balanced_backward`][moopt.pytorch.balanced_backward]); it is run under
        ``torch.no_grad()``.
    step : int, optional
        The current step number; required when ``every > 1``.
    every : int, default 1
        Re-evaluate on steps where ``step % every == 0``.
    distributed : bool, default False
        Average the new loss values over the ``torch.distributed`` processes, as
        [`balanced_backward`][moopt.pytorch.balanced_backward] does, so the balancer's state stays
        identical on all.
    after : BalancedStep, optional
        What this step's [`balanced_backward`][moopt.pytorch.balanced_backward] returned;
        when it was skipped (a float16 overflow under a ``GradScaler``) nothing is evaluated
        and the balancer is not updated.

    Returns
    -------
    numpy.ndarray or None
        The new loss values, or None when nothing was evaluated.

    Raises
    ------
    ValueError
        If ``every < 1``, ``step`` is missing when ``every > 1``, or a new loss is NaN/∞.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer ≥ 1, got {every!r}")
    if every > 1 and step is None:
        raise ValueError(
            "step is required when every > 1 (the re-evaluation runs when step % every == 0)"
        )
    if after is not None and after.skipped:
        return None
    if not balancer.requires_update or (step is not None and step % every != 0):
        return None
    with torch.no_grad():
        names, tensors = unpack_losses(closure())
    values = loss_values(names, tensors, world_size(distributed))
    balancer.update(values)
    return values
