"""Weights → ``.grad``: ``Σ_i w_i ∇L_i`` per input, added to ``.grad`` like ``Tensor.backward``."""

from __future__ import annotations

import torch

from moopt.pytorch._precision import LOW_PRECISION
from moopt.validation import FloatArray


def combine(
    grads: list[list[torch.Tensor | None]], weights: FloatArray, j: int
) -> torch.Tensor | None:
    """``Σ_i w_i grads[i][j]`` over the objectives that reach input j, or None if none does.

    One new tensor per input; the gradients themselves are never written to (autograd may
    return one tensor for several inputs, or an expanded view). bfloat16/float16 gradients
    (features under autocast) are combined in float32 and the sum cast back once.
    """
    total: torch.Tensor | None = None
    dtype: torch.dtype | None = None
    for i, w in enumerate(weights):
        g = grads[i][j]
        if g is None:
            continue
        if total is None:
            dtype = g.dtype
            total = (g.float() if dtype in LOW_PRECISION else g) * float(w)
        else:
            total.add_(g, alpha=float(w))
    return total if total is None or total.dtype == dtype else total.to(dtype)


def accumulate(param: torch.Tensor, gradient: torch.Tensor) -> None:
    """Add ``gradient`` to ``param.grad`` like ``Tensor.backward`` does."""
    if param.grad is None:
        param.grad = gradient.detach().to(param.dtype)
    else:
        param.grad.add_(gradient.to(param.grad.dtype))


def accumulate_all(params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
    """`accumulate` every present gradient into its parameter."""
    for param, gradient in zip(params, grads, strict=True):
        if gradient is not None:
            accumulate(param, gradient)
