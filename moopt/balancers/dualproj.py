r"""DualProj: the mean gradient projected onto the dual cone of the gradients."""

from __future__ import annotations

from moopt.balancers._preference import PreferenceBalancer, preference_or_default
from moopt.solvers import dual_cone_weights
from moopt.validation import FloatArray

__all__ = ["DualProjBalancer"]


class DualProjBalancer(PreferenceBalancer):
    r"""DualProj: project the preference-weighted gradient onto the dual cone of the gradients.

    The combination ``Σ_i p_i g_i`` (by default the mean gradient, ``p_i = 1/k``) is projected
    onto the dual cone ``{x : g_jᵀx ≥ 0 for every j}``, the directions that conflict with no
    objective (TorchJD's `DualProj`; Equation 11 of Lopez-Paz and Ranzato, *Gradient Episodic
    Memory for Continual Learning*, 2017):

    $$d = J^\top w, \qquad w = \operatorname{argmin}\limits_{w \ge p} w^\top Q w,$$

    solved on the Gram alone by the exact active-set solver
    [`dual_cone_weights`][moopt.solvers.dual_cone_weights]. When the mean gradient conflicts with
    no objective it is kept (``w = p``). The weights are at least ``p``, do not sum to 1 and do
    not depend on the overall scale of the gradients; the losses are not used.

    TorchJD solves the same QP with quadprog on a regularised Gram (``norm_eps``,
    ``reg_eps = 1e-4``); this class agrees with its projector at ``norm_eps = reg_eps = 0``.

    Parameters
    ----------
    pref_vector : array_like, optional
        The preference ``p`` (one entry per objective, which fixes ``k``); default ``1/k``
        for every objective.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [-2.0, 1.0]])  # the mean (−½, ½) conflicts with g_1
    >>> w = DualProjBalancer().weights([1.0, 1.0], g @ g.T)
    >>> w
    array([1. , 0.5])
    >>> g @ (w @ g)  # the projection (0, ½) no longer conflicts
    array([0. , 0.5])
    """

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        assert gram is not None
        k = len(losses)
        return dual_cone_weights(gram, preference_or_default(self.pref_vector, k, 1.0 / k))
