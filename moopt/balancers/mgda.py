"""MGDA: the min-norm point of the convex hull of the objective gradients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

from moopt.balancers.base import Balancer, plain_floor
from moopt.solvers import mgda_weights
from moopt.validation import FloatArray, as_loss_floor, as_loss_floor_setting, shifted_losses

__all__ = ["MGDABalancer", "Normalization"]

Normalization = Literal["none", "loss", "l2"]
_NORMALIZATIONS = get_args(Normalization)  # the check and the type cannot disagree


def _check_normalization(value: Any) -> Normalization:
    if value not in _NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {value!r}")
    return value  # type: ignore[no-any-return]


class MGDABalancer(Balancer):
    """Multiple-gradient descent (Sener & Koltun, 2018): the min-norm convex combination.

    Each step solves ``min ‖Σ_i α_i s_i g_i‖²`` over the simplex ``α ≥ 0, Σ α_i = 1``
    ([`moopt.solvers.mgda_weights`][moopt.solvers.mgda_weights]) for gradients ``g_i`` rescaled by
    ``s_i``:

    * ``"none"``: ``s_i = 1``, the raw gradients (their sizes, so λ, decide the result);
    * ``"loss"``: ``s_i = 1/ℓ_i`` with ``ℓ_i = L_i − loss_floor``, i.e. the gradients of
      ``log ℓ_i`` (invariant to rescaling any objective);
    * ``"l2"``: ``s_i = 1/‖g_i‖`` (unit gradients; a zero gradient keeps ``s_i = 1``).

    The returned raw-gradient weights are ``w_i ∝ α_i s_i``, rescaled to sum to 1: the same
    direction as the min-norm point, with non-negative weights.

    Parameters
    ----------
    normalization : {"none", "loss", "l2"}, default "none"
        How the gradients are rescaled before the min-norm problem.
    loss_floor : float or array_like, default 0.0
        The floor ``m_i`` subtracted from each loss for ``"loss"``; losses must exceed it.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [0.0, 3.0]])  # rows are the raw gradients
    >>> MGDABalancer().weights([1.0, 1.0], g @ g.T)
    array([0.9, 0.1])
    >>> MGDABalancer("l2").weights([1.0, 1.0], g @ g.T)  # equal angles to both gradients
    array([0.75, 0.25])
    """

    requires_gram = True

    def __init__(
        self, normalization: Normalization = "none", loss_floor: float | ArrayLike = 0.0
    ) -> None:
        self.normalization: Normalization = _check_normalization(normalization)
        self.loss_floor = as_loss_floor_setting(loss_floor)

    def _scales(self, losses: FloatArray, gram: FloatArray) -> FloatArray:
        """Return the factors ``s_i`` applied to the raw gradients ("loss" or "l2")."""
        if self.normalization == "loss":
            floor = as_loss_floor(self.loss_floor, len(losses))
            return 1.0 / shifted_losses(losses, floor)
        if self.normalization == "l2":
            norms = np.sqrt(np.diag(gram))
            return np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 1.0)
        raise AssertionError(f"unreachable normalization {self.normalization!r}")

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        assert gram is not None
        if self.normalization == "none":
            return mgda_weights(gram)
        scales = self._scales(losses, gram)
        alpha = mgda_weights(gram * np.outer(scales, scales))
        raw = alpha * scales
        normalised: FloatArray = raw / raw.sum()
        return normalised

    def _config(self) -> dict[str, Any]:
        return {"normalization": self.normalization, "loss_floor": plain_floor(self.loss_floor)}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.normalization = _check_normalization(state["normalization"])
        self.loss_floor = as_loss_floor_setting(state["loss_floor"], "state['loss_floor']")
