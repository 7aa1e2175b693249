"""Losses → Gram: the per-objective gradients and their ``k × k`` Gram matrix.

``grads[i][j]`` is the gradient of objective i with respect to input j (a parameter, or a
feature in features mode), None where the objective does not reach that input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from moopt.pytorch._collectives import all_reduce_sum_
from moopt.pytorch._types import GramMode, NonFiniteError
from moopt.validation import FloatArray


def per_objective_gradients(
    tensors: list[torch.Tensor],
    inputs: list[torch.Tensor],
    mode: GramMode,
    retain_graph: bool,
) -> list[list[torch.Tensor | None]]:
    """``grads[i][j] = ∂L_i/∂inputs[j]`` (None where objective i does not reach input j)."""
    k = len(tensors)
    if mode == "batched" and k > 1:
        stacked = torch.stack([t.reshape(()) for t in tensors])
        eye = torch.eye(k, dtype=stacked.dtype, device=stacked.device)
        batched = torch.autograd.grad(
            stacked,
            inputs,
            grad_outputs=eye,
            retain_graph=retain_graph,
            allow_unused=True,
            is_grads_batched=True,
        )
        return [[None if g is None else g[i] for g in batched] for i in range(k)]
    grads: list[list[torch.Tensor | None]] = []
    for i, loss in enumerate(tensors):
        keep = retain_graph or i < k - 1
        grads.append(list(torch.autograd.grad(loss, inputs, retain_graph=keep, allow_unused=True)))
    return grads


def _gram_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """Float64 for float64 gradients, float32 otherwise (bfloat16 and float16 included)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def gram_matrix(
    grads: list[list[torch.Tensor | None]], count: int, disjoint_world: int = 1
) -> FloatArray:
    """Return the ``k × k`` Gram of the per-objective gradients over the first ``count`` inputs.

    Computed on the gradients' device by dot products per input tensor (no concatenated
    copy of the k gradients), in float64 for float64 gradients and float32 otherwise; only
    the ``k × k`` result is copied to the host.

    With ``disjoint_world = N > 1`` the inputs are per-process features (each process holds
    its own samples' activations) and each process's losses are means over its own samples:
    the Gram of the global loss ``(1/N) Σ_r L_r`` with respect to all processes' features is
    ``(1/N²) Σ_r Q_r``, one all-reduce of the ``k(k+1)/2`` local entries.
    """
    k = len(grads)
    present = [g for row in grads for g in row[:count] if g is not None]
    if not present:
        return np.zeros((k, k))
    dtype = _gram_dtype(present)
    pairs = [(a, b) for a in range(k) for b in range(a, k)]
    entries = torch.zeros(len(pairs), dtype=dtype, device=present[0].device)
    for j in range(count):
        flat = [None if (g := row[j]) is None else g.reshape(-1).to(dtype) for row in grads]
        for index, (a, b) in enumerate(pairs):
            left, right = flat[a], flat[b]
            if left is not None and right is not None:
                entries[index] += torch.dot(left, right)
    if disjoint_world > 1:
        all_reduce_sum_(entries)
        entries /= disjoint_world**2
    values = entries.double().cpu().numpy()
    gram = np.zeros((k, k))
    for index, (a, b) in enumerate(pairs):
        gram[a, b] = gram[b, a] = values[index]
    return gram


def check_gram(names: tuple[str, ...], gram: FloatArray) -> None:
    """Name the objectives whose gradient is NaN/∞ (a non-finite ``‖∇L_i‖²`` on the diagonal)."""
    if np.isfinite(gram).all():
        return
    bad = [name for name, q in zip(names, np.diag(gram), strict=True) if not np.isfinite(q)]
    raise NonFiniteError(
        f"the gradient of {' and '.join(repr(n) for n in bad or names)} is not finite "
        f"(NaN/∞, or its squared norm overflows)"
    )
