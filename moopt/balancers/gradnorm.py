r"""GradNorm: loss weights that balance the weighted gradient norms (Chen et al., ICML 2018)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from moopt.balancers.base import Balancer
from moopt.balancers.coarse_to_fine import softmax
from moopt.validation import FloatArray, as_finite_vector, as_nonnegative_scalar, as_positive_int

__all__ = ["GradNormBalancer"]


def _check_positive_losses(losses: FloatArray, name: str = "losses") -> FloatArray:
    bad = np.flatnonzero(losses <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{i}] = {losses[i]:.6g} must be > 0: GradNorm divides the losses by their "
            f"initial values and raises the ratios to the power alpha"
        )
    return losses


class GradNormBalancer(Balancer):
    r"""GradNorm (Chen et al., ICML 2018): weighted gradient norms that follow the training rates.

    From "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask
    Networks". GradNorm learns loss weights ``W_i(t)`` (summing to ``k``) so that the weighted
    gradient norms follow each objective's relative inverse training rate. With
    ``n_i = ‖g_i‖ = √G_ii`` (the Gram's diagonal) and the losses ``L_i(0)`` of the first step,
    the paper defines

    ```text
    G_W^(i)(t) = W_i(t) n_i,            Ḡ_W(t) = mean_i G_W^(i)(t),
    L̃_i(t) = L_i(t) / L_i(0),            r_i(t) = L̃_i(t) / mean_j L̃_j(t),
    L_grad(t) = Σ_i | G_W^(i)(t) − Ḡ_W(t) · r_i(t)^α |,
    ```

    where the target ``Ḡ_W(t) r_i(t)^α`` is held constant, and updates the weights by a
    gradient step on ``L_grad`` followed by a renormalisation ``Σ_i W_i = k``. An objective
    that trains slower than the others (larger ``r_i``) gets a larger gradient norm; ``α``
    sets how strongly.

    **Discretisation.** As in LibMTL, the weights are ``W = k · softmax(ξ)`` (positive, summing
    to ``k`` by construction, which replaces the renormalisation) with logits ``ξ`` starting at
    0 (``W = 1``). Each [`weights`][moopt.Balancer.weights] call is one training step ``t``:
    it returns the weights ``w(t) = W(t)/k`` of this step (they sum to 1, the convention of
    every balancer here; the paper's ``Σ W_i = k`` only rescales the update, which the
    optimiser's learning rate absorbs), then takes one gradient step on the logits:

    ```text
    ∂L_grad/∂W_i = n_i · sign(W_i n_i − Ḡ_W r_i^α)           (the target held constant)
    ξ ← ξ − lr · J_Wᵀ (∂L_grad/∂W) / Ḡ_W,   J_W = k (diag(w) − w wᵀ),
    ```

    so ``w(t+1) = softmax(ξ)``. Dividing by ``Ḡ_W`` (also held constant) makes the step
    independent of the scale of the gradients, so one ``lr`` works whatever the losses'
    units; LibMTL instead lets the model's optimiser (e.g. Adam) step ``ξ``, which normalises
    the scale in its own way. The initial losses ``L_i(0)`` are those of the first call
    (LibMTL averages them over the first epoch, training with equal weights meanwhile). When
    every gradient is zero, the weights do not change.

    The state (initial losses, logits) is in [`state_dict`][moopt.Balancer.state_dict];
    [`update`][moopt.Balancer.update] is not needed (the weights learn from the losses and
    Gram given to [`weights`][moopt.Balancer.weights]).

    Parameters
    ----------
    alpha : float, default 1.5
        The strength ``α ≥ 0`` of the pull towards equal training rates (LibMTL's default);
        0 asks for equal weighted gradient norms.
    lr : float, default 0.025
        The step size of the logit update (≥ 0); 0 keeps the weights uniform.
    num_objectives : int, optional
        The number of objectives ``k``; otherwise fixed by the first call.

    Examples
    --------
    >>> import numpy as np
    >>> from moopt.balancers.gradnorm import GradNormBalancer
    >>> balancer = GradNormBalancer()
    >>> gram = np.diag([1.0, 100.0])  # gradient norms 1 and 10
    >>> balancer.weights([1.0, 1.0], gram)  # the first step: uniform
    array([0.5, 0.5])
    >>> w = balancer.weights([1.0, 1.0], gram)  # the short gradient gains weight
    >>> bool(w[0] > 0.5)
    True
    """

    requires_gram = True

    def __init__(
        self, alpha: float = 1.5, lr: float = 0.025, num_objectives: int | None = None
    ) -> None:
        self.alpha = as_nonnegative_scalar(alpha, "alpha")
        self.lr = as_nonnegative_scalar(lr, "lr")
        self._k = (
            None if num_objectives is None else as_positive_int(num_objectives, "num_objectives")
        )
        self.logits: FloatArray | None = None if self._k is None else np.zeros(self._k)
        self.initial_losses: FloatArray | None = None

    @property
    def num_objectives(self) -> int | None:
        """The number of objectives ``k``, once given or fixed by the first call."""
        return self._k

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        assert gram is not None
        losses = _check_positive_losses(losses)
        k = len(losses)
        if self._k is None or self.logits is None:
            self._k, self.logits = k, np.zeros(k)
        if self.initial_losses is None:
            self.initial_losses = losses.copy()
        weights = softmax(self.logits)
        self._step(weights, losses, np.sqrt(np.maximum(np.diag(gram), 0.0)))
        return weights

    def _step(self, weights: FloatArray, losses: FloatArray, norms: FloatArray) -> None:
        """One gradient step of the logits on ``L_grad / Ḡ_W`` (see the class documentation)."""
        assert self.logits is not None and self.initial_losses is not None
        k = len(weights)
        weighted_norms = k * weights * norms
        mean_norm = float(weighted_norms.mean())
        if mean_norm <= 0:
            return
        inverse_rates = losses / self.initial_losses
        relative = inverse_rates / inverse_rates.mean()
        targets = mean_norm * relative**self.alpha
        grad_w = norms * np.sign(weighted_norms - targets) / mean_norm
        grad_logits = k * (weights * grad_w - weights * (weights @ grad_w))
        self.logits = self.logits - self.lr * grad_logits

    def _config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "lr": self.lr}

    def _state(self) -> dict[str, Any]:
        return {
            **self._config(),
            "logits": None if self.logits is None else self.logits.copy(),
            "initial_losses": None if self.initial_losses is None else self.initial_losses.copy(),
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        saved_k = state.get("num_objectives")
        k = None if saved_k is None else as_positive_int(saved_k, "state['num_objectives']")
        self.alpha = as_nonnegative_scalar(state["alpha"], "state['alpha']")
        self.lr = as_nonnegative_scalar(state["lr"], "state['lr']")
        logits, initial = state["logits"], state["initial_losses"]
        self.logits = None if logits is None else as_finite_vector(logits, "state['logits']", k)
        self.initial_losses = (
            None
            if initial is None
            else _check_positive_losses(
                as_finite_vector(initial, "state['initial_losses']", k),
                "state['initial_losses']",
            )
        )
        self._k = k
