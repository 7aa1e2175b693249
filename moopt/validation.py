"""Input checks shared by every public entry point of `moopt`.

Each check runs before any work is done and raises an error whose message names the
argument, says what was wrong and what is allowed:

* [`TypeError`](https://docs.python.org/3/library/exceptions.html#TypeError) when the argument is
  not an array-like of real numbers at all;
* [`ValueError`](https://docs.python.org/3/library/exceptions.html#ValueError) when it is, but its
  shape, length or values are not allowed.

The checks return clean ``float64`` NumPy copies, so the solvers never see user-owned
memory, integers or other dtypes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "GRAM_PSD_RTOL",
    "GRAM_SYMMETRY_RTOL",
    "as_finite_vector",
    "as_gram",
    "as_loss_floor",
    "as_loss_floor_setting",
    "as_nonnegative_scalar",
    "as_positive_int",
    "as_square_gram",
    "shifted_losses",
]

GRAM_SYMMETRY_RTOL = 1e-5
"""Largest allowed ``|Q_ij - Q_ji|`` relative to ``max_i Q_ii`` (float32 Grams pass)."""

GRAM_PSD_RTOL = 1e-5
"""Most negative allowed eigenvalue of a Gram matrix, relative to its largest eigenvalue."""

FloatArray = NDArray[np.float64]


def _as_real_array(value: Any, name: str) -> FloatArray:
    """Convert ``value`` to a float64 array, or raise ``TypeError`` naming ``name``."""
    if value is None:
        raise TypeError(f"{name} must be an array-like of real numbers, got None")
    if isinstance(value, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be an array-like of real numbers, got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except Exception as error:  # e.g. ragged nested sequences
        raise TypeError(
            f"{name} must be an array-like of real numbers; it could not be converted ({error})"
        ) from error
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (float or int), got dtype {array.dtype}")
    return np.array(array, dtype=np.float64, copy=True)


def _describe_nonfinite(array: FloatArray) -> str:
    """Return where the NaN or infinite entries of ``array`` are, for an error message."""
    bad = np.argwhere(~np.isfinite(array))
    where = ", ".join(str(tuple(int(i) for i in idx)) for idx in bad[:4])
    if len(bad) > 4:
        where += ", ..."
    return f"index {where}" if array.ndim > 1 else f"entries {bad.ravel()[:4].tolist()}"


def as_finite_vector(value: ArrayLike, name: str, length: int | None = None) -> FloatArray:
    """Return ``value`` as a finite, non-empty float64 vector.

    Parameters
    ----------
    value : array_like
        A sequence of real numbers, e.g. one loss per objective.
    name : str
        The argument's name, used in error messages.
    length : int, optional
        The required number of entries (the number of objectives ``k``).

    Returns
    -------
    numpy.ndarray
        A float64 copy of shape ``(k,)``.

    Raises
    ------
    TypeError
        If ``value`` is not an array-like of real numbers.
    ValueError
        If it is not one-dimensional, is empty, has the wrong length, or holds NaN or ±inf.

    Examples
    --------
    >>> as_finite_vector([1, 2.5], "losses")
    array([1. , 2.5])
    """
    array = _as_real_array(value, name)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be one-dimensional (one value per objective), got shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"{name} must hold at least one objective, got an empty array")
    if length is not None and array.size != length:
        raise ValueError(f"{name} must have {length} entries (one per objective), got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got NaN or ±inf at {_describe_nonfinite(array)}")
    return array


def as_gram(value: ArrayLike | None, k: int, name: str = "gram") -> FloatArray:
    """Return ``value`` as a checked, exactly symmetric ``k × k`` Gram matrix.

    A Gram matrix ``Q_ij = g_iᵀ g_j`` is symmetric positive semi-definite. Rounding (e.g. a float32
    product on a GPU) may break both slightly, so the check allows an asymmetry of
    [`GRAM_SYMMETRY_RTOL`][moopt.validation.GRAM_SYMMETRY_RTOL] relative to the largest diagonal
    entry and a negative eigenvalue of [`GRAM_PSD_RTOL`][moopt.validation.GRAM_PSD_RTOL] relative to
    the largest eigenvalue; the returned matrix is the symmetric part ``(Q + Qᵀ) / 2``.

    Parameters
    ----------
    value : array_like or None
        The Gram matrix of the k objective gradients.
    k : int
        The number of objectives.
    name : str, default "gram"
        The argument's name, used in error messages.

    Returns
    -------
    numpy.ndarray
        A float64 symmetric copy of shape ``(k, k)``.

    Raises
    ------
    TypeError
        If ``value`` is not an array-like of real numbers.
    ValueError
        If it is None, not of shape ``(k, k)``, holds NaN or ±inf, is not symmetric, or is
        not positive semi-definite within the tolerances above.
    """
    if value is None:
        raise ValueError(
            f"{name} is required: this balancer needs the {k}×{k} Gram matrix of the objective "
            f"gradients, got None"
        )
    gram = _as_real_array(value, name)
    if gram.shape != (k, k):
        raise ValueError(
            f"{name} must have shape ({k}, {k}) for {k} objectives, got shape {gram.shape}"
        )
    if not np.all(np.isfinite(gram)):
        raise ValueError(f"{name} must be finite, got NaN or ±inf at {_describe_nonfinite(gram)}")
    diagonal = np.diag(gram)
    if np.any(diagonal < 0):
        raise ValueError(
            f"{name} is not a Gram matrix: its diagonal (the squared gradient norms) must be "
            f"≥ 0, got {diagonal.tolist()}"
        )
    scale = float(diagonal.max())
    asymmetry = float(np.max(np.abs(gram - gram.T)))
    if asymmetry > GRAM_SYMMETRY_RTOL * scale:
        raise ValueError(
            f"{name} must be symmetric: max |Q_ij - Q_ji| = {asymmetry:.3g} exceeds "
            f"{GRAM_SYMMETRY_RTOL:g} × max diagonal entry ({scale:.3g})"
        )
    gram = 0.5 * (gram + gram.T)
    if k > 1 and scale > 0:
        eigenvalues = np.linalg.eigvalsh(gram / scale)
        if eigenvalues[0] < -GRAM_PSD_RTOL * max(eigenvalues[-1], 0.0):
            raise ValueError(
                f"{name} must be positive semi-definite: its smallest eigenvalue "
                f"{eigenvalues[0] * scale:.3g} is below -{GRAM_PSD_RTOL:g} × its largest "
                f"({eigenvalues[-1] * scale:.3g})"
            )
    return gram


def as_square_gram(value: ArrayLike, name: str = "gram") -> FloatArray:
    """Return ``value`` as a checked Gram matrix, taking ``k`` from its shape.

    Raises
    ------
    TypeError
        If ``value`` is not an array-like of real numbers.
    ValueError
        If it is not a non-empty square matrix, or fails the checks of
        [`as_gram`][moopt.validation.as_gram].
    """
    shape = _as_real_array(value, name).shape
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{name} must be a square k×k matrix, got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{name} must be at least 1×1 (one objective), got an empty matrix")
    return as_gram(value, shape[0], name)


def as_loss_floor(value: ArrayLike, k: int, name: str = "loss_floor") -> FloatArray:
    """Return a loss floor (scalar or one per objective) broadcast to shape ``(k,)``.

    Raises
    ------
    TypeError
        If ``value`` is not a real number or an array-like of them.
    ValueError
        If it is not a scalar or a vector of length ``k``, or is not finite.
    """
    floor = _as_real_array(value, name)
    if floor.ndim == 0:
        floor = np.full(k, float(floor))
    if floor.shape != (k,):
        raise ValueError(
            f"{name} must be a scalar or have {k} entries (one per objective), "
            f"got shape {floor.shape}"
        )
    if not np.all(np.isfinite(floor)):
        raise ValueError(f"{name} must be finite, got {floor.tolist()}")
    return floor


def as_loss_floor_setting(value: ArrayLike, name: str = "loss_floor") -> float | FloatArray:
    """Check a loss floor given as one number for every objective, or one per objective.

    Returns
    -------
    float or numpy.ndarray
        The floor as a float, or as a float64 vector when one is given per objective.

    Raises
    ------
    TypeError
        If ``value`` is not a real number or an array-like of them.
    ValueError
        If it is not finite, or is neither a scalar nor a non-empty vector.
    """
    floor = _as_real_array(value, name)
    if floor.ndim == 0:
        if not np.isfinite(floor):
            raise ValueError(f"{name} must be finite, got {float(floor)}")
        return float(floor)
    return as_finite_vector(floor, name)


def shifted_losses(losses: FloatArray, floor: FloatArray, name: str = "losses") -> FloatArray:
    """Return ``ℓ = losses − floor``, checking that every entry is positive (logs are taken).

    Raises
    ------
    ValueError
        If some loss is not above its floor, naming the objective index and both values.
    """
    shifted = losses - floor
    bad = np.flatnonzero(shifted <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{i}] = {losses[i]:.6g} must be greater than loss_floor = {floor[i]:.6g}: "
            f"the balancer takes log(loss - loss_floor); lower loss_floor for this objective"
        )
    return shifted


def as_nonnegative_scalar(value: Any, name: str) -> float:
    """Return ``value`` as a finite float ≥ 0, or raise naming ``name``.

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If it is negative, NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if not np.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0, got {number}")
    return number


def as_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int ≥ 1, or raise naming ``name``.

    Raises
    ------
    TypeError
        If ``value`` is not an integer.
    ValueError
        If it is ≤ 0.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be ≥ 1, got {value}")
    return int(value)
