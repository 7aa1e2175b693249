"""Independent reference solutions: cvxpy for both QPs, mpmath for the exact KKT solve."""

from __future__ import annotations

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
