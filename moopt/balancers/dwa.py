"""DWA: Dynamic Weight Average, weights from how fast each loss has been falling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from moopt.balancers._loss_based import (
    as_optional_num_objectives,
    as_positive_scalar,
    check_positive_losses,
    saved_num_objectives,
    stable_softmax,
)
from moopt.balancers.base import Balancer
from moopt.validation import FloatArray, as_finite_vector

__all__ = ["DWABalancer"]

_POSITIVE_REASON = "DWA divides each loss by its previous value, r_i = L_i(t−1)/L_i(t−2)"


class DWABalancer(Balancer):
    r"""Dynamic Weight Average: more weight to the objectives whose loss fell least lately.

    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019. At step
    ``t`` the weight of objective ``i`` is a softmax of its recent loss ratio:

    ```text
    r_i(t−1) = L_i(t−1) / L_i(t−2)
    w_i(t)   = k · exp(r_i(t−1) / T) / Σ_j exp(r_j(t−1) / T)
    ```

    and ``w_i = 1`` for the first two steps, which have no ratio yet. The weights are positive
    and sum to ``k`` (not 1: equal weights are 1 each, as in the paper); a larger temperature
    ``T`` brings them closer to 1.

    **History: one entry per [`weights`][moopt.Balancer.weights] call.** The paper (and LibMTL's
    ``DWA``) take ``L_i(t)`` as the average training loss of epoch ``t`` and change the
    weights once per epoch. Here ``L(t)`` is the vector passed to the ``t``-th
    ``weights`` call, so with one call per step the ratios are those of successive
    mini-batch losses, which are noisier. To reproduce the paper, call ``weights`` once per
    epoch with the epoch's mean losses and keep the returned weights for that epoch's steps.
    The current call's losses do not enter its own weights; they are stored for the next two
    calls. [`update`][moopt.Balancer.update] is not used (``requires_update`` is false).

    **λ-dependent:** the ratios do not change when an objective is rescaled (``λ·D``), so its
    rescaled gradient enters the update with the full factor, as in a fixed weighted sum.

    Parameters
    ----------
    temperature : float, default 2.0
        The softmax temperature ``T`` (> 0), 2 as in the paper and LibMTL.
    num_objectives : int, optional
        The number of objectives ``k``; by default it is fixed by the first
        [`weights`][moopt.Balancer.weights] call.

    Attributes
    ----------
    history : list of numpy.ndarray
        The losses of the last (at most two) [`weights`][moopt.Balancer.weights] calls, oldest
        first.

    Examples
    --------
    >>> import numpy as np
    >>> from moopt.balancers.dwa import DWABalancer
    >>> balancer = DWABalancer()
    >>> balancer.weights([2.0, 4.0])  # no ratio yet: equal weights
    array([1., 1.])
    >>> balancer.weights([1.0, 4.0])
    array([1., 1.])
    >>> w = balancer.weights([0.5, 4.0])  # r = (0.5, 1): the first loss halved ...
    >>> w  # ... so the second objective gets more weight
    array([0.875647, 1.124353])
    >>> bool(np.allclose(w, 2 * np.exp([0.25, 0.5]) / np.exp([0.25, 0.5]).sum()))
    True
    """

    requires_gram = False
    weights_sum_to_one = False

    def __init__(self, temperature: float = 2.0, *, num_objectives: int | None = None) -> None:
        self.temperature = as_positive_scalar(temperature, "temperature")
        self._k = as_optional_num_objectives(num_objectives)
        self.history: list[FloatArray] = []

    @property
    def num_objectives(self) -> int | None:
        """The number of objectives ``k``, or None until the first call fixes it."""
        return self._k

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        check_positive_losses(losses, "losses", _POSITIVE_REASON)
        k = len(losses)
        if len(self.history) < 2:
            weights = np.ones(k)
        else:
            older, newer = self.history
            # positive finite ratios can still overflow (e.g. 1e200 / 1e-200); the softmax
            # takes an infinite score as its limit
            with np.errstate(over="ignore"):
                scores = newer / older / self.temperature
            weights = k * stable_softmax(scores)
        self.history = [*self.history[-1:], losses.copy()]
        self._k = k
        return weights

    def _config(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "num_objectives": self._k}

    def _state(self) -> dict[str, Any]:
        return {**self._config(), "history": [losses.copy() for losses in self.history]}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        temperature = as_positive_scalar(state["temperature"], "state['temperature']")
        k = saved_num_objectives(self._k, state["num_objectives"])
        saved = state["history"]
        if not isinstance(saved, (list, tuple)):
            raise TypeError(f"state['history'] must be a list, got {type(saved).__name__}")
        if len(saved) > 2 or (saved and k is None):
            raise ValueError(
                f"state['history'] must hold at most 2 loss vectors of length "
                f"state['num_objectives'] = {k}, got {len(saved)}"
            )
        history = []
        for i, losses in enumerate(saved):
            checked = as_finite_vector(losses, f"state['history'][{i}]", k)
            check_positive_losses(checked, f"state['history'][{i}]", _POSITIVE_REASON)
            history.append(checked)
        self.temperature, self._k, self.history = temperature, k, history
