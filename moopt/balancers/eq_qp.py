"""Solution 2: the equality-constrained QP on log-loss gradients (for fine-tuning)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from moopt.balancers.base import Balancer, plain_floor
from moopt.solvers import QPSolution, mgda_weights, solve_eq_qp
from moopt.validation import FloatArray, as_loss_floor, as_loss_floor_setting, shifted_losses

__all__ = ["RENORMALISATION_RTOL", "EqQPBalancer"]

RENORMALISATION_RTOL = 1e-3
"""The guard acts when ``Σ_i w_i/ℓ_i ≤ RENORMALISATION_RTOL · Σ_i |w_i/ℓ_i|``."""


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


class EqQPBalancer(Balancer):
    r"""Balanced steps: every (log-)loss decreases at the same first-order rate.

    Each step solves ``min ½ wᵀQw`` subject to ``Σ_i w_i = 1`` (no sign constraint) in closed form
    ([`moopt.solvers.eq_qp_weights`][moopt.solvers.eq_qp_weights]). At the solution ``Q w = μ 1``:
    the direction has the same inner product ``μ`` with every gradient.

    With ``log_losses=True`` (the method of the paper) ``Q`` is the Gram of the log-loss
    gradients ``h_i = ∇L_i / ℓ_i`` with ``ℓ_i = L_i − loss_floor``, i.e. ``Q_h = D Q D`` with
    ``D = diag(1/ℓ)``, so the direction lowers every ``log ℓ_i`` at the same rate. The
    solution ``w`` is mapped back to raw-gradient weights ``w_i/ℓ_i`` and rescaled by
    ``c = 1 / Σ_i (w_i/ℓ_i)`` so that they sum to 1; the direction is unchanged.

    **Guard.** Because ``w`` may be negative, ``Σ_i w_i/ℓ_i`` can approach 0 or turn negative;
    rescaling by it would then blow the step up or turn it into ascent on every log-loss.
    Whenever ``Σ_i w_i/ℓ_i > RENORMALISATION_RTOL · Σ_i |w_i/ℓ_i|`` the result is exactly the
    rescaled balanced one; otherwise the balancer falls back to the MGDA weights ``α`` on the
    same log-loss Gram (``α ≥ 0``, a direction that still decreases every log-loss to first
    order), rescaled in the same way, and sets [`last_guarded`][moopt.EqQPBalancer].

    With ``log_losses=False`` it returns the QP solution on the raw Gram itself.

    Parameters
    ----------
    log_losses : bool, default True
        Balance the log-loss gradients (True) or the raw gradients (False).
    loss_floor : float or array_like, default 0.0
        The floor ``m_i`` in ``ℓ_i = L_i − m_i``; losses must exceed it when
        ``log_losses`` is true.

    Attributes
    ----------
    last_solution : QPSolution or None
        The QP solution of the last [`weights`][moopt.Balancer.weights] call (``exact`` tells
        whether the singular-Gram fallback of [`moopt.solvers`][moopt.solvers] was used).
    last_guarded : bool
        Whether the last call used the renormalisation guard.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [0.0, 2.0]])  # rows are the raw gradients
    >>> losses = np.array([1.0, 4.0])
    >>> w = EqQPBalancer().weights(losses, g @ g.T)
    >>> w
    array([0.5, 0.5])
    >>> (g @ (w @ g)) / losses  # the same rate of decrease for both log-losses
    array([0.5, 0.5])
    """

    requires_gram = True

    def __init__(self, log_losses: bool = True, loss_floor: float | ArrayLike = 0.0) -> None:
        self.log_losses = _check_flag(log_losses, "log_losses")
        self.loss_floor = as_loss_floor_setting(loss_floor)
        self.last_solution: QPSolution | None = None
        self.last_guarded = False

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        assert gram is not None
        self.last_guarded = False
        if not self.log_losses:
            self.last_solution = solve_eq_qp(gram)
            return self.last_solution.weights
        shifted = shifted_losses(losses, as_loss_floor(self.loss_floor, len(losses)))
        log_gram = gram / np.outer(shifted, shifted)
        self.last_solution = solve_eq_qp(log_gram)
        raw = self.last_solution.weights / shifted
        total = raw.sum()
        if total <= RENORMALISATION_RTOL * np.abs(raw).sum():
            self.last_guarded = True
            raw = mgda_weights(log_gram) / shifted
        normalised: FloatArray = raw / raw.sum()
        return normalised

    def _config(self) -> dict[str, Any]:
        return {"log_losses": self.log_losses, "loss_floor": plain_floor(self.loss_floor)}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.log_losses = _check_flag(state["log_losses"], "state['log_losses']")
        self.loss_floor = as_loss_floor_setting(state["loss_floor"], "state['loss_floor']")
