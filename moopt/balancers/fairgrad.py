r"""FairGrad: α-fair resource allocation among the objectives (Ban & Ji, ICML 2024)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from moopt.balancers.base import Balancer
from moopt.solvers import solve_mgda
from moopt.validation import FloatArray, as_nonnegative_scalar, as_square_gram

__all__ = [
    "PARETO_STATIONARY_RTOL",
    "AlphaFairSolution",
    "FairGradBalancer",
    "solve_alpha_fair",
]

PARETO_STATIONARY_RTOL = 1e-12
"""``G x = x^(−1/α)`` counts as unsolvable when the squared norm of the min-norm point of the
convex hull of the *unit* gradients is at most this (the hull passes within 1e-6 of 0)."""

_MAX_ITERATIONS = 100
_LOCAL_DECREMENT = 1e-6
"""Below this squared Newton decrement the iteration takes full steps (its quadratic phase)."""
_MAX_LOG_STEP = 30.0
"""No entry changes by more than a factor ``e^30`` in one step (keeps every power finite)."""
_EPS = float(np.finfo(np.float64).eps)
_ROUNDING_FLOOR = 1e-10
"""A backward error that stops improving below this is taken as the rounding floor."""


@dataclass(frozen=True)
class AlphaFairSolution:
    """The solution of ``G x = x^(−1/α)`` computed by ``solve_alpha_fair``.

    Attributes
    ----------
    weights : numpy.ndarray
        The positive solution ``x`` of shape ``(k,)``; zeros when none exists.
    exists : bool
        Whether the system has a solution: false when some gradient is zero or the gradients
        are Pareto-stationary (``0`` in their convex hull, within ``PARETO_STATIONARY_RTOL``).
    backward_error : float
        ``max_i |(Gx)_i − x_i^(−1/α)| / ((|G| x)_i + x_i^(−1/α))``: the relative change of
        the data that makes ``x`` exact; a few times the machine epsilon when the solve
        succeeded (0 when no solution exists).
    iterations : int
        The number of Newton iterations.
    """

    weights: FloatArray
    exists: bool
    backward_error: float
    iterations: int


def _barrier(x: FloatArray, p: float) -> float:
    """``Σ_i f(x_i)`` with ``f'(x) = −x^(−p)``: ``−log x`` (``p = 1``) or ``−x^(1−p)/(1−p)``."""
    if p == 1.0:
        return float(-np.log(x).sum())
    return float(-(x ** (1.0 - p)).sum() / (1.0 - p))


def _objective(gram: FloatArray, x: FloatArray, p: float) -> float:
    """``φ(x) = ½ xᵀGx + Σ_i f(x_i)``; NaN or ±inf where a power overflows."""
    return 0.5 * float(x @ gram @ x) + _barrier(x, p)


def _newton_step(gram: FloatArray, x: FloatArray, gradient: FloatArray, p: float) -> FloatArray:
    """Solve ``H Δ = −∇`` with ``H = G + diag(p x^(−p−1))``, Jacobi-scaled, by eigendecomposition.

    The scaling makes the diagonal of the solved matrix 1, so entries of very different sizes
    (gradients whose norms differ by decades) cost no accuracy; eigenvalues are floored at
    rounding level, since ``G`` may be slightly indefinite after rounding.
    """
    hessian = gram + np.diag(p * x ** (-p - 1.0))
    scale = 1.0 / np.sqrt(np.diag(hessian))
    eigenvalues, eigenvectors = np.linalg.eigh(hessian * np.outer(scale, scale))
    eigenvalues = np.maximum(eigenvalues, _EPS * max(float(eigenvalues[-1]), _EPS))
    step: FloatArray = -scale * (
        eigenvectors @ ((eigenvectors.T @ (scale * gradient)) / eigenvalues)
    )
    return step


def _solve_normalised(gram: FloatArray, p: float) -> tuple[FloatArray, float, int]:
    """Minimise ``φ(x) = ½ xᵀGx + Σ_i f(x_i)`` over ``x > 0``; stationarity is ``Gx = x^(−p)``.

    ``φ`` is strictly convex (``f'' = p x^(−p−1) > 0``), so its minimiser is the unique
    solution. Newton directions ``Δ`` are applied multiplicatively, ``x ← x ∘ exp(t Δ/x)``:
    the same first-order step, but ``x`` stays positive and entries that must become tiny
    (``x_i ~ 1e-30`` for large α) get there in a few steps. The step ``t`` backtracks
    (Armijo) until the squared Newton decrement falls below ``_LOCAL_DECREMENT``; then full
    steps converge quadratically, and the iteration stops when the backward error reaches
    rounding level or stops improving. The best iterate (by backward error) is returned.
    """
    x = np.diag(gram) ** (-1.0 / (1.0 + p))  # exact when the gradients are orthogonal
    best, best_error, stalls, local = x, np.inf, 0, False
    iterations = 0
    while iterations < _MAX_ITERATIONS:
        iterations += 1
        power = x**-p
        products = gram @ x
        gradient = products - power
        error = float(np.max(np.abs(gradient) / (np.abs(gram) @ x + power)))
        if error < best_error:
            best, best_error, stalls = x, error, 0
        elif local:
            stalls += 1
        if best_error <= 2.0 * _EPS or (stalls >= 3 and best_error <= _ROUNDING_FLOOR):
            break
        step = _newton_step(gram, x, gradient, p)
        decrement = float(-(gradient @ step))
        relative = step / x
        t = min(1.0, _MAX_LOG_STEP / max(float(np.max(np.abs(relative))), _EPS))
        # Armijo cannot see a decrease below the rounding of φ (whose quadratic term rounds
        # like ½ xᵀ|G|x); near Pareto-stationary gradients x is huge and that happens early
        rounding = 64.0 * _EPS * (0.5 * float(x @ np.abs(gram) @ x) + abs(_barrier(x, p)))
        local = decrement <= max(_LOCAL_DECREMENT, rounding)
        start = _objective(gram, x, p)
        while True:
            trial = x * np.exp(t * relative)
            # a step to where a power overflows (x_i ~ 1e-300 for large α) is too long
            finite = bool(np.all(np.isfinite(trial ** (-p - 1.0))))
            if finite and (local or _objective(gram, trial, p) <= start - 0.25 * t * decrement):
                break
            t *= 0.5
            if t < 1e-12:
                return best, best_error, iterations
        x = trial
    return best, best_error, iterations


def solve_alpha_fair(gram: ArrayLike, alpha: float) -> AlphaFairSolution:
    r"""Solve FairGrad's system ``G x = x^(−1/α)`` (elementwise, ``x > 0``) to machine precision.

    For ``α = 1`` it is Nash-MTL's ``x_i (G x)_i = 1``. The system is the stationarity
    condition of the strictly convex ``½ xᵀGx + Σ_i f(x_i)`` with ``f'(x) = −x^(−1/α)``, so it
    has at most one solution; it has one exactly when no non-negative combination of the
    gradients vanishes, i.e. when they are not Pareto-stationary. That is checked first, on
    the cosine matrix, with [`mgda_weights`][moopt.mgda_weights]' solver.

    The Gram is divided by its largest diagonal entry ``s`` (the solution of ``G/s`` times
    ``s^(−α/(1+α))`` solves ``G``), then a damped Newton method with multiplicative steps
    runs to rounding level (``_solve_normalised``). ``α = 0`` gives uniform weights ``1/k``
    (the linear scalarisation, as in TorchJD).

    Parameters
    ----------
    gram : array_like
        The ``k × k`` Gram matrix ``G`` of the raw gradients.
    alpha : float
        The fairness parameter ``α ≥ 0``.

    Returns
    -------
    AlphaFairSolution
        The solution, whether it exists, its backward error and the iteration count.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [1.0, 1.0]])  # rows are the gradients
    >>> x = solve_alpha_fair(g @ g.T, alpha=1.0).weights
    >>> np.round(x * (g @ g.T @ x), 12)  # Nash-MTL: x_i (Gx)_i = 1
    array([1., 1.])
    """
    g = as_square_gram(gram)
    a = as_nonnegative_scalar(alpha, "alpha")
    k = len(g)
    if a == 0.0:
        return AlphaFairSolution(np.full(k, 1.0 / k), True, 0.0, 0)
    norms = np.sqrt(np.diag(g))
    if np.any(norms <= 0):
        return AlphaFairSolution(np.zeros(k), False, 0.0, 0)
    cosines = g / np.outer(norms, norms)
    if solve_mgda(cosines).squared_norm <= PARETO_STATIONARY_RTOL:
        return AlphaFairSolution(np.zeros(k), False, 0.0, 0)
    scale = float(norms.max() ** 2)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        x, error, iterations = _solve_normalised(g / scale, 1.0 / a)
    weights: FloatArray = x * scale ** (-a / (1.0 + a))
    return AlphaFairSolution(weights, True, error, iterations)


class FairGradBalancer(Balancer):
    r"""FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024).

    FairGrad treats the first-order decrease ``u_i = g_iᵀd`` of each objective along the
    update ``d`` as a utility and allocates it α-fairly: ``d`` maximises
    ``Σ_i u_i^(1−α)/(1−α)`` (``Σ_i log u_i`` for ``α = 1``) over a ball ``‖d‖ ≤ ε``. Writing
    ``d = Σ_i w_i g_i``, the optimality condition is, elementwise (Eq. 4 of the paper),

    ```text
    G w = w^(−1/α),   w > 0,   G_ij = g_iᵀ g_j,
    ```

    i.e. ``u_i = w_i^(−1/α)``: an objective whose gradient gets a small weight is still
    lowered by a large amount. ``α = 0`` is the plain average (weights ``1/k``), ``α = 1``
    is proportional fairness (Nash-MTL's ``w_i (Gw)_i = 1``), ``α → ∞`` tends to max-min
    fairness. The weights are the solution itself, not normalised, as in TorchJD (so they do
    not sum to 1, and they scale as ``s^(−α/(1+α))`` when the Gram is scaled by ``s``; for
    ``α = 1`` the direction has norm ``‖d‖ = √k``).

    TorchJD and the official code solve the system approximately with
    ``scipy.optimize.least_squares``; here it is solved exactly, to machine precision
    (`solve_alpha_fair`, a damped Newton method on the convex problem whose stationarity it
    is). Where no solution exists (a zero gradient, or Pareto-stationary gradients: ``0`` in
    their convex hull), the weights are 0 (no step) and
    [`last_solution`][moopt.FairGradBalancer] says so. The solve reaches rounding level
    (backward error ~1e-16) for ``0.2 ≤ α ≤ 5`` with gradient norms spread over six decades
    (tested); for larger ``α`` some entries may have to be smaller than the float range
    allows (``w_i = (Gw)_i^(−α)``), and the result is then approximate, as
    ``last_solution.backward_error`` shows.

    Parameters
    ----------
    alpha : float, default 1.0
        The fairness parameter ``α ≥ 0``. TorchJD requires it (no default); 1.0 is LibMTL's
        default (``FairGrad_alpha``).

    Attributes
    ----------
    last_solution : AlphaFairSolution or None
        The solution of the last [`weights`][moopt.Balancer.weights] call.

    Examples
    --------
    >>> import numpy as np
    >>> from moopt.balancers.fairgrad import FairGradBalancer
    >>> g = np.array([[1.0, 0.0], [0.0, 4.0]])  # rows are the gradients
    >>> w = FairGradBalancer().weights([1.0, 1.0], g @ g.T)
    >>> w
    array([1.  , 0.25])
    >>> g @ (w @ g)  # each objective falls by 1 / w_i (α = 1)
    array([1., 4.])
    """

    requires_gram = True
    weights_sum_to_one = False

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = as_nonnegative_scalar(alpha, "alpha")
        self.last_solution: AlphaFairSolution | None = None

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        assert gram is not None
        self.last_solution = solve_alpha_fair(gram, self.alpha)
        return self.last_solution.weights.copy()

    def _config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.alpha = as_nonnegative_scalar(state["alpha"], "state['alpha']")
