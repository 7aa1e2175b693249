"""STCH: the smooth Tchebycheff scalarization, a soft maximum of the weighted excess losses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from moopt.balancers._loss_based import (
    as_optional_num_objectives,
    as_positive_scalar,
    saved_num_objectives,
    stable_softmax,
)
from moopt.balancers.base import Balancer
from moopt.validation import FloatArray, as_finite_vector

__all__ = ["IdealPoint", "STCHBalancer"]

IdealPoint = float | ArrayLike | Literal["running_min"]
"""The ideal point ``z``: one value for every objective, one per objective, or
``"running_min"``."""

_RUNNING_MIN = "running_min"


def _as_preference(value: ArrayLike, name: str = "preference") -> FloatArray:
    preference = as_finite_vector(value, name)
    if np.any(preference < 0):
        raise ValueError(f"{name} must be ≥ 0, got {preference.tolist()}")
    if not np.any(preference > 0):
        raise ValueError(f"{name} must not all be zero, got {preference.tolist()}")
    return preference


def _as_ideal_point(value: Any, name: str = "ideal_point") -> str | float | FloatArray:
    if isinstance(value, str):
        if value != _RUNNING_MIN:
            raise ValueError(
                f"{name} must be a number, one number per objective or {_RUNNING_MIN!r}, "
                f"got {value!r}"
            )
        return _RUNNING_MIN
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a real number or an array-like of them, got bool")
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
        if not np.isfinite(number):
            raise ValueError(f"{name} must be finite, got {number}")
        return number
    return as_finite_vector(value, name)


def _plain(value: float | str | FloatArray | None) -> float | str | list[float] | None:
    return value.tolist() if isinstance(value, np.ndarray) else value


def _fixed_length(*settings: float | str | FloatArray | None) -> int | None:
    """Return the k that vector settings fix, or None; raise if they disagree."""
    lengths = {len(s) for s in settings if isinstance(s, np.ndarray)}
    if len(lengths) > 1:
        raise ValueError(
            f"preference and ideal_point must have the same length (one entry per objective), "
            f"got lengths {sorted(lengths)}"
        )
    return lengths.pop() if lengths else None


class STCHBalancer(Balancer):
    r"""Smooth Tchebycheff scalarization: follow the gradient of a soft maximum of the losses.

    Lin, Zhang, Yang, Liu, Wang & Zhang, "Smooth Tchebycheff Scalarization for Multi-Objective
    Optimization", ICML 2024. The Tchebycheff scalarization ``max_i p_i (L_i − z_i)`` lowers
    the worst weighted excess over the ideal point ``z``; its smooth version is

    ```text
    S_μ(L) = μ · log Σ_i exp(p_i (L_i − z_i) / μ)
    max_i p_i (L_i − z_i)  ≤  S_μ(L)  ≤  max_i p_i (L_i − z_i) + μ log k
    ```

    and its gradient is ``∇S_μ = Σ_i w_i ∇L_i`` with the weights returned here:

    ```text
    w = softmax(p ⊙ (L − z) / μ) ⊙ p
    ```

    As ``μ → 0`` the weights go to ``p_i`` on the objective with the largest weighted excess
    (Tchebycheff), as ``μ → ∞`` to ``p_i / k`` (a weighted sum). They are non-negative, zero
    where ``p_i = 0``, and sum to ``Σ_i softmax_i · p_i``: to 1 for the default uniform
    ``p = 1``, not in general (``weights_sum_to_one`` is false).

    The preference ``p = 1`` is the paper's ``λ_i = 1/k`` up to scale:
    ``S_μ(L; p = 1) = k · S_{μ/k}(L; λ = 1/k)``. LibMTL's ``STCH`` (``STCH_mu = 1.0``, the
    default here) applies ``S_μ`` with ``p = 1``, ``z = 0`` to ``log(L_i / n_i)``, ``n_i`` the
    mean losses of the last warm-up epoch (the warm-up itself descends ``Σ_i log L_i``), times
    ``k``; to follow it after the warm-up, pass ``log(L_i / n_i)`` as the losses and multiply
    the weights by ``k / L_i`` (raw-gradient weights, as ``∇log(L_i/n_i) = ∇L_i / L_i``).

    **Ideal point.** ``ideal_point=0`` (default) is the ideal point of non-negative losses.
    ``"running_min"`` estimates it as the smallest value of each loss seen so far, the
    current call's included, so ``L_i − z_i ≥ 0`` and the objective furthest above its own
    best gets the most weight; that minimum is state. A fixed ``z`` may also be given per
    objective. [`update`][moopt.Balancer.update] is not used (``requires_update`` is false).

    **λ-dependent:** rescaling objective ``i`` by ``c`` (``λ·D``, with ``z_i`` scaled too,
    as 0 and the running minimum are) gives the same update as preference ``c·p_i`` on the
    unscaled objective: λ acts as a preference.

    Parameters
    ----------
    preference : array_like, optional
        The preference ``p_i ≥ 0`` (not all zero), one per objective; uniform ``p = 1`` by
        default.
    mu : float, default 1.0
        The smoothing ``μ`` (> 0), the default ``STCH_mu`` of LibMTL and of the authors'
        multi-task code. It is on the scale of ``p ⊙ (L − z)``: that code applies it to
        log-losses, while the authors' Pareto-set-learning code uses ``μ = 0.01`` on objectives
        normalised to ``[0, 1]``.
    ideal_point : float, array_like or "running_min", default 0.0
        The ideal point ``z``.
    num_objectives : int, optional
        The number of objectives ``k``; by default it is fixed by ``preference`` or a
        per-objective ``ideal_point``, or else by the first
        [`weights`][moopt.Balancer.weights] call.

    Attributes
    ----------
    running_min : numpy.ndarray or None
        The running minimum of the losses when ``ideal_point="running_min"`` (None before the
        first call, and for a fixed ideal point).

    Examples
    --------
    >>> import numpy as np
    >>> from moopt.balancers.stch import STCHBalancer
    >>> w = STCHBalancer(mu=0.5).weights([1.0, 2.0])  # the larger loss dominates ...
    >>> w
    array([0.11920292, 0.88079708])
    >>> bool(np.allclose(w, np.exp([2.0, 4.0]) / np.exp([2.0, 4.0]).sum()))
    True
    >>> STCHBalancer(mu=0.5, preference=[3.0, 1.0]).weights([1.0, 2.0])  # ... unless preferred
    array([2.64239123, 0.11920292])
    """

    requires_gram = False
    weights_sum_to_one = False

    def __init__(
        self,
        preference: ArrayLike | None = None,
        mu: float = 1.0,
        ideal_point: IdealPoint = 0.0,
        *,
        num_objectives: int | None = None,
    ) -> None:
        self.preference = None if preference is None else _as_preference(preference)
        self.mu = as_positive_scalar(mu, "mu")
        self.ideal_point = _as_ideal_point(ideal_point)
        fixed = _fixed_length(self.preference, self.ideal_point)
        self._k = as_optional_num_objectives(num_objectives)
        if fixed is not None and self._k is not None and fixed != self._k:
            raise ValueError(
                f"num_objectives={self._k}, but preference or ideal_point has {fixed} entries"
            )
        self._k = fixed if self._k is None else self._k
        self.running_min: FloatArray | None = None

    @property
    def num_objectives(self) -> int | None:
        """The number of objectives ``k``, or None until the first call fixes it."""
        return self._k

    def _ideal(self, losses: FloatArray) -> FloatArray:
        if isinstance(self.ideal_point, str):
            if self.running_min is None:
                return losses.copy()
            return np.minimum(self.running_min, losses)
        return np.broadcast_to(self.ideal_point, losses.shape).astype(np.float64)

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        ideal = self._ideal(losses)
        preference = np.ones(len(losses)) if self.preference is None else self.preference
        # far-apart finite values can overflow; the softmax takes ±inf scores as its limit,
        # and a zero preference makes its objective's score 0 whatever its excess
        with np.errstate(over="ignore", invalid="ignore"):
            scores = preference * (losses - ideal) / self.mu
        scores = np.where(preference > 0, scores, 0.0)
        weights: FloatArray = stable_softmax(scores) * preference
        if isinstance(self.ideal_point, str):
            self.running_min = ideal
        self._k = len(losses)
        return weights

    def _config(self) -> dict[str, Any]:
        return {
            "preference": _plain(self.preference),
            "mu": self.mu,
            "ideal_point": _plain(self.ideal_point),
            "num_objectives": self._k,
        }

    def _state(self) -> dict[str, Any]:
        running_min = None if self.running_min is None else self.running_min.copy()
        return {**self._config(), "running_min": running_min}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        saved = state["preference"]
        preference = None if saved is None else _as_preference(saved, "state['preference']")
        mu = as_positive_scalar(state["mu"], "state['mu']")
        ideal_point = _as_ideal_point(state["ideal_point"], "state['ideal_point']")
        k = saved_num_objectives(self._k, state["num_objectives"])
        fixed = _fixed_length(preference, ideal_point)
        if fixed is not None and fixed != k:
            raise ValueError(
                f"state['preference'] or state['ideal_point'] has {fixed} entries, but "
                f"state['num_objectives'] is {k}"
            )
        saved_min = state["running_min"]
        running_min = None
        if saved_min is not None:
            if not isinstance(ideal_point, str) or k is None:
                raise ValueError(
                    "state['running_min'] is set, but state['ideal_point'] is not "
                    f"{_RUNNING_MIN!r} or state['num_objectives'] is None"
                )
            running_min = as_finite_vector(saved_min, "state['running_min']", k)
        self.preference, self.mu, self.ideal_point = preference, mu, ideal_point
        self._k, self.running_min = k, running_min
