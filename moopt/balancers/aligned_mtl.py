r"""Aligned-MTL: align the gradients' principal components (Senushkin et al., CVPR 2023)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

from moopt.balancers.base import Balancer
from moopt.validation import FloatArray, as_finite_vector

__all__ = ["AlignedMTLBalancer", "ScaleMode", "aligned_mtl_weights"]

ScaleMode = Literal["min", "median", "rmse"]
_SCALE_MODES = get_args(ScaleMode)  # the check and the type cannot disagree
_EPS = float(np.finfo(np.float64).eps)


def _check_scale_mode(value: Any) -> ScaleMode:
    if value not in _SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {_SCALE_MODES}, got {value!r}")
    return value  # type: ignore[no-any-return]


def _check_pref_vector(value: ArrayLike | None, name: str = "pref_vector") -> FloatArray | None:
    """Check a preference vector: finite, non-negative, not all zero (or None for uniform)."""
    if value is None:
        return None
    pref = as_finite_vector(value, name)
    if np.any(pref < 0):
        raise ValueError(f"{name} must be ≥ 0, got {pref.tolist()}")
    if not np.any(pref > 0):
        raise ValueError(f"{name} must not all be zero, got {pref.tolist()}")
    return pref


def aligned_mtl_weights(gram: FloatArray, pref: FloatArray, scale_mode: ScaleMode) -> FloatArray:
    r"""Return the Aligned-MTL weights ``√s · V Λ^(−½) Vᵀ pref`` for a checked Gram.

    ``G = V Λ Vᵀ`` keeps the eigenvalues above ``λ_max · k · ε`` (``ε`` the float64 machine
    epsilon), TorchJD's and the official code's numerical rank; ``s`` is the smallest
    (``"min"``), the lower median (``"median"``, as ``torch.median``) or the mean
    (``"rmse"``) of the kept eigenvalues. With no eigenvalue kept (all gradients zero) the
    weights are ``pref`` itself.
    """
    k = len(gram)
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    keep = eigenvalues > float(eigenvalues.max()) * k * _EPS
    if not keep.any():
        return pref.copy()
    kept, basis = eigenvalues[keep], eigenvectors[:, keep]
    if scale_mode == "min":
        scale = float(kept.min())
    elif scale_mode == "median":
        scale = float(np.sort(kept)[(len(kept) - 1) // 2])
    else:
        scale = float(kept.mean())
    weights: FloatArray = np.sqrt(scale) * (basis @ ((basis.T @ pref) / np.sqrt(kept)))
    return weights


class AlignedMTLBalancer(Balancer):
    r"""Aligned-MTL (Senushkin et al., CVPR 2023), as TorchJD's ``AlignedMTL``.

    From "Independent Component Alignment for Multi-Task Learning" (Algorithm 1). Aligned-MTL
    removes the dominance and conflict of the gradients by replacing the gradient matrix
    ``J`` (rows ``g_i``, singular value decomposition ``J = V Σ Rᵀ``) by the matrix with the
    same singular vectors and all singular values equal, i.e. condition number 1:

    ```text
    Ĵ = √s · V Rᵀ = √s · V Λ^(−½) Vᵀ J,      G = J Jᵀ = V Λ Vᵀ,  Λ = Σ²,
    d = Ĵᵀ pref = Σ_i w_i g_i   with   w = √s · V Λ^(−½) Vᵀ pref,
    ```

    where ``s`` is the smallest kept eigenvalue of ``G`` (``scale_mode="min"``, the paper's
    choice and TorchJD's default; ``"median"`` and ``"rmse"``, the mean, are TorchJD's other
    options) and ``pref`` the objectives' preference (``1/k`` each by default). Everything
    comes from the eigendecomposition of the Gram; eigenvalues below ``λ_max · k · ε`` count
    as zero, as in TorchJD, so ``V`` spans the gradients. The weights do not sum to 1; they
    do not depend on the scale of the Gram.

    For gradients whose lengths differ by many decades, ``G``'s small eigenvalues carry the
    rounding of the large ones (as for any method that decomposes ``G``); the result then
    depends on the last digits of the Gram.

    Parameters
    ----------
    pref_vector : array_like, optional
        The preference ``pref`` over the objectives (non-negative, not all zero); it fixes
        ``k``. Default: ``1/k`` for each objective (TorchJD's default, the mean).
    scale_mode : {"min", "median", "rmse"}, default "min"
        Which eigenvalue of the Gram sets the common singular value (TorchJD's default).

    Examples
    --------
    >>> import numpy as np
    >>> from moopt.balancers.aligned_mtl import AlignedMTLBalancer
    >>> g = np.array([[1.0, 0.0], [0.0, 3.0]])  # rows are the gradients
    >>> w = AlignedMTLBalancer().weights([1.0, 1.0], g @ g.T)
    >>> w  # both aligned gradients get the smallest singular value, 1
    array([0.5       , 0.16666667])
    >>> w @ g
    array([0.5, 0.5])
    """

    requires_gram = True
    weights_sum_to_one = False

    def __init__(self, pref_vector: ArrayLike | None = None, scale_mode: ScaleMode = "min") -> None:
        self.pref_vector = _check_pref_vector(pref_vector)
        self.scale_mode: ScaleMode = _check_scale_mode(scale_mode)

    @property
    def num_objectives(self) -> int | None:
        """The number of objectives, fixed by ``pref_vector`` when it is given."""
        return None if self.pref_vector is None else len(self.pref_vector)

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        assert gram is not None
        k = len(losses)
        pref = np.full(k, 1.0 / k) if self.pref_vector is None else self.pref_vector
        return aligned_mtl_weights(gram, pref, self.scale_mode)

    def _config(self) -> dict[str, Any]:
        return {
            "pref_vector": None if self.pref_vector is None else self.pref_vector.tolist(),
            "scale_mode": self.scale_mode,
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.pref_vector = _check_pref_vector(state["pref_vector"], "state['pref_vector']")
        self.scale_mode = _check_scale_mode(state["scale_mode"])
