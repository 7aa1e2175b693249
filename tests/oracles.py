"""Independent reference solutions: cvxpy for both QPs, mpmath for the exact KKT solve."""

from __future__ import annotations

import itertools

import cvxpy as cp
import mpmath
import numpy as np


def cvxpy_qp_weights(gram: np.ndarray, *, nonnegative: bool) -> np.ndarray:
    """Solve ``min ½ wᵀQw s.t. Σw = 1`` (and ``w ≥ 0`` if ``nonnegative``) with cvxpy.

    The Gram is normalised by its mean diagonal first (the solution does not depend on it),
    so the interior-point solver's absolute tolerances mean the same at every scale.
    """
    k = len(gram)
    normalised = gram / (np.trace(gram) / k)
    w = cp.Variable(k)
    constraints = [cp.sum(w) == 1]
    if nonnegative:
        constraints.append(w >= 0)
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(w, cp.psd_wrap(normalised))), constraints)
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-13, tol_gap_rel=1e-13, tol_feas=1e-13)
    assert problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE), problem.status
    return np.asarray(w.value, dtype=float)


def exact_eq_qp_weights(gram: np.ndarray, digits: int = 60) -> np.ndarray:
    """The equality-constrained QP solution ``Q⁻¹1 / 1ᵀQ⁻¹1`` in 60-digit arithmetic.

    The float64 entries of ``gram`` are taken as exact, so this is the true solution of the
    problem the solver was given, against which its rounding error is measured.
    """
    with mpmath.workdps(digits):
        q = mpmath.matrix(gram.tolist())
        x = mpmath.lu_solve(q, mpmath.matrix([1] * len(gram)))
        total = sum(x)
        return np.array([float(xi / total) for xi in x])


def exact_dual_cone_weights(gram: np.ndarray, u: np.ndarray, digits: int = 60) -> np.ndarray:
    """The exact ``argmin_{w ≥ u} wᵀQw`` for a positive-definite Gram, in 60-digit arithmetic.

    Enumerates the sets ``F`` of weights strictly above their bound: with ``w_i = u_i`` off
    ``F``, stationarity on ``F`` gives ``Q_FF w_F = −Q_{F,F̄} u_F̄``; the solution is the one
    whose ``w_F ≥ u_F`` and whose derivatives ``(Qw)_i`` are ≥ 0 off ``F`` (the KKT conditions,
    which a strictly convex QP satisfies at exactly one point). The float64 entries are taken
    as exact, so this is the true solution of the problem the solver was given.
    """
    k = len(gram)
    with mpmath.workdps(digits):
        q = mpmath.matrix(gram.tolist())
        bounds = [mpmath.mpf(float(x)) for x in u]
        slack = mpmath.mpf(10) ** (-(digits // 2))
        size = max(abs(q[i, j]) for i in range(k) for j in range(k)) * (
            1 + max(abs(b) for b in bounds)
        )
        for r in range(k + 1):
            for free in itertools.combinations(range(k), r):
                fixed = [i for i in range(k) if i not in free]
                w = list(bounds)
                if free:
                    lhs = mpmath.matrix([[q[i, j] for j in free] for i in free])
                    rhs = mpmath.matrix([-sum(q[i, j] * bounds[j] for j in fixed) for i in free])
                    solution = mpmath.lu_solve(lhs, rhs)
                    for position, i in enumerate(free):
                        w[i] = solution[position]
                if any(w[i] < bounds[i] - slack * (1 + abs(bounds[i])) for i in free):
                    continue
                derivatives = [sum(q[i, j] * w[j] for j in range(k)) for i in fixed]
                if all(d >= -slack * size for d in derivatives):
                    return np.array([float(x) for x in w])
    raise AssertionError("no KKT point found: the Gram is not positive definite")
