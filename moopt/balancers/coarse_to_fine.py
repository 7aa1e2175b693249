"""Solution 1: coarse-to-fine, loss-driven balancing (FAMO-style, for training from scratch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

from moopt.balancers.base import Balancer, plain_floor
from moopt.validation import (
    FloatArray,
    as_finite_vector,
    as_loss_floor,
    as_loss_floor_setting,
    as_nonnegative_scalar,
    as_positive_int,
    shifted_losses,
)

__all__ = ["CoarseToFineBalancer", "LogitOptimizer"]

LogitOptimizer = Literal["adam", "sgd"]
_LOGIT_OPTIMIZERS = get_args(LogitOptimizer)  # the check and the type cannot disagree
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


def _check_logit_optimizer(value: Any) -> LogitOptimizer:
    if value not in _LOGIT_OPTIMIZERS:
        raise ValueError(f"logit_optimizer must be one of {_LOGIT_OPTIMIZERS}, got {value!r}")
    return value  # type: ignore[no-any-return]


def softmax(logits: FloatArray) -> FloatArray:
    """Return ``softmax(ξ)``, computed stably."""
    exp = np.exp(logits - logits.max())
    weights: FloatArray = exp / exp.sum()
    return weights


class CoarseToFineBalancer(Balancer):
    r"""Learned loss weights that follow how each log-loss actually fell (one backward pass).

    State: logits ``ξ ∈ R^k`` (initially 0). With ``ℓ_i = L_i − loss_floor``:

    1. [`weights`][moopt.Balancer.weights]: ``z = softmax(ξ)``, ``c = 1 / Σ_i z_i/ℓ_i`` and
       ``w_i = c z_i / ℓ_i`` — the raw-gradient weights of one backward pass of
       ``c Σ_i z_i log ℓ_i``; positive, summing to 1.
    2. After the optimizer step, [`update`][moopt.Balancer.update] gets the losses ``L'`` on the
       same batch and computes the log-loss decreases ``δ_i = log ℓ_i − log ℓ'_i`` and the logit
       gradient ``J_softmax(ξ)ᵀ δ`` with ``J = diag(z) − z zᵀ``; the objective whose log-loss fell
       more loses weight.
    3. The logits descend that gradient with weight decay ``γ``: ``"adam"`` exactly as
       ``torch.optim.Adam(lr=logit_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=gamma)``
       would (implemented in NumPy); ``"sgd"`` as ``ξ ← ξ − logit_lr (Jᵀδ + γ ξ)``.

    [`weights`][moopt.Balancer.weights] may be called several times between updates (e.g. to
    amortise the extra forward pass over n steps); [`update`][moopt.Balancer.update] uses the losses
    of the latest call.

    Parameters
    ----------
    num_objectives : int
        The number of objectives ``k`` (≥ 1).
    logit_lr : float, default 0.025
        The step size β of the logit update (≥ 0).
    gamma : float, default 0.003
        The weight decay γ on the logits (≥ 0); it pulls the weights back to uniform.
    loss_floor : float or array_like, default -1.0
        The floor ``m_i`` in ``ℓ_i = L_i − m_i`` (−1 takes ``log(L_i + 1)``, as the released
        code does; 0 is FAMO's choice). Losses must exceed it.
    logit_optimizer : {"adam", "sgd"}, default "adam"
        How the logits are updated.

    Examples
    --------
    >>> balancer = CoarseToFineBalancer(2)
    >>> balancer.weights([3.0, 1.0])  # first step: w_i ∝ 1/ℓ_i, here ℓ = (4, 2)
    array([0.33333333, 0.66666667])
    >>> balancer.update([2.0, 0.9])  # the first log-loss fell more ...
    >>> balancer.weights([2.0, 0.9])[0] < 1 / 3 / (1 / 3 + 1 / 1.9)  # ... so it loses weight
    True
    """

    requires_gram = False
    requires_update = True

    def __init__(
        self,
        num_objectives: int,
        logit_lr: float = 0.025,
        gamma: float = 0.003,
        loss_floor: float | ArrayLike = -1.0,
        logit_optimizer: LogitOptimizer = "adam",
    ) -> None:
        self._k = as_positive_int(num_objectives, "num_objectives")
        self.logit_lr = as_nonnegative_scalar(logit_lr, "logit_lr")
        self.gamma = as_nonnegative_scalar(gamma, "gamma")
        self.loss_floor = as_loss_floor_setting(loss_floor)
        as_loss_floor(self.loss_floor, self._k)
        self.logit_optimizer: LogitOptimizer = _check_logit_optimizer(logit_optimizer)
        self.logits = np.zeros(self._k)
        self._adam_avg = np.zeros(self._k)
        self._adam_avg_sq = np.zeros(self._k)
        self._adam_steps = 0
        self._pending: FloatArray | None = None

    @property
    def num_objectives(self) -> int:
        """The number of objectives ``k``."""
        return self._k

    @property
    def softmax_weights(self) -> FloatArray:
        """The current softmax weights ``z = softmax(ξ)`` (before the ``1/ℓ`` factor)."""
        return softmax(self.logits)

    def _shifted(self, losses: FloatArray, name: str) -> FloatArray:
        return shifted_losses(losses, as_loss_floor(self.loss_floor, self._k), name)

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        shifted = self._shifted(losses, "losses")
        self._pending = shifted
        raw = softmax(self.logits) / shifted
        weights: FloatArray = raw / raw.sum()
        return weights

    def _update(self, new_losses: FloatArray) -> None:
        if self._pending is None:
            raise ValueError(
                "update() called before weights(): the balancer learns from the losses of the "
                "last weights() call, so call weights(losses) first"
            )
        decrease = np.log(self._pending) - np.log(self._shifted(new_losses, "new_losses"))
        z = softmax(self.logits)
        logit_grad = z * decrease - z * (z @ decrease)  # (diag(z) − z zᵀ) δ
        self._step_logits(logit_grad)
        self._pending = None

    def _step_logits(self, grad: FloatArray) -> None:
        """Apply one step of the logit optimizer with weight decay ``gamma``."""
        grad = grad + self.gamma * self.logits
        if self.logit_optimizer == "sgd":
            self.logits = self.logits - self.logit_lr * grad
            return
        beta1, beta2 = _ADAM_BETAS
        self._adam_steps += 1
        self._adam_avg = self._adam_avg + (1.0 - beta1) * (grad - self._adam_avg)
        self._adam_avg_sq = beta2 * self._adam_avg_sq + (1.0 - beta2) * grad * grad
        step_size = self.logit_lr / (1.0 - beta1**self._adam_steps)
        bias_correction2_sqrt = (1.0 - beta2**self._adam_steps) ** 0.5
        denom = np.sqrt(self._adam_avg_sq) / bias_correction2_sqrt + _ADAM_EPS
        self.logits = self.logits - step_size * self._adam_avg / denom

    def _config(self) -> dict[str, Any]:
        return {
            "num_objectives": self._k,
            "logit_lr": self.logit_lr,
            "gamma": self.gamma,
            "loss_floor": plain_floor(self.loss_floor),
            "logit_optimizer": self.logit_optimizer,
        }

    def _state(self) -> dict[str, Any]:
        return {
            **self._config(),
            "logits": self.logits.copy(),
            "adam_exp_avg": self._adam_avg.copy(),
            "adam_exp_avg_sq": self._adam_avg_sq.copy(),
            "adam_steps": self._adam_steps,
            "pending_shifted_losses": None if self._pending is None else self._pending.copy(),
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        k = self._k
        self.logit_lr = as_nonnegative_scalar(state["logit_lr"], "state['logit_lr']")
        self.gamma = as_nonnegative_scalar(state["gamma"], "state['gamma']")
        self.loss_floor = as_loss_floor_setting(state["loss_floor"], "state['loss_floor']")
        as_loss_floor(self.loss_floor, k, "state['loss_floor']")
        self.logit_optimizer = _check_logit_optimizer(state["logit_optimizer"])
        self.logits = as_finite_vector(state["logits"], "state['logits']", k)
        self._adam_avg = as_finite_vector(state["adam_exp_avg"], "state['adam_exp_avg']", k)
        self._adam_avg_sq = as_finite_vector(
            state["adam_exp_avg_sq"], "state['adam_exp_avg_sq']", k
        )
        self._adam_steps = int(state["adam_steps"])
        pending = state["pending_shifted_losses"]
        self._pending = (
            None
            if pending is None
            else as_finite_vector(pending, "state['pending_shifted_losses']", k)
        )
