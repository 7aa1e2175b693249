r"""Exact solvers for the small quadratic programs behind the Gram-based balancers.

All work on the ``k × k`` Gram matrix ``Q`` of the objective gradients (``Q_ij = g_iᵀ g_j``)
and return the weights ``w`` of the update direction ``d = Σ_i w_i g_i``, whose squared norm
is ``‖d‖² = wᵀQw``:

* [`eq_qp_weights`][moopt.solvers.eq_qp_weights] — ``min ½ wᵀQw  s.t.  Σ_i w_i = 1`` (no sign
  constraint). At the solution ``Q w = μ 1``: ``d`` has the same inner product ``μ`` with every
  gradient.
* [`mgda_weights`][moopt.solvers.mgda_weights] — ``min ½ wᵀQw  s.t.  Σ_i w_i = 1, w ≥ 0``: the
  min-norm point of the convex hull of the gradients (MGDA).
* [`dual_cone_weights`][moopt.solvers.dual_cone_weights] — ``min ½ wᵀQw  s.t.  w ≥ u``: the
  projection of ``Σ_i u_i g_i`` onto the dual cone of the gradients (UPGrad, DualProj).

How they are solved
-------------------
For ``k = 2`` the first two have closed forms. For ``k > 2`` the problem is first *equilibrated*:
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

The dual-cone projection is equilibrated the same way: ``w = u + x / s`` turns it into the
non-negative least-squares problem ``min_{x ≥ 0} (s∘u + x)ᵀC(s∘u + x)``, which a Lawson–Hanson
active-set method solves exactly (see [`dual_cone_weights`][moopt.solvers.dual_cone_weights]).
Its weights are not unique when the gradients are linearly dependent, but the projection is;
the sub-problems then take the minimum-norm solution, and
[`QPSolution.exact`][moopt.solvers.QPSolution] is ``False``.

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

from moopt.validation import FloatArray, as_finite_vector, as_square_gram

__all__ = [
    "SINGULAR_RTOL",
    "QPSolution",
    "dual_cone_weights",
    "eq_qp_weights",
    "mgda_weights",
    "solve_dual_cone",
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
        Float64 weights of shape ``(k,)``, summing to 1 (except those of
        [`solve_dual_cone`][moopt.solvers.solve_dual_cone], which are bounded below instead).
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


_MAX_ACTIVE_SET_ITERATIONS = 100
"""Per objective: the active-set loops below never come near it (each step lowers the objective)."""


def _pseudo_solve(c: FloatArray, rhs: FloatArray) -> FloatArray:
    """Return the minimum-norm solution of ``C x = rhs`` for a PSD ``C``.

    Eigenvalues below [`SINGULAR_RTOL`][moopt.solvers.SINGULAR_RTOL] times ``trace(C)`` count as 0.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (c + c.T))
    keep = eigenvalues > SINGULAR_RTOL * max(float(np.trace(c)), _TINY)
    solution: FloatArray = eigenvectors[:, keep] @ (
        (eigenvectors[:, keep].T @ rhs) / eigenvalues[keep]
    )
    return solution


def _free_minimiser(c: FloatArray, b: FloatArray, free: NDArray[np.bool_]) -> FloatArray:
    """Minimise ``½ xᵀCx + bᵀx`` over the free entries, the others fixed at 0."""
    target = np.zeros(len(c))
    indices = np.flatnonzero(free)
    if indices.size:
        target[indices] = _pseudo_solve(c[np.ix_(indices, indices)], -b[indices])
    return target


def _nonnegative_least_squares(c: FloatArray, start: FloatArray) -> tuple[FloatArray, bool]:
    """Solve ``min ½ (y₀ + x)ᵀ C (y₀ + x)`` over ``x ≥ 0`` (Lawson–Hanson, on the Gram).

    ``C`` is the Gram of some vectors ``a_i``, so this is the non-negative least-squares problem
    ``min ‖A x + A y₀‖²``. The free set holds the entries allowed above 0. Each outer
    iteration frees the entry whose partial derivative ``(C(y₀ + x))_i`` is the most negative
    (beyond rounding); the inner loop minimises over the free entries with the others at 0
    (the minimum-norm solution of ``C_FF x_F = −(C y₀)_F``, which always exists because the
    right-hand side lies in the range of ``C_FF``) and, where that minimiser has entries ≤ 0,
    moves towards it until the first entry reaches 0 and fixes that entry. As in Lawson and
    Hanson's algorithm, an entry whose own minimiser would not be positive is not freed (it can
    only lower the objective by rounding). It stops at a KKT point: ``x ≥ 0``, the partial
    derivatives are 0 on the free entries and ≥ 0 (up to rounding) on the others.
    """
    k = len(c)
    b = c @ start
    x = np.zeros(k)
    free = np.zeros(k, dtype=bool)
    refused = np.zeros(k, dtype=bool)
    for _ in range(_MAX_ACTIVE_SET_ITERATIONS * k):
        y = start + x
        derivatives = c @ y
        rounding = _ROUNDING * (np.abs(c) @ np.abs(y))
        candidates = ~free & ~refused & (derivatives < -rounding)
        if not candidates.any():
            return x, True
        entering = int(np.argmin(np.where(candidates, derivatives, np.inf)))
        free[entering] = True
        target = _free_minimiser(c, b, free)
        if target[entering] <= 0:
            free[entering] = False
            refused[entering] = True
            continue
        refused[:] = False
        while True:
            shrinking = np.flatnonzero(free & (target <= 0))
            if shrinking.size == 0:
                x = np.where(free, target, 0.0)
                break
            ratios = x[shrinking] / np.maximum(x[shrinking] - target[shrinking], _TINY)
            x = x + ratios.min() * (target - x)
            x[shrinking[np.argmin(ratios)]] = 0.0
            free &= x > 0
            x = np.where(free, x, 0.0)
            target = _free_minimiser(c, b, free)
    return x, False


def solve_dual_cone(gram: ArrayLike, u: ArrayLike) -> QPSolution:
    """Solve ``min ½ wᵀQw subject to w ≥ u`` exactly.

    The same problem as [`dual_cone_weights`][moopt.solvers.dual_cone_weights], with its
    diagnostics. The weights do not sum to 1 in general (they sum to at least ``Σ_i u_i``).

    Parameters
    ----------
    gram : array_like
        The ``k × k`` symmetric positive semi-definite Gram matrix ``Q``.
    u : array_like
        The ``k`` weights of the vector ``Σ_i u_i g_i`` to project.

    Returns
    -------
    QPSolution
        The weights ``w``, ``wᵀQw`` (the squared norm of the projection) and whether the
        active-set method stopped at a KKT point of a problem whose minimiser is unique.

    Raises
    ------
    TypeError, ValueError
        If ``gram`` is not a finite, square, symmetric PSD matrix of real numbers, or ``u`` is
        not a finite vector of length ``k``.
    """
    q = as_square_gram(gram)
    target = as_finite_vector(u, "u", len(q))
    diagonal = np.diag(q)
    if not np.any(diagonal > 0):
        return QPSolution(target, 0.0, exact=False)
    problem = _Equilibrated.of(q)
    scales = 1.0 / problem.a
    x, converged = _nonnegative_least_squares(problem.c, scales * target)
    weights: FloatArray = target + x * problem.a
    unique = bool(np.linalg.eigvalsh(problem.c)[0] > SINGULAR_RTOL * len(q))
    return _solution(q, weights, converged and unique)


def dual_cone_weights(gram: ArrayLike, u: ArrayLike) -> FloatArray:
    r"""Return the weights of the projection of ``Σ_i u_i g_i`` onto the dual cone of the gradients.

    The dual cone ``{x : g_iᵀx ≥ 0 for every i}`` holds the directions that conflict with no
    gradient. The projection of ``Jᵀu`` onto it is ``Jᵀw`` with (Proposition 1 of Quinton and
    Rey, *Jacobian Descent for Multi-Objective Optimization*, 2024)

    $$w = \operatorname{argmin}\limits_{w \ge u} \; w^\top Q w,$$

    a problem on the Gram alone. Writing ``w = u + x / s`` with ``s_i = ‖g_i‖`` turns it into
    the non-negative least-squares problem ``min_{x ≥ 0} (s∘u + x)ᵀ C (s∘u + x)`` on the cosine
    matrix ``C``, which a Lawson–Hanson active-set method solves exactly (it stops at a KKT
    point: ``x ≥ 0``, ``(Qw)_i = g_iᵀJᵀw = 0`` wherever ``w_i > u_i`` and ``≥ 0`` elsewhere).
    The result does not depend on the overall scale of the gradients. The projection ``Jᵀw`` is
    always unique; when the gradients are linearly dependent several ``w`` give it, and the
    method returns one of them (a zero gradient keeps ``w_i = u_i``). If all gradients are zero,
    ``w = u``.

    Parameters
    ----------
    gram : array_like
        The ``k × k`` symmetric positive semi-definite Gram matrix ``Q``.
    u : array_like
        The ``k`` weights of the vector ``Σ_i u_i g_i`` to project.

    Returns
    -------
    numpy.ndarray
        Float64 weights ``w ≥ u`` of shape ``(k,)``.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [-1.0, 1.0]])  # two conflicting gradients, as rows
    >>> w = dual_cone_weights(g @ g.T, [1.0, 0.0])  # project g_1
    >>> w
    array([1. , 0.5])
    >>> w @ g  # the projection g_1 + ½ g_2
    array([0.5, 0.5])
    >>> g @ (w @ g)  # conflicts with neither gradient, and is orthogonal to g_2
    array([0.5, 0. ])
    """
    return solve_dual_cone(gram, u).weights
