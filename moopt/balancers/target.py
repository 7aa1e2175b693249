r"""Objective targets (ε-constraint): hold chosen objectives at given values under any balancer.

The ε-constraint form of a multi-objective problem lowers the *free* objectives subject to
``L_j = t_j`` for the *targeted* ones. [`TargetBalancer`][moopt.TargetBalancer] wraps any
[`Balancer`][moopt.Balancer] and steers its weights so that each targeted objective settles
at its target, whatever the base balancer does to the trade-off.

One step, read top to bottom (`TargetBalancer.weights`):

```text
L̄_j ← L̄_j + smoothing · (L_j − L̄_j)           the loss, lightly smoothed
ē_j = log L̄_j − log t_j                      its error, in orders of magnitude
I_j ← clip(I_j + ē_j)                        its integral (anti-windup: |ki·I_j| ≤ max_control)
u_j = clip(gain · ē_j + integral_gain · I_j)  the control, |u_j| ≤ max_control
w   = base.weights(losses, gram)
w'  = tilt(w, u)  or  hold_and_steer(w, u, gram)
```

The measurement is the loss the balancer already gets: no extra forward pass, and the
controller also runs with bases that need no `update`.

How the control acts
--------------------
* **Bases without a Gram** (weighted sum, coarse-to-fine): a *tilt*. The targeted raw
  weights are multiplied by ``exp(u_j)`` and all weights rescaled so that ``Σ_i |w_i|`` is
  the base's. For the weighted sum this is the trade-off (λ) adapted by dual ascent on
  ``log L_j − log t_j``, and its fixed point is the ε-constraint optimum.
* **Gram-based bases** (EqQP, MGDA): a tilt cannot help a base that gives a free objective
  no weight, or a negative one, so the control acts inside the balance condition, on the
  log-loss gradients ``h_i = ∇L_i / L_i`` (Gram ``Q_h``). The direction has two parts:
    - *hold*: the shortest direction orthogonal to every targeted gradient along which the
      free log-losses fall at the rates ``μ p_F`` (``p_F``: the base's own relative rates
      of the free objectives, or equal rates where the base gives none that are
      positive); its Gram is the Schur complement of ``Q_h`` on the targeted objectives,
      so ``u = 0`` holds every targeted objective to first order — the ε-constraint
      descent direction. For EqQP with one free objective this is EqQP with the signed
      preference vector ``p = (0, 1)`` (``w ∝ Q_h⁻¹ p``);
    - *steer*: ``u_j`` times the length of the free direction along each unit targeted
      gradient: ``u_j > 0`` lowers ``L_j``, ``u_j < 0`` lets it rise.
  On the Pareto front the hold part vanishes and the steer part moves along the front, so
  the fixed point ``u = 0`` is the same there as inside. The weights are scaled so that the
  free direction has the base's uncancelled length ``Σ_i |w_i|·‖∇L_i‖`` (a scale that does
  not depend on ``u``, so the weights move continuously with the control).

Settings
--------
The defaults hold the target within 5 % on toy quadratics with objective scales 1 to 1e3
under Adam for every base (`tests/test_target_balancer.py`), and bring the demo codec's
training rate within 10 % of a reachable target in 100–300 steps (`benchmarks/target_sweep.py`;
a target the codec cannot reach yet winds the integral up, and the rate overshoots once it
can: the benchmark's 0.6 bpp from scratch). A proportional term
on a lightly smoothed error does most of the work; the integral removes the steady offset
that the coarse-to-fine logits, Adam's per-coordinate steps or the curvature leave. With
``gain=0`` (a plain integrator) or a small gain, the controlled objective oscillates against
the coarse-to-fine logits.

The loss is smoothed before its logarithm is taken, so the integral settles where the log of
the smoothed loss averages zero: the controller holds the *mean* of a noisy objective, what a
user who names a target expects. (The log of each step's loss would average zero at the
geometric mean, and a loss with step-to-step spread σ in log averages ``exp(σ²/2)`` above
that: +3 % for a codec's rate on random crops, σ ≈ 0.25.) What remains is the smoothed loss's
own spread, ``≈ σ²·smoothing / (2 − smoothing) / 2`` in log: 0.2 % at σ = 0.25.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moopt.balancers.base import Balancer
from moopt.validation import FloatArray, as_finite_vector, as_nonnegative_scalar, as_positive_int

__all__ = ["FRONT_RCOND", "TargetBalancer", "TargetsLike"]

TargetsLike = Sequence[float | None] | Mapping[int, float]
"""Targets: a length-k sequence with ``None`` for free objectives, or ``{index: value}``."""

FRONT_RCOND = 1e-3
"""Singular values of the log-loss cosine matrix below this (relative) count as zero.

They belong to directions that lower every objective at once at a vanishing rate: near the
Pareto front the solve then moves along it instead of amplifying that direction."""


def _as_targets(targets: Any, k: int | None) -> tuple[int, dict[int, float]]:
    """Return ``(k, {index: target})`` from a sequence or mapping, checked."""
    if isinstance(targets, Mapping):
        if k is None:
            raise ValueError(
                "targets given as a mapping need the number of objectives: pass "
                "num_objectives=k, a base balancer fixed to k, or a length-k sequence"
            )
        items = list(targets.items())
    elif isinstance(targets, Sequence) and not isinstance(targets, (str, bytes)):
        if k is not None and len(targets) != k:
            raise ValueError(f"targets has {len(targets)} entries, the base has {k} objectives")
        k = len(targets)
        items = [(i, t) for i, t in enumerate(targets) if t is not None]
    else:
        raise TypeError(
            f"targets must be a sequence (None for free objectives) or a mapping "
            f"{{index: value}}, got {type(targets).__name__}"
        )
    checked: dict[int, float] = {}
    for index, value in items:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"target index must be an integer, got {index!r}")
        if not 0 <= index < k:
            raise ValueError(f"target index {index} is out of range for {k} objectives")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"targets[{index}] must be a real number, got {value!r}")
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"targets[{index}] must be finite and > 0, got {value}")
        checked[int(index)] = float(value)
    if not 1 <= len(checked) <= k - 1:
        raise ValueError(
            f"give between 1 and k − 1 = {k - 1} targets (at least one objective must stay "
            f"free), got {len(checked)}"
        )
    return k, dict(sorted(checked.items()))


def _as_fraction(value: Any, name: str) -> float:
    number = as_nonnegative_scalar(value, name)
    if not 0 < number <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {number}")
    return number


def _as_positive(value: Any, name: str) -> float:
    number = as_nonnegative_scalar(value, name)
    if number == 0:
        raise ValueError(f"{name} must be > 0, got {number}")
    return number


def _free_preference(rates: FloatArray, free: NDArray[np.intp]) -> FloatArray:
    """Return the base's log-loss rates of the free objectives scaled to mean 1 (or ones)."""
    free_rates = rates[free]
    mean = float(free_rates.mean())
    if np.all(free_rates > 0) and mean > 0:
        normalised: FloatArray = free_rates / mean
        return normalised
    return np.ones(len(free))


def _balanced_weights(log_gram: FloatArray, preference: FloatArray) -> FloatArray:
    """Return ``w = Q⁺p / (pᵀQ⁺p)``: the shortest direction whose log-loss rates are ``μ p``.

    The Gram is equilibrated first (``Q = S C S``, ``S`` the gradient norms), so the solve is
    exact at any scale; directions of ``C`` below ``FRONT_RCOND`` count as absent. Zero
    weights where no direction lowers the objectives at these rates (zero gradients).
    """
    norms = np.sqrt(np.maximum(np.diag(log_gram), 0.0))
    scales = np.where(norms > 0, norms, 1.0)
    cosines = log_gram / np.outer(scales, scales)
    solution = np.linalg.pinv(cosines, rcond=FRONT_RCOND, hermitian=True) @ (preference / scales)
    solution = np.where(norms > 0, solution / scales, 0.0)
    denominator = float(preference @ solution)
    if denominator <= 0:
        return np.zeros(len(preference))
    balanced: FloatArray = solution / denominator
    return balanced


class TargetBalancer(Balancer):
    r"""Hold the targeted objectives at their values (ε-constraint) under any base balancer.

    See the module documentation for the controller and how it acts on each kind of base.
    [`requires_gram`][moopt.Balancer] and ``requires_update`` follow the base; the base's
    state is part of `state_dict()`.

    Parameters
    ----------
    base : Balancer
        The balancer whose weights are steered (a fresh instance: the wrapper owns it).
    targets : sequence or mapping
        A length-k sequence with a value for each targeted objective and ``None`` for the
        free ones, or a mapping ``{index: value}``. Between 1 and k − 1 targets, each finite
        and > 0.
    num_objectives : int, optional
        k, needed only when ``targets`` is a mapping and the base is not fixed to k.
    gain : float, default 2.0
        Proportional gain on the smoothed log error (≥ 0).
    integral_gain : float, default 0.05
        Gain on the integral of the smoothed log error, per step (≥ 0).
    smoothing : float, default 0.1
        Weight of the newest error in the exponential moving average, in (0, 1].
    max_control : float, default 10.0
        Bound on ``|u_j|``, and on the integral's share of it (anti-windup), > 0. In the tilt,
        ``exp(±10)`` spans about four decades of trade-off either way.

    Attributes
    ----------
    control : numpy.ndarray
        ``u_j`` of the last call for each targeted objective (zeros before the first).
    error : numpy.ndarray
        The last step's log errors ``log L_j − log t_j`` of the targeted objectives (the
        controller acts on the smoothed loss's).

    Examples
    --------
    >>> from moopt import WeightedSumBalancer
    >>> balancer = TargetBalancer(WeightedSumBalancer([1.0, 1.0]), [0.5, None])
    >>> w = balancer.weights([1.0, 3.0])  # objective 0 is above its target ...
    >>> bool(w[0] > w[1]), round(float(w.sum()), 12)  # ... so its weight grows; Σ|w| is kept
    (True, 2.0)
    """

    def __init__(
        self,
        base: Balancer,
        targets: TargetsLike,
        *,
        num_objectives: int | None = None,
        gain: float = 2.0,
        integral_gain: float = 0.05,
        smoothing: float = 0.1,
        max_control: float = 10.0,
    ) -> None:
        if not isinstance(base, Balancer):
            raise TypeError(f"base must be a moopt Balancer, got {type(base).__name__}")
        if isinstance(base, TargetBalancer):
            raise TypeError("base is already a TargetBalancer: give all targets to one wrapper")
        k = base.num_objectives
        if num_objectives is not None:
            given = as_positive_int(num_objectives, "num_objectives")
            if k is not None and k != given:
                raise ValueError(f"num_objectives={given}, but the base has {k} objectives")
            k = given
        self._k, self.targets = _as_targets(targets, k)
        self.base = base
        self.requires_gram = base.requires_gram
        self.requires_update = base.requires_update
        # a tilt keeps Σ|w| and a Gram-based base's steered weights may have mixed signs
        self.weights_sum_to_one = False
        self.gain = as_nonnegative_scalar(gain, "gain")
        self.integral_gain = as_nonnegative_scalar(integral_gain, "integral_gain")
        self.smoothing = _as_fraction(smoothing, "smoothing")
        self.max_control = _as_positive(max_control, "max_control")
        n = len(self.targets)
        self.error = np.zeros(n)
        self._smoothed_loss = np.ones(n)
        self._integral = np.zeros(n)
        self.control = np.zeros(n)
        self._steps = 0

    @property
    def num_objectives(self) -> int:
        """The number of objectives ``k``."""
        return self._k

    @property
    def targeted(self) -> list[int]:
        """The indices of the targeted objectives, ascending."""
        return list(self.targets)

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        self._control_step(losses)
        weights = self.base.weights(losses, gram)
        if gram is not None and self.requires_gram:
            return self._prefer(weights, losses, gram)
        return self._tilt(weights)

    def _control_step(self, losses: FloatArray) -> None:
        """Measure the log errors and advance the PI controller by one step."""
        index = self.targeted
        values = losses[index]
        bad = np.flatnonzero(values <= 0)
        if bad.size:
            j = index[int(bad[0])]
            raise ValueError(
                f"losses[{j}] = {losses[j]:.6g} must be > 0: a targeted objective's error is "
                f"measured as log(L / target)"
            )
        targets = np.array([self.targets[j] for j in index])
        self.error = np.log(values) - np.log(targets)
        if self._steps == 0:
            self._smoothed_loss = values.copy()
        else:
            change = self.smoothing * (values - self._smoothed_loss)
            self._smoothed_loss = self._smoothed_loss + change
        # the log of the smoothed loss, not the smoothed log: the mean is held, not the
        # geometric mean (module documentation)
        smoothed_error = np.log(self._smoothed_loss) - np.log(targets)
        if self.integral_gain > 0:
            bound = self.max_control / self.integral_gain
            self._integral = np.clip(self._integral + smoothed_error, -bound, bound)
        raw = self.gain * smoothed_error + self.integral_gain * self._integral
        self.control = np.clip(raw, -self.max_control, self.max_control)
        self._steps += 1

    def _tilt(self, weights: FloatArray) -> FloatArray:
        """Multiply the targeted weights by ``exp(u)``, keeping ``Σ|w|``."""
        tilted = weights.copy()
        tilted[self.targeted] *= np.exp(self.control)
        scale = np.abs(tilted).sum()
        if scale == 0:
            return tilted
        rescaled: FloatArray = tilted * (np.abs(weights).sum() / scale)
        return rescaled

    def _prefer(self, weights: FloatArray, losses: FloatArray, gram: FloatArray) -> FloatArray:
        """Hold the targeted objectives to first order, lower the free ones, steer by ``u``."""
        if np.any(losses <= 0):
            j = int(np.flatnonzero(losses <= 0)[0])
            raise ValueError(
                f"losses[{j}] = {losses[j]:.6g} must be > 0: with a Gram-based base the "
                f"targets act on the log-loss rates, log(L_i)"
            )
        targeted = self.targeted
        free = np.setdiff1d(np.arange(self._k), targeted)
        log_gram = gram / np.outer(losses, losses)
        q_tt = log_gram[targeted][:, targeted]
        q_tf = log_gram[targeted][:, free]
        q_ff = log_gram[free][:, free]
        inverse_tt = np.linalg.pinv(q_tt, hermitian=True)
        preference = _free_preference(log_gram @ (weights * losses), free)
        # hold: the free log-losses fall at the preferred rates within the complement of the
        # targeted gradients (its Gram is the Schur complement), so the targeted ones stay
        hold = _balanced_weights(q_ff - q_tf.T @ inverse_tt @ q_tf, preference)
        # steer: u_j times the length of the free direction, along each unit targeted gradient
        reference = _balanced_weights(q_ff, preference)
        length = float(np.sqrt(max(reference @ q_ff @ reference, 0.0)))
        steer = inverse_tt @ (self.control * length * np.sqrt(np.diag(q_tt)))
        log_weights = np.zeros(self._k)
        log_weights[free] = hold
        log_weights[targeted] = steer - inverse_tt @ (q_tf @ hold)
        # one scale for every control value, so the weights move continuously with u: the
        # free direction gets the base's uncancelled length Σ_i |w_i|·‖g_i‖
        uncancelled = float(np.abs(reference) @ np.sqrt(np.diag(q_ff)))
        if uncancelled == 0:
            return np.zeros(self._k)
        factor = float(np.abs(weights) @ np.sqrt(np.diag(gram))) / uncancelled
        steered: FloatArray = log_weights / losses * factor
        return steered

    def _update(self, new_losses: FloatArray) -> None:
        self.base.update(new_losses)

    def _config(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "targets": [self.targets.get(i) for i in range(self._k)],
            "gain": self.gain,
            "integral_gain": self.integral_gain,
            "smoothing": self.smoothing,
            "max_control": self.max_control,
        }

    def _state(self) -> dict[str, Any]:
        return {
            **self._config(),
            "base": self.base.state_dict(),
            "error": self.error.copy(),
            "smoothed_loss": self._smoothed_loss.copy(),
            "integral": self._integral.copy(),
            "control": self.control.copy(),
            "steps": self._steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from `state_dict()`.

        A state saved before the controller smoothed the loss itself holds the smoothed log
        error ``ē`` instead of the smoothed loss; it loads as ``L̄ = t·exp(ē)``.
        """
        saved_before = isinstance(state, Mapping) and "smoothed_loss" not in state
        if saved_before and "smoothed_error" in state:
            _, targets = _as_targets(state.get("targets"), self._k)
            error = as_finite_vector(
                state["smoothed_error"], "state['smoothed_error']", len(targets)
            )
            state = {**state, "smoothed_loss": np.array(list(targets.values())) * np.exp(error)}
        super().load_state_dict(state)

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self._k, self.targets = _as_targets(state["targets"], self._k)
        self.base.load_state_dict(state["base"])
        self.gain = as_nonnegative_scalar(state["gain"], "state['gain']")
        self.integral_gain = as_nonnegative_scalar(state["integral_gain"], "state['integral_gain']")
        self.smoothing = _as_fraction(state["smoothing"], "state['smoothing']")
        self.max_control = _as_positive(state["max_control"], "state['max_control']")
        n = len(self.targets)
        self.error = as_finite_vector(state["error"], "state['error']", n)
        self._smoothed_loss = as_finite_vector(state["smoothed_loss"], "state['smoothed_loss']", n)
        if np.any(self._smoothed_loss <= 0):
            raise ValueError(
                f"state['smoothed_loss'] must be > 0, got {self._smoothed_loss.tolist()}"
            )
        self._integral = as_finite_vector(state["integral"], "state['integral']", n)
        self.control = as_finite_vector(state["control"], "state['control']", n)
        self._steps = int(state["steps"])
