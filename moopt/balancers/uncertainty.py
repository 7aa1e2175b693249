"""Uncertainty weighting with the log-variances set in closed form from smoothed losses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from moopt.balancers._loss_based import (
    as_optional_num_objectives,
    check_positive_losses,
    saved_num_objectives,
)
from moopt.balancers.base import Balancer
from moopt.validation import FloatArray, as_finite_vector, as_nonnegative_scalar

__all__ = ["UncertaintyBalancer"]

_POSITIVE_REASON = "the closed-form log-variance is s_i = log EMA(L_i)"


def _as_ema_decay(value: Any, name: str = "ema_decay") -> float:
    number = as_nonnegative_scalar(value, name)
    if number >= 1:
        raise ValueError(f"{name} must be in [0, 1), got {number}")
    return number


class UncertaintyBalancer(Balancer):
    r"""Homoscedastic uncertainty weighting, its log-variances solved in closed form.

    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics", CVPR 2018, train one learned log-variance ``s_i = log σ_i²`` per
    objective jointly with the network on

    ```text
    L_total = Σ_i exp(−s_i) · L_i + s_i
    ```

    whose gradient in the network parameters is ``Σ_i exp(−s_i) ∇L_i``. Instead of learning
    ``s_i`` by gradient descent, this balancer sets it to its optimum for the current losses:
    ``exp(−s)·L + s`` is convex in ``s`` with its minimum at ``s = log L``. The losses are
    smoothed first, so the weights follow the loss level rather than each batch's noise (as
    slowly learned ``s_i`` would):

    ```text
    m_i ← L_i                               at the first call
    m_i ← β · m_i + (1 − β) · L_i           at every later call (β = ema_decay)
    s_i = log m_i,    w_i = exp(−s_i) = 1 / m_i
    ```

    The current call's losses enter ``m`` before the weights are taken, so ``ema_decay=0``
    gives ``w_i = 1/L_i``: the update is then ``Σ_i ∇log L_i``. The weights are positive and
    not normalised (``weights_sum_to_one`` is false): their scale is the method's.
    Kendall et al.'s regression form ``exp(−s)·L/2 + s/2`` (and LibMTL's ``UW``) has the same
    optimum and halves every weight: the same direction. Losses must be > 0.
    [`update`][moopt.Balancer.update] is not used (``requires_update`` is false).

    **λ-free:** rescaling objective ``i`` by ``c`` (``λ·D``) scales ``m_i`` and so divides
    ``w_i`` by ``c``: the term ``w_i ∇(c L_i)`` and the update are unchanged.

    Parameters
    ----------
    ema_decay : float, default 0.9
        The smoothing ``β`` of the loss average, in ``[0, 1)``: the weight of the past
        (about ``1/(1 − β)`` = 10 calls of memory); 0 uses each call's losses alone.
    num_objectives : int, optional
        The number of objectives ``k``; by default it is fixed by the first
        [`weights`][moopt.Balancer.weights] call.

    Attributes
    ----------
    loss_average : numpy.ndarray or None
        The smoothed losses ``m`` (None before the first call).

    Examples
    --------
    >>> from moopt.balancers.uncertainty import UncertaintyBalancer
    >>> balancer = UncertaintyBalancer(ema_decay=0.5)
    >>> balancer.weights([2.0, 0.1])  # first call: w = 1/L
    array([ 0.5, 10. ])
    >>> balancer.weights([1.0, 0.1])  # m = (1.5, 0.1)
    array([ 0.66666667, 10.        ])
    >>> balancer.log_variances  # s = log m, the minimisers of exp(−s)·m + s
    array([ 0.40546511, -2.30258509])
    """

    requires_gram = False
    weights_sum_to_one = False

    def __init__(self, ema_decay: float = 0.9, *, num_objectives: int | None = None) -> None:
        self.ema_decay = _as_ema_decay(ema_decay)
        self._k = as_optional_num_objectives(num_objectives)
        self.loss_average: FloatArray | None = None

    @property
    def num_objectives(self) -> int | None:
        """The number of objectives ``k``, or None until the first call fixes it."""
        return self._k

    @property
    def log_variances(self) -> FloatArray | None:
        """The closed-form log-variances ``s = log m`` (None before the first call)."""
        return None if self.loss_average is None else np.log(self.loss_average)

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        check_positive_losses(losses, "losses", _POSITIVE_REASON)
        if self.loss_average is None:
            average = losses.copy()
        else:
            average = self.ema_decay * self.loss_average + (1.0 - self.ema_decay) * losses
        self.loss_average = average
        self._k = len(losses)
        weights: FloatArray = 1.0 / average
        return weights

    def _config(self) -> dict[str, Any]:
        return {"ema_decay": self.ema_decay, "num_objectives": self._k}

    def _state(self) -> dict[str, Any]:
        average = None if self.loss_average is None else self.loss_average.copy()
        return {**self._config(), "loss_average": average}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        ema_decay = _as_ema_decay(state["ema_decay"], "state['ema_decay']")
        k = saved_num_objectives(self._k, state["num_objectives"])
        saved = state["loss_average"]
        average = None
        if saved is not None:
            if k is None:
                raise ValueError("state['loss_average'] is set but state['num_objectives'] is None")
            average = as_finite_vector(saved, "state['loss_average']", k)
            check_positive_losses(average, "state['loss_average']", _POSITIVE_REASON)
        self.ema_decay, self._k, self.loss_average = ema_decay, k, average
