r"""ConFIG (Liu et al., ICLR 2025): the direction with equal cosines to every gradient."""

from __future__ import annotations

import numpy as np

from moopt.balancers._preference import PreferenceBalancer, preference_or_default
from moopt.solvers import SINGULAR_RTOL
from moopt.validation import FloatArray

__all__ = ["ConFIGBalancer"]

_TINY = float(np.finfo(np.float64).tiny)

_NORMALIZE_EPS = 1e-12
"""``torch.nn.functional.normalize``'s default ``eps``, with which TorchJD normalises ``Û⁺p``."""


class ConFIGBalancer(PreferenceBalancer):
    r"""ConFIG: the conflict-free direction with the same cosine to every gradient.

    ConFIG (Liu et al., *ConFIG: Towards Conflict-free Training of Physics Informed Neural
    Networks*, ICLR 2025) works with the unit gradients ``ĝ_i = g_i / ‖g_i‖`` (rows of ``Û``)
    and a preference ``p`` (default all ones); its direction (Equation 2; TorchJD's `ConFIG`) is

    $$u = \frac{\hat U^{+} p}{\|\hat U^{+} p\|}, \qquad
    d = \Bigl(\sum_i g_i^\top u\Bigr)\, u,$$

    a unit vector whose cosine with each gradient is proportional to ``p_i`` (when the
    gradients are linearly independent), scaled by the sum of the gradients' projections on
    it. On the Gram: ``Û⁺ = Ûᵀ C⁺`` with ``C = ÛÛᵀ`` the cosine matrix, so ``Û⁺p = Jᵀa`` with
    ``a_i = (C⁺p)_i / ‖g_i‖``, and the raw-gradient weights are

    $$w = \frac{\mathbf 1^\top Q a}{a^\top Q a}\, a .$$

    ``C⁺p`` is the exact solution of ``Cx = p`` when the gradients are linearly independent;
    otherwise the minimum-norm one, with eigenvalues of ``C`` below
    [`SINGULAR_RTOL`][moopt.solvers.SINGULAR_RTOL] times ``trace(C)`` taken as zero (TorchJD's
    `torch.linalg.pinv` on the unit gradients cuts at a relative singular value of about
    ``max(k, n)·2⁻⁵²``; the two agree except on nearly dependent gradients). A zero gradient gets
    weight 0, and if every gradient is zero so is every weight. The weights do not depend on the
    overall scale of the gradients and do not sum to 1; the losses are not used.

    As in TorchJD, ``Û⁺p`` is normalised as by `torch.nn.functional.normalize`, dividing by
    ``max(‖Û⁺p‖, 1e-12)``: when ``p`` has (almost) no component that the unit gradients can
    reach (e.g. two opposite gradients and ``p = (1, 1)``), the direction is (almost) zero
    instead of an amplified rounding error.

    Parameters
    ----------
    pref_vector : array_like, optional
        The preference ``p`` (one entry per objective, which fixes ``k``); default 1 for every
        objective, as in TorchJD.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [-1.0, 1.0]])
    >>> w = ConFIGBalancer().weights([1.0, 1.0], g @ g.T)
    >>> d = w @ g
    >>> g @ d / np.linalg.norm(g, axis=1) / np.linalg.norm(d)  # equal cosines
    array([0.38268343, 0.38268343])
    """

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        assert gram is not None
        k = len(losses)
        preference = preference_or_default(self.pref_vector, k, 1.0)
        norms = np.sqrt(np.diag(gram))
        nonzero = norms > 0
        inverse_norms = np.where(nonzero, 1.0 / np.where(nonzero, norms, 1.0), 0.0)
        cosines = gram * np.outer(inverse_norms, inverse_norms)
        eigenvalues, eigenvectors = np.linalg.eigh(cosines)
        keep = eigenvalues > SINGULAR_RTOL * max(float(np.trace(cosines)), _TINY)
        kept = eigenvectors[:, keep]
        coefficients = inverse_norms * (kept @ ((kept.T @ preference) / eigenvalues[keep]))
        products = gram @ coefficients
        squared_norm = max(float(coefficients @ products), _NORMALIZE_EPS**2)
        weights: FloatArray = coefficients * (float(products.sum()) / squared_norm)
        return weights
