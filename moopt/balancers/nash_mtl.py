r"""Nash-MTL: the Nash bargaining solution among the objectives (Navon et al., ICML 2022)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from moopt.balancers.base import Balancer
from moopt.balancers.fairgrad import AlphaFairSolution, solve_alpha_fair
from moopt.validation import FloatArray, as_nonnegative_scalar

__all__ = ["NashMTLBalancer"]


class NashMTLBalancer(Balancer):
    r"""Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022).

    The objectives bargain over the update ``d``: each one's utility is its first-order
    decrease ``g_iᵀd``, and the Nash bargaining solution maximises ``Σ_i log(g_iᵀd)`` over a
    ball ``‖d‖ ≤ ε``. The paper shows that, up to scale, ``d = Σ_i α_i g_i`` with ``α`` the
    solution of, elementwise,

    ```text
    G α = 1/α,   i.e.   α_i (G α)_i = 1 for every i,   α > 0,   G_ij = g_iᵀ g_j,
    ```

    so every objective falls by ``g_iᵀd = 1/α_i``: the product of the decreases is what is
    maximised, not their sum. Then ``‖d‖² = αᵀGα = Σ_i α_i (Gα)_i = k``.

    The paper and TorchJD (``NashMTL``, adapted from the official code) solve the condition
    approximately, by a sequence of at most 20 convex programs per step warm-started from the
    previous step (so their result depends on past steps). Here ``α`` is the exact solution,
    to machine precision, of the same condition: the minimiser of the strictly convex
    ``½ αᵀGα − Σ_i log α_i`` by a damped Newton method (FairGrad's solver with ``α = 1``,
    `moopt.balancers.fairgrad.solve_alpha_fair`); the balancer is stateless. As in TorchJD,
    the weights are ``α`` itself, scaled down so that ``‖d‖ ≤ max_norm`` when ``max_norm > 0``
    (with the default 1 and ``k ≥ 2`` always, since ``‖d‖ = √k``): the weights ``α·max_norm/√k``
    still satisfy ``w_i (Gw)_i = max_norm²/k``, equal for all i. They do not sum to 1.

    Differences from TorchJD: ``n_tasks`` is not needed (``k`` comes from the inputs);
    ``update_weights_every`` and ``optim_niter`` are not offered (they trade accuracy for the
    cost of the approximate solver; the exact solve for k = 3 takes about half a
    millisecond). Where the condition has no solution (a zero gradient, or Pareto-stationary
    gradients: ``0`` in their convex hull, see `moopt.balancers.fairgrad.PARETO_STATIONARY_RTOL`)
    the weights are 0 (no step); TorchJD then keeps its solver's last iterate.

    Parameters
    ----------
    max_norm : float, default 1.0
        The largest norm of the update ``d = Σ_i w_i g_i``; 0 disables the scaling (then
        ``‖d‖ = √k``). TorchJD's default.

    Attributes
    ----------
    last_solution : AlphaFairSolution or None
        The solution of ``G α = 1/α`` of the last [`weights`][moopt.Balancer.weights] call
        (before the ``max_norm`` scaling), with its backward error.

    Examples
    --------
    >>> import numpy as np
    >>> from moopt.balancers.nash_mtl import NashMTLBalancer
    >>> g = np.array([[1.0, 0.0], [0.0, 4.0]])  # rows are the gradients
    >>> NashMTLBalancer(max_norm=0.0).weights([1.0, 1.0], g @ g.T)  # α_i (Gα)_i = 1
    array([1.  , 0.25])
    >>> w = NashMTLBalancer().weights([1.0, 1.0], g @ g.T)  # scaled to ‖d‖ = 1
    >>> w * np.sqrt(2)  # ‖d‖ = √2 before the scaling
    array([1.  , 0.25])
    """

    requires_gram = True
    weights_sum_to_one = False

    def __init__(self, max_norm: float = 1.0) -> None:
        self.max_norm = as_nonnegative_scalar(max_norm, "max_norm")
        self.last_solution: AlphaFairSolution | None = None

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        assert gram is not None
        self.last_solution = solve_alpha_fair(gram, 1.0)
        weights = self.last_solution.weights.copy()
        if self.max_norm > 0 and self.last_solution.exists:
            norm = float(np.sqrt(max(float(weights @ gram @ weights), 0.0)))
            if norm > self.max_norm:
                weights *= self.max_norm / norm
        return weights

    def _config(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.max_norm = as_nonnegative_scalar(state["max_norm"], "state['max_norm']")
