"""The effective λ: the rate–distortion trade-off a balanced update actually follows.

A balancer weights the rate and the distortion ``D = λ·255²·MSE`` by ``w_R`` and ``w_D``, so
its update follows ``R + (λ·w_D/w_R)·255²·MSE``: the effective λ. The trainer logs it, warns
when it stays far from the user's λ, and the end-of-run summary says how far it ended.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "EFFECTIVE_LAMBDA_WINDOW",
    "LAMBDA_TOLERANCE",
    "effective_lambda",
    "lambda_offset",
    "mean_effective_lambda",
]

#: ``metrics.json``'s ``effective_lambda`` is that of the mean weights of this many last steps.
EFFECTIVE_LAMBDA_WINDOW = 50
#: The effective λ counts as off the user's λ outside ``[λ/this, λ·this]`` (warning and note).
LAMBDA_TOLERANCE = 2.0


def effective_lambda(lmbda: float, weights: np.ndarray) -> float:
    """``λ · w_D / w_R``: the trade-off the balanced update actually follows."""
    w_rate, w_distortion = float(weights[0]), float(weights[1])
    return math.inf if w_rate == 0 else lmbda * w_distortion / w_rate


def mean_effective_lambda(lmbda: float, weights: Sequence[Sequence[float]]) -> float:
    """Return the trade-off several steps follow together: ``λ · mean(w_D) / mean(w_R)``.

    ``weights`` holds each step's ``(w_R, w_D)``; NaN for none. Not the mean of the per-step
    ratios: a targeted Gram-based balancer passes ``w_R`` through zero while it holds a rate,
    and those steps' ratios, huge and of either sign, would decide that mean.
    """
    if len(weights) == 0:
        return math.nan
    return effective_lambda(lmbda, np.mean(np.asarray(weights, dtype=float), axis=0))


def lambda_offset(lmbda: float, effective: float) -> str | None:
    """Say how far the effective λ is from ``lmbda`` ("8.1× below --lambda").

    None when it is within a factor ``LAMBDA_TOLERANCE`` of it.
    """
    ratio = effective / lmbda
    if 1 / LAMBDA_TOLERANCE <= ratio <= LAMBDA_TOLERANCE:
        return None
    if math.isfinite(ratio) and ratio > 0:
        return f"{max(ratio, 1 / ratio):.3g}× {'below' if ratio < 1 else 'above'} --lambda"
    return "with no positive relation to --lambda"
