r"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from moopt.balancers.base import Balancer
from moopt.solvers import solve_mgda
from moopt.validation import FloatArray, as_nonnegative_scalar

__all__ = ["GRAM_NORM_RESOLUTION", "CAGradBalancer", "cagrad_weights"]

_MAX_ITERATIONS = 200
GRAM_NORM_RESOLUTION = 1e-7
"""Smallest ``‖g_w‖ / ‖J‖_F`` told apart from 0: a norm computed from a Gram, ``√(wᵀGw)``,
carries an error of about ``√ε ‖J‖_F`` (``ε`` the float64 epsilon, ``√ε ≈ 1.5e-8``)."""
_EPS = float(np.finfo(np.float64).eps)

_Sample = tuple[float, FloatArray, float]
"""``(σ, w(σ), ‖p(σ)‖)``: the shift, MGDA's weights on the shifted gradients, ``‖Σ_i w_i g_i‖``."""


def _gram_factor(gram: FloatArray) -> FloatArray:
    """Return ``A`` (k × k) with ``A Aᵀ = G``, each row accurate relative to its own length.

    ``G = N C N`` (``N`` the gradient norms, ``C`` the cosines) and ``C = B Bᵀ`` from its
    eigendecomposition, so ``A = N B``: rows of very different lengths keep their digits.
    Zero gradients give zero rows.
    """
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    safe = np.where(norms > 0, norms, 1.0)
    cosines = gram / np.outer(safe, safe)
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (cosines + cosines.T))
    factor: FloatArray = norms[:, None] * (eigenvectors * np.sqrt(np.maximum(eigenvalues, 0.0)))
    return factor


def _shifted_min_norm(
    gram: FloatArray, factor: FloatArray, sigma: float
) -> tuple[FloatArray, float]:
    """Run MGDA on the gradients shifted by ``σ g₀``: return ``w(σ)`` and ``‖Σ_i w_i g_i‖``.

    The shifted gradients are represented by the rows ``a_i + σ ā`` of the factor ``A``
    (``ā`` their mean), whose Gram is positive semi-definite by construction; forming
    ``G + σ(b1ᵀ + 1bᵀ) + σ²‖g₀‖² 11ᵀ`` instead would cancel where ``g_i ≈ −σ g₀``.
    """
    shifted = factor + sigma * factor.mean(axis=0)
    weights = solve_mgda(shifted @ shifted.T).weights
    return weights, float(np.sqrt(max(float(weights @ gram @ weights), 0.0)))


def _closed_form_sigma(
    gram: FloatArray,
    radius: float,
    low: tuple[float, FloatArray],
    high: tuple[float, FloatArray],
) -> float | None:
    """Return the root ``σ`` of ``‖p(σ)‖ = rσ`` if ``w(σ)`` is affine between two samples.

    On a fixed support the MGDA weights of the shifted gradients are the equality-constrained
    minimiser of ``wᵀGw + 2σ bᵀw``, an affine function ``A + σB`` of ``σ``; then
    ``‖p(σ)‖² = AᵀGA + 2σ AᵀGB + σ² BᵀGB`` and the root solves a quadratic.
    """
    (s_low, w_low), (s_high, w_high) = low, high
    slope = (w_high - w_low) / (s_high - s_low)
    offset = w_low - s_low * slope
    a2 = radius * radius - float(slope @ gram @ slope)
    a1 = -2.0 * float(offset @ gram @ slope)
    a0 = -float(offset @ gram @ offset)
    if a2 <= 0:
        return None
    discriminant = a1 * a1 - 4.0 * a2 * a0
    if discriminant < 0:
        return None
    # the positive root, in the form that does not cancel (a0 ≤ 0 < a2)
    sqrt_discriminant = float(np.sqrt(discriminant))
    if a1 <= 0:
        root = (-a1 + sqrt_discriminant) / (2.0 * a2)
    else:
        root = -2.0 * a0 / (a1 + sqrt_discriminant)
    return root if s_low < root < s_high else None


def cagrad_weights(gram: FloatArray, c: float, norm_eps: float) -> FloatArray:
    r"""Return CAGrad's raw-gradient weights ``1/k + (r/‖g_w‖) w`` for a checked Gram.

    ``w`` minimises ``F(w) = g_wᵀg₀ + r‖g_w‖`` over the simplex, with ``g_w = Σ_i w_i g_i``,
    ``g₀ = Σ_i g_i/k`` and ``r = c‖g₀‖`` (see [`CAGradBalancer`][moopt.CAGradBalancer]).

    **How it is solved exactly.** Since ``r‖p‖ = min_{s>0} r(‖p‖²/(2s) + s/2)``, minimising
    ``F`` over ``p = g_w`` is minimising, jointly convex in ``(p, s)``,
    ``r/(2s)·‖p + σ g₀‖² + const`` with ``σ = s/r``: for fixed ``σ`` the minimiser is the
    min-norm point of the convex hull of the shifted gradients ``g_i + σ g₀``, i.e. MGDA
    ([`mgda_weights`][moopt.mgda_weights]' exact active-set solver) on their Gram (built from
    a factor of ``G`` whose rows keep their digits, `_gram_factor`), and the
    optimal ``σ`` is the root of ``‖p(σ)‖ = rσ``, where ``‖p(σ)‖/σ`` decreases. The root is
    bracketed in ``[σ_lo, max_i ‖g_i‖/r]`` and found by bisection in ``log σ`` until the MGDA
    support is the same at both ends; on that support ``w(σ)`` is affine, so the root solves a
    quadratic, which is accepted once MGDA at it has the same support.
    """
    k = len(gram)
    trace = float(np.trace(gram))
    mean_products = gram.sum(axis=1) / k
    mean_sq_norm = max(float(mean_products.sum()) / k, 0.0)
    radius = c * np.sqrt(mean_sq_norm)
    if trace <= 0 or radius <= 0:
        return np.full(k, 1.0 / k)
    threshold = max(norm_eps, GRAM_NORM_RESOLUTION) * np.sqrt(trace)

    factor = _gram_factor(gram)

    def sample(sigma: float) -> _Sample:
        weights, norm = _shifted_min_norm(gram, factor, sigma)
        return sigma, weights, norm

    high = sample(float(np.sqrt(np.max(np.diag(gram)))) / radius)
    low = sample(threshold / radius)
    if low[2] <= radius * low[0]:
        # the optimal ‖g_w‖ = rσ* is at most the threshold: TorchJD's "on the Pareto front"
        return np.zeros(k)
    # ‖p(σ)‖ ≤ max_i ‖g_i‖ = rσ_high; equality means the root is σ_high itself
    best = high if high[2] >= radius * high[0] else _find_root(gram, radius, low, high, sample)
    _, weights, norm = best
    if norm <= threshold:
        return np.zeros(k)
    result: FloatArray = np.full(k, 1.0 / k) + (radius / norm) * weights
    return result


def _find_root(
    gram: FloatArray,
    radius: float,
    low: _Sample,
    high: _Sample,
    sample: Callable[[float], _Sample],
) -> _Sample:
    """Find the root of ``‖p(σ)‖ − rσ``, positive at ``low`` and negative at ``high``."""
    tried_closed_form = False
    for _ in range(_MAX_ITERATIONS):
        support = low[1] > 0
        sigma = None
        if not tried_closed_form and np.array_equal(support, high[1] > 0):
            sigma = _closed_form_sigma(gram, radius, (low[0], low[1]), (high[0], high[1]))
        # after a rejected closed-form point, bisect once, so the bracket shrinks both ways
        tried_closed_form = sigma is not None
        if sigma is None:
            sigma = float(np.sqrt(low[0] * high[0]))
        candidate = sample(sigma)
        if tried_closed_form and np.array_equal(candidate[1] > 0, support):
            return candidate
        if high[0] - low[0] <= 4.0 * _EPS * high[0]:
            return candidate
        if candidate[2] > radius * candidate[0]:
            low = candidate
        else:
            high = candidate
    return low


class CAGradBalancer(Balancer):
    r"""Conflict-averse gradient descent (Liu et al., NeurIPS 2021), as TorchJD's ``CAGrad``.

    CAGrad looks for the update ``d`` that lowers the worst objective most, while staying
    within a ball around the average gradient ``g₀ = Σ_i g_i/k`` (Algorithm 1 of the
    paper):

    ```text
    max_d  min_i g_iᵀd   subject to   ‖d − g₀‖ ≤ c‖g₀‖.
    ```

    Its dual is a problem over the simplex: with ``g_w = Σ_i w_i g_i`` and ``r = c‖g₀‖``,

    ```text
    w* = argmin_{w ≥ 0, Σ w_i = 1}  g_wᵀg₀ + r‖g_w‖,    d = g₀ + (r/‖g_w*‖) g_w*,
    ```

    so the raw-gradient weights are ``1/k + (r/‖g_w*‖) w*``, which sum to ``1 + r/‖g_w*‖``
    (not to 1). ``c = 0`` gives the average gradient; the larger ``c``, the closer ``d`` is
    to MGDA's direction. Everything is computed from the Gram: ``g_wᵀg₀ = wᵀG1/k`` and
    ``‖g_w‖² = wᵀGw``. The sub-problem is solved exactly (to rounding), not by an iterative
    solver (see `cagrad_weights`).

    This is TorchJD's normalisation: the direction is not divided by ``1 + c²`` or ``1 + c``
    (the ``rescale`` option of the official code and LibMTL, default ``1 + c²`` there), and
    when ``‖g_w*‖ < norm_eps·‖J‖_F`` (``‖J‖_F² = trace G``; TorchJD compares the same ratio
    on its trace-normalised Gram) the weights are all 0: TorchJD's "approximately on the
    Pareto front". Note that with the default ``norm_eps`` this also zeroes the step whenever
    ``g_w*`` is a gradient 1e4 times shorter than the others together. A ``norm_eps`` below
    ``GRAM_NORM_RESOLUTION = 1e-7`` acts as 1e-7: a norm computed from the Gram is only
    resolved to about ``√ε ‖J‖_F ≈ 1.5e-8 ‖J‖_F``, so a shorter ``g_w*`` cannot be told from 0
    (nor its direction known). Unlike TorchJD,
    there is no absolute threshold on ``trace G`` (TorchJD returns 0 weights for
    ``trace G < norm_eps``, whatever the scale of the losses); when every gradient is 0, or
    ``c‖g₀‖ = 0``, the weights are ``1/k``.

    Parameters
    ----------
    c : float, default 0.5
        The radius of the ball around ``g₀``, relative to ``‖g₀‖`` (``c ≥ 0``). TorchJD
        requires it (no default); 0.5 is the default of the official code and of LibMTL.
    norm_eps : float, default 1e-4
        ``‖g_w*‖`` below ``norm_eps`` times ``‖J‖_F`` gives zero weights (TorchJD's default).

    Examples
    --------
    >>> import numpy as np
    >>> from moopt.balancers.cagrad import CAGradBalancer
    >>> g = np.array([[1.0, 0.0], [0.0, 1.0]])  # rows are the gradients
    >>> w = CAGradBalancer(c=0.5).weights([1.0, 1.0], g @ g.T)
    >>> np.round(w, 12)  # symmetric: w* = (½, ½), d = g₀ (1 + c‖g₀‖/‖g₀‖)
    array([0.75, 0.75])
    """

    requires_gram = True
    weights_sum_to_one = False

    def __init__(self, c: float = 0.5, norm_eps: float = 1e-4) -> None:
        self.c = as_nonnegative_scalar(c, "c")
        self.norm_eps = as_nonnegative_scalar(norm_eps, "norm_eps")

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        assert gram is not None
        return cagrad_weights(gram, self.c, self.norm_eps)

    def _config(self) -> dict[str, Any]:
        return {"c": self.c, "norm_eps": self.norm_eps}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.c = as_nonnegative_scalar(state["c"], "state['c']")
        self.norm_eps = as_nonnegative_scalar(state["norm_eps"], "state['norm_eps']")
