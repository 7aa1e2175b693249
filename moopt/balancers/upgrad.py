r"""UPGrad (Quinton & Rey, 2024): each gradient projected onto the dual cone, then averaged."""

from __future__ import annotations

import numpy as np

from moopt.balancers._preference import PreferenceBalancer, preference_or_default
from moopt.solvers import dual_cone_weights
from moopt.validation import FloatArray

__all__ = ["UPGradBalancer"]


class UPGradBalancer(PreferenceBalancer):
    r"""UPGrad: project every gradient onto the dual cone of all of them, and combine.

    The dual cone of the gradients, ``{x : g_jᵀx ≥ 0 for every j}``, holds the directions
    that conflict with none of them. UPGrad (*Jacobian Descent for Multi-Objective
    Optimization*, Quinton and Rey, 2024; TorchJD's `UPGrad`) projects each ``p_i g_i`` onto
    it and sums the projections:

    $$d = \sum_i \pi(p_i g_i), \qquad \pi(p_i g_i) = J^\top v^{(i)}, \quad
    v^{(i)} = \operatorname{argmin}\limits_{v \ge p_i e_i} v^\top Q v,$$

    so the raw-gradient weights are ``w = Σ_i v⁽ⁱ⁾``, computed from the Gram alone by the exact
    active-set solver [`dual_cone_weights`][moopt.solvers.dual_cone_weights] (k small QPs in k
    variables). With the default preference ``p_i = 1/k`` the result is the mean of the
    projected gradients, as in TorchJD. The direction conflicts with no objective
    (``g_jᵀd ≥ 0`` for all ``j``), each weight is at least ``p_i``, and the weights do not
    depend on the overall scale of the gradients; they do not sum to 1 (at least
    ``Σ_i p_i``). The losses are not used.

    TorchJD solves the same QPs with quadprog after dividing the Gram by its trace (a Gram of
    trace below ``norm_eps = 1e-4`` is replaced by 0) and adding ``reg_eps = 1e-4`` to its
    diagonal; this class solves them exactly, so it agrees with TorchJD's projector with
    ``norm_eps = reg_eps = 0`` (`tests/test_upgrad_dualproj.py`).

    Parameters
    ----------
    pref_vector : array_like, optional
        The preference ``p`` (one entry per objective, which fixes ``k``); default ``1/k``
        for every objective.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting gradients (rows)
    >>> w = UPGradBalancer().weights([1.0, 1.0], g @ g.T)
    >>> w
    array([1.  , 0.75])
    >>> g @ (w @ g)  # the direction conflicts with neither
    array([0.25, 0.5 ])
    """

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        assert gram is not None
        k = len(losses)
        preference = preference_or_default(self.pref_vector, k, 1.0 / k)
        weights = np.zeros(k)
        for i in range(k):
            scaled_unit = np.zeros(k)
            scaled_unit[i] = preference[i]
            weights += dual_cone_weights(gram, scaled_unit)
        return weights
