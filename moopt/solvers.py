r"""Exact solvers for the two small quadratic programs behind the Gram-based balancers.

Both work on the ``k × k`` Gram matrix ``Q`` of the objective gradients (``Q_ij = g_iᵀ g_j``)
and return the weights ``w`` of the update direction ``d = Σ_i w_i g_i``, whose squared norm
is ``‖d‖² = wᵀQw``:

* [`eq_qp_weights`][moopt.solvers.eq_qp_weights] — ``min ½ wᵀQw  s.t.  Σ_i w_i = 1`` (no sign
  constraint). At the solution ``Q w = μ 1``: ``d`` has the same inner product ``μ`` with every
  gradient.
* [`mgda_weights`][moopt.solvers.mgda_weights] — ``min ½ wᵀQw  s.t.  Σ_i w_i = 1, w ≥ 0``: the
  min-norm point of the convex hull of the gradients (MGDA).

How they are solved
-------------------
For ``k = 2`` both have closed forms. For ``k > 2`` the problem is first *equilibrated*:
with ``s_i = ‖g_i‖ = √Q_ii`` and ``w = v / s``, it becomes ``min ½ vᵀCv  s.t.  aᵀv = 1``
with ``C = S⁻¹QS⁻¹`` (the matrix of cosines between the gradients) and ``a = 1/s``. So the
result does not depend on the overall scale of the gradients (1e-12 or 1e12 alike), and
gradients of very different lengths (log-loss gradients of objectives whose losses differ
by decades) cost no accuracy. A zero gradient gets ``s_i`` of the longest one.
The equality-constrained QP is then solved exactly in the null space of the constraint:
with ``Z`` an orthonormal basis of ``{u : aᵀu = 0}`` and ``v = a/‖a‖² + Z u``, the KKT
system reduces to the ``(k−1) × (k−1)`` positive-definite system
``(ZᵀCZ) u = −ZᵀC a/‖a‖²``, solved through the symmetric eigendecomposition of ``ZᵀCZ``
(whose eigenvalues also decide, reliably, whether it is regular). This system is never
worse conditioned than ``C``, and it stays regular where ``Q`` is singular but the QP's
solution is unique (a zero gradient, two parallel gradients of different lengths). MGDA for
``k > 2`` is a primal active-set method whose sub-problems are that same
equality-constrained QP on the free objectives; it stops at an exact KKT point.

Fallback for singular problems
------------------------------
Only when the reduced matrix ``ZᵀCZ`` is singular (an eigenvalue below
[`SINGULAR_RTOL`][moopt.solvers.SINGULAR_RTOL] times ``trace(C)``), the solution is not unique (e.g.
two identical gradients). The solvers then return the minimum-norm solution of the reduced system
(its pseudo-inverse, with eigenvalues below the same threshold taken as zero), which is, among the
optimal weights, the one that minimises ``Σ_i ‖g_i‖² w_i²``: for identical gradients, the even
split. If all gradients are zero, the weights are uniform. The result is always finite and sums to
1, and [`QPSolution.exact`][moopt.solvers.QPSolution] is ``False``. The fallback is never used when
the exact solve succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from moopt.validation import FloatArray, as_square_gram

__all__ = [
    "SINGULAR_RTOL",
    "QPSolution",
    "eq_qp_weights",
    "mgda_weights",
    "solve_eq_qp",
    "solve_mgda",
]

SINGULAR_RTOL = 1e-12
"""Eigenvalues of the reduced KKT matrix below this (relative to ``trace(C)``) count as zero."""

_TINY = float(np.finfo(np.float64).tiny)

_ROUNDING = 1e-12
"""MGDA optimality: multipliers above ``-_ROUNDING`` times their terms' size count as ≥ 0."""


@dataclass(frozen=True)
class QPSolution:
    """The result of one of the QP solvers.

    Attributes
    ----------
    weights : numpy.ndarray
        Float64 weights of shape ``(k,)``, summing to 1.
    squared_norm : float
        ``wᵀQw = ‖Σ_i w_i g_i‖²``, in the units of the input Gram.
    exact : bool
        ``True`` when the unique solution was computed by an exact solve; ``False`` when the
        problem was singular and the documented fallback chose among the optimal weights.
    """

    weights: FloatArray
    squared_norm: float
    exact: bool


@dataclass(frozen=True)
class _Equilibrated:
    """``Q = S C S`` with ``S = diag(s)`` (``s``: gradient norms) and the constraint ``aᵀv = 1``."""

    c: FloatArray
    a: FloatArray

    @classmethod
    def of(cls, gram: FloatArray) -> _Equilibrated:
        diagonal = np.diag(gram)
        scales = np.sqrt(np.where(diagonal > 0, diagonal, diagonal.max()))
        return cls(gram / np.outer(scales, scales), 1.0 / scales)

    def weights(self, v: FloatArray) -> FloatArray:
        """Map a solution ``v`` back to weights ``w = v / s``, normalised to sum to 1."""
        w = v * self.a
        normalised: FloatArray = w / w.sum()
        return normalised


def _complement_basis(a: FloatArray) -> FloatArray:
    """Return an orthonormal ``k × (k−1)`` basis of ``{u : aᵀu = 0}`` for ``a > 0``.

    The Householder reflection that maps ``e_1`` to ``−a/‖a‖`` is orthogonal and its first
    column is ``−a/‖a‖``, so its other columns span the orthogonal complement of ``a``.
    """
    v = a / np.linalg.norm(a)
    v[0] += 1.0
    reflection = np.eye(len(a)) - 2.0 * np.outer(v, v) / (v @ v)
    return reflection[:, 1:]


def _two_objective_eq_qp(q: FloatArray) -> tuple[float, bool]:
    """Closed-form ``w_1`` of the equality-constrained QP for ``k = 2``.

    ``w_1 = (Q_22 − Q_12) / (Q_11 + Q_22 − 2 Q_12)``; the denominator is ``‖g_1 − g_2‖²``.
    When it vanishes (identical gradients), every ``w`` is optimal and ``½`` is returned.
    """
    denominator = q[0, 0] + q[1, 1] - 2.0 * q[0, 1]
    if denominator <= SINGULAR_RTOL * (q[0, 0] + q[1, 1]):
        return 0.5, False
    return float((q[1, 1] - q[0, 1]) / denominator), True


def _eq_qp_core(c: FloatArray, a: FloatArray) -> tuple[FloatArray, bool]:
    """Solve ``min ½ vᵀCv s.t. aᵀv = 1`` (``C`` PSD, ``a > 0``) in the null space of ``aᵀ``."""
    if len(c) == 1:
        return np.array([1.0 / a[0]]), True
    basis = _complement_basis(a)
    start = a / (a @ a)
    reduced = basis.T @ c @ basis
    reduced = 0.5 * (reduced + reduced.T)
    rhs = -(basis.T @ (c @ start))
    eigenvalues, eigenvectors = np.linalg.eigh(reduced)
    keep = eigenvalues > SINGULAR_RTOL * max(float(np.trace(c)), _TINY)
    step = eigenvectors[:, keep] @ ((eigenvectors[:, keep].T @ rhs) / eigenvalues[keep])
    solution: FloatArray = start + basis @ step
    return solution, bool(keep.all())


def _uniform(k: int) -> QPSolution:
    """All gradients are zero: every ``w`` is optimal; return the uniform weights."""
    return QPSolution(np.full(k, 1.0 / k), 0.0, exact=False)


def _solution(gram: FloatArray, weights: FloatArray, exact: bool) -> QPSolution:
    return QPSolution(weights, max(float(weights @ gram @ weights), 0.0), exact)


def solve_eq_qp(gram: ArrayLike) -> QPSolution:
    """Solve ``min ½ wᵀQw subject to Σ_i w_i = 1`` exactly (weights may be negative).

    Parameters
    ----------
    gram : array_like
        The ``k × k`` symmetric positive semi-definite Gram matrix ``Q``.

    Returns
    -------
    QPSolution
        The weights, ``wᵀQw`` and whether the exact solve or the singular fallback was used.

    Raises
    ------
    TypeError, ValueError
        If ``gram`` is not a finite, square, symmetric PSD matrix of real numbers.

    See Also
    --------
    eq_qp_weights : The same, returning the weights only.
    """
    q = as_square_gram(gram)
    k = len(q)
    if not np.any(np.diag(q) > 0):
        return _uniform(k)
    if k == 2:
        w1, exact = _two_objective_eq_qp(q)
        return _solution(q, np.array([w1, 1.0 - w1]), exact)
    problem = _Equilibrated.of(q)
    v, exact = _eq_qp_core(problem.c, problem.a)
    return _solution(q, problem.weights(v), exact)


def eq_qp_weights(gram: ArrayLike) -> FloatArray:
    """Return the weights minimising ``½ wᵀQw`` subject to ``Σ_i w_i = 1``.

    The KKT conditions are ``Q w = μ 1`` and ``1ᵀw = 1``: the direction ``d = Σ_i w_i g_i``
    has the same inner product ``μ`` with every gradient ``g_i``. For ``k = 2``,
    ``w_1 = (Q_22 − Q_12) / (Q_11 + Q_22 − 2 Q_12)``. See the module documentation for the
    method and the fallback used when the solution is not unique.

    Parameters
    ----------
    gram : array_like
        The ``k × k`` symmetric positive semi-definite Gram matrix ``Q``.

    Returns
    -------
    numpy.ndarray
        Float64 weights of shape ``(k,)`` summing to 1.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [0.0, 2.0]])  # two orthogonal gradients, as rows
    >>> w = eq_qp_weights(g @ g.T)
    >>> w
    array([0.8, 0.2])
    >>> g @ (w @ g)  # equal inner products with both gradients
    array([0.8, 0.8])
    """
    return solve_eq_qp(gram).weights


def _mgda_active_set(c: FloatArray, a: FloatArray) -> tuple[FloatArray, bool]:
    """Solve ``min ½ vᵀCv s.t. aᵀv = 1, v ≥ 0`` by a primal active-set method.

    The working set holds the objectives fixed at 0. Each iteration minimises over the free
    ones with ``aᵀv = 1`` (an equality-constrained QP), moves towards that minimiser until a
    free entry would turn negative (then fixes it at 0), and, once at the minimiser, frees the
    fixed entry with the most negative multiplier ``(Cv)_i − μ a_i`` (``μ = vᵀCv``); when
    none is negative, ``v`` satisfies the KKT conditions.
    """
    k = len(c)
    free = np.zeros(k, dtype=bool)
    start = int(np.argmin(np.diag(c) / a**2))  # the shortest gradient
    free[start] = True
    v = np.zeros(k)
    v[start] = 1.0 / a[start]
    for _ in range(20 * k + 100):
        indices = np.flatnonzero(free)
        target = np.zeros(k)
        target[indices], exact = _eq_qp_core(c[np.ix_(indices, indices)], a[indices])
        step = target - v
        shrinking = indices[step[indices] < 0]
        ratios = v[shrinking] / -step[shrinking]
        if ratios.size and ratios.min() < 1.0:
            blocking = int(shrinking[np.argmin(ratios)])
            v = np.maximum(v + ratios.min() * step, 0.0)
            v[blocking] = 0.0
            free[blocking] = False
            v /= a @ v
            continue
        v = target
        products = c @ v
        mu = float(v @ products)
        multipliers = products - mu * a
        rounding = _ROUNDING * (np.abs(c) @ np.abs(v) + abs(mu) * a)
        multipliers[free] = 0.0
        entering = int(np.argmin(multipliers / a))  # (Qw)_i − wᵀQw, up to a common factor
        if multipliers[entering] >= -rounding[entering]:
            return _widen_over_ties(c, a, v, free | (multipliers <= rounding), exact)
        free[entering] = True
    return v, False


def _widen_over_ties(
    c: FloatArray, a: FloatArray, v: FloatArray, widened: NDArray[np.bool_], exact: bool
) -> tuple[FloatArray, bool]:
    """Spread an optimal ``v`` over fixed objectives whose multiplier is zero, if possible.

    A zero multiplier means the optimum may not be unique (e.g. identical gradients). The
    equality-constrained QP on the widened free set then picks the minimum-norm optimum; it
    is used when it is non-negative, so that ties are broken symmetrically.
    """
    if np.array_equal(widened, v > 0):
        return v, exact
    indices = np.flatnonzero(widened)
    candidate = np.zeros(len(c))
    candidate[indices], candidate_exact = _eq_qp_core(c[np.ix_(indices, indices)], a[indices])
    if candidate.min() < 0:
        return v, exact
    return candidate, candidate_exact


def solve_mgda(gram: ArrayLike) -> QPSolution:
    """Solve ``min ½ wᵀQw`` over the simplex ``{w ≥ 0, Σ_i w_i = 1}`` exactly.

    Parameters
    ----------
    gram : array_like
        The ``k × k`` symmetric positive semi-definite Gram matrix ``Q``.

    Returns
    -------
    QPSolution
        The weights, ``wᵀQw`` (the squared norm of the min-norm point) and whether the
        solution was unique and computed exactly.

    Raises
    ------
    TypeError, ValueError
        If ``gram`` is not a finite, square, symmetric PSD matrix of real numbers.

    See Also
    --------
    mgda_weights : The same, returning the weights only.
    """
    q = as_square_gram(gram)
    k = len(q)
    if not np.any(np.diag(q) > 0):
        return _uniform(k)
    if k == 1:
        return _solution(q, np.ones(1), True)
    if k == 2:
        w1, exact = _two_objective_eq_qp(q)
        w1 = min(max(w1, 0.0), 1.0)
        return _solution(q, np.array([w1, 1.0 - w1]), exact)
    problem = _Equilibrated.of(q)
    v, exact = _mgda_active_set(problem.c, problem.a)
    return _solution(q, problem.weights(v), exact)


def mgda_weights(gram: ArrayLike) -> FloatArray:
    """Return the MGDA weights: the min-norm point of the convex hull of the gradients.

    Solves ``min ½ ‖Σ_i w_i g_i‖² = ½ wᵀQw`` over ``{w ≥ 0, Σ_i w_i = 1}``. For ``k = 2``,
    ``w_1 = clip((Q_22 − Q_12) / (Q_11 + Q_22 − 2 Q_12), 0, 1)``; for ``k > 2`` an exact
    active-set method. At the solution ``(Qw)_i = wᵀQw`` wherever ``w_i > 0`` and
    ``(Qw)_i ≥ wᵀQw`` wherever ``w_i = 0``.

    Parameters
    ----------
    gram : array_like
        The ``k × k`` symmetric positive semi-definite Gram matrix ``Q``.

    Returns
    -------
    numpy.ndarray
        Float64 non-negative weights of shape ``(k,)`` summing to 1.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [1.0, 1.0]])  # rows are gradients
    >>> mgda_weights(g @ g.T)  # g_1 is already the min-norm point of the hull
    array([1., 0.])
    """
    return solve_mgda(gram).weights
