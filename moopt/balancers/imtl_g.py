r"""IMTL-G: equal projections onto every unit gradient (Liu et al., ICLR 2021)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from moopt.balancers.base import Balancer
from moopt.solvers import SINGULAR_RTOL
from moopt.validation import FloatArray

__all__ = ["SUM_RTOL", "IMTLGBalancer", "imtl_g_weights"]

SUM_RTOL = 1e-12
"""The weights are 0 when ``|Σ_i v_i| ≤ SUM_RTOL · Σ_i |v_i|`` (the direction cannot be scaled)."""


def _equal_projection_solution(gram: FloatArray, norms: FloatArray) -> FloatArray:
    """Return ``v = G⁺ n``, ``n_i = ‖g_i‖ > 0``, so that ``g_iᵀ(Σ_j v_j g_j) = ‖g_i‖``.

    With ``G = N C N`` (``N = diag(n)``, ``C`` the cosine matrix) and ``C`` regular,
    ``v = N⁻¹ C⁻¹ 1``: solving with ``C`` costs no accuracy when the gradients' lengths differ
    by decades, where ``G`` itself is badly conditioned. Where ``C`` is singular (linearly
    dependent gradients; an eigenvalue below ``SINGULAR_RTOL`` times its trace) ``v`` is the
    Moore–Penrose solution ``G⁺ n`` that TorchJD computes, over ``G``'s ``rank C`` largest
    eigenvalues: the least-squares solution of ``G v = n`` of least Euclidean norm.
    """
    cosines = gram / np.outer(norms, norms)
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (cosines + cosines.T))
    keep = eigenvalues > SINGULAR_RTOL * float(np.trace(cosines))
    if keep.all():
        solution: FloatArray = (eigenvectors @ (eigenvectors.sum(axis=0) / eigenvalues)) / norms
        return solution
    rank = int(keep.sum())
    g_values, g_vectors = np.linalg.eigh(gram)
    top_values, top_vectors = g_values[len(gram) - rank :], g_vectors[:, len(gram) - rank :]
    pseudo_solution: FloatArray = top_vectors @ ((top_vectors.T @ norms) / top_values)
    return pseudo_solution


def imtl_g_weights(gram: FloatArray) -> FloatArray:
    r"""Return the IMTL-G weights ``v / Σ_i v_i`` with ``v = G⁺ diag(G)^½`` for a checked Gram.

    Zero gradients get ``v_i = 0`` (as with ``G⁺``, whose rows for them vanish). The weights
    are 0 when ``|Σ_i v_i| ≤ SUM_RTOL · Σ_i |v_i|``, including when every gradient is 0.
    """
    k = len(gram)
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    nonzero = norms > 0
    v = np.zeros(k)
    if nonzero.any():
        index = np.flatnonzero(nonzero)
        v[index] = _equal_projection_solution(gram[np.ix_(index, index)], norms[index])
    total = float(v.sum())
    if abs(total) <= SUM_RTOL * float(np.abs(v).sum()):
        return np.zeros(k)
    weights: FloatArray = v / total
    return weights


class IMTLGBalancer(Balancer):
    r"""IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021).

    As TorchJD's ``IMTLG``. The gradient part of impartial multi-task learning looks for the
    update ``d = Σ_i w_i g_i`` with ``Σ_i w_i = 1`` whose projections onto every *unit*
    gradient ``u_i = g_i/‖g_i‖`` are equal, ``dᵀu_i = dᵀu_j`` for all i, j (the paper's
    closed form solves ``dᵀ(u_1 − u_i) = 0`` for i ≥ 2). From the Gram alone, as in TorchJD
    (whose generalisation to dependent gradients follows Quinton & Rey, "Jacobian Descent
    for Multi-Objective Optimization"):

    ```text
    v = G⁺ n,   n_i = ‖g_i‖ = √G_ii,   w = v / Σ_i v_i,
    ```

    so that ``g_iᵀ(Σ_j v_j g_j) = ‖g_i‖`` — every projection equals 1 — and ``dᵀu_i = 1/Σ_j v_j``
    for every i. For linearly independent gradients ``v = G⁻¹ n``; for dependent ones
    ``G⁺`` picks the least-squares solution of least norm.

    The weights sum to 1 except in the degenerate case ``Σ_i v_i ≈ 0`` (or all gradients
    zero), where they are 0 (TorchJD tests ``|Σ v| < 1e-12`` in absolute terms; here
    ``|Σ v| ≤ 1e-12 Σ|v|``, which does not depend on the scale of the gradients). So
    ``weights_sum_to_one`` is false. Note, as in TorchJD and the paper's formula, that when
    ``Σ_i v_i < 0`` the common projection ``1/Σ_j v_j`` is negative: ``d`` then *raises* every
    loss to first order. Gradients of very different lengths with strongly correlated
    directions can cause it.

    Examples
    --------
    >>> import numpy as np
    >>> from moopt.balancers.imtl_g import IMTLGBalancer
    >>> g = np.array([[1.0, 0.0], [0.0, 3.0]])  # rows are the gradients
    >>> w = IMTLGBalancer().weights([1.0, 1.0], g @ g.T)
    >>> w
    array([0.75, 0.25])
    >>> (g @ (w @ g)) / np.linalg.norm(g, axis=1)  # equal projections onto unit gradients
    array([0.75, 0.75])
    """

    requires_gram = True
    weights_sum_to_one = False

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        assert gram is not None
        return imtl_g_weights(gram)

    def _config(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore: IMTL-G has no settings and no state."""
