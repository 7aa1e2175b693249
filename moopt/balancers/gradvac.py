r"""GradVac (Wang et al., ICLR 2021, "Gradient Vaccine"): cosines raised towards EMA targets."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from moopt.balancers._random import as_orders, as_seed, generator_state, restored_generator
from moopt.balancers.base import Balancer
from moopt.validation import FloatArray, _as_real_array, as_square_gram

__all__ = ["GradVacBalancer", "gradvac_weights"]

_VANISHED = 1e-12
"""``‖g_i^PC‖² = c_iᵀQc_i`` at or below this times ``|c_i|ᵀ|Q||c_i|`` counts as 0: the corrections
have cancelled ``g_i`` (e.g. parallel gradients), and what is left is rounding, whose direction
is noise."""


def _as_beta(value: Any, name: str = "beta") -> float:
    """Return ``value`` as an EMA rate in ``[0, 1]``, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    beta = float(value)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {beta}")
    return beta


def _as_targets(value: ArrayLike, k: int, name: str = "targets") -> FloatArray:
    """Return ``value`` as a ``k × k`` matrix of cosine targets in ``[−1, 1]``."""
    targets = _as_real_array(value, name)
    if targets.shape != (k, k):
        raise ValueError(f"{name} must have shape ({k}, {k}), got shape {targets.shape}")
    if not np.all(np.abs(targets) <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must hold cosines in [-1, 1], got {targets.tolist()}")
    return targets


def gradvac_weights(
    gram: ArrayLike, targets: ArrayLike, beta: float, orders: Sequence[ArrayLike]
) -> tuple[FloatArray, FloatArray]:
    r"""Return the GradVac weights for given visiting orders, and the updated cosine targets.

    For each objective ``i``, ``g_i^PC`` starts as ``g_i``; for each ``j ≠ i`` in
    ``orders[i]``, with ``φ = cos(g_i^PC, g_j)`` and the target ``φ̂ = targets[i, j]``: if
    ``φ < φ̂``, a multiple of the original ``g_j`` is added,

    $$g_i^{PC} \leftarrow g_i^{PC} + \frac{\|g_i^{PC}\| \bigl(\hat\phi \sqrt{1-\phi^2}
    - \phi \sqrt{1-\hat\phi^2}\bigr)}{\|g_j\| \sqrt{1-\hat\phi^2}} \, g_j,$$

    which makes the cosine exactly ``φ̂``; then ``targets[i, j] ← (1−β) φ̂ + β φ``. The direction
    is ``Σ_i g_i^PC``. Every ``g_i^PC = Σ_j c_ij g_j`` is a combination of the gradients with
    ``‖g_i^PC‖² = c_iᵀQc_i`` and ``g_i^PCᵀ g_j = (Qc_i)_j``, so this is TorchJD's
    `GradVacWeighting` on the Gram, with its orders given and without its ``eps`` in the
    denominators: a zero ``g_i^PC`` or ``g_j`` has cosine 0 and gets no correction, and neither
    does a pair whose target is ``±1`` (no finite multiple reaches it). A ``g_i^PC`` that the
    corrections have cancelled down to rounding (``‖g_i^PC‖²`` at most ``1e-12`` of the sum of
    the absolute terms of ``c_iᵀQc_i``) counts as zero, since its direction is noise. The
    cosines are clipped to ``[−1, 1]`` against rounding.

    Parameters
    ----------
    gram : array_like
        The ``k × k`` symmetric positive semi-definite Gram matrix ``Q``.
    targets : array_like
        The ``k × k`` EMA cosine targets ``φ̂`` (the diagonal is not used); zeros at the start.
    beta : float
        The EMA rate in ``[0, 1]``.
    orders : sequence of array_like
        ``k`` permutations of ``range(k)``: ``orders[i]`` is the order in which the other
        gradients are visited for ``g_i`` (``i`` itself is skipped).

    Returns
    -------
    weights : numpy.ndarray
        Float64 weights of shape ``(k,)``; the direction is ``Σ_i w_i g_i``.
    targets : numpy.ndarray
        The updated targets, a new ``k × k`` array.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [-1.0, 1.0]])
    >>> w, targets = gradvac_weights(g @ g.T, np.zeros((2, 2)), 0.5, [[0, 1], [1, 0]])
    >>> w  # targets 0: the first step is PCGrad's
    array([2. , 1.5])
    >>> targets  # half-way from 0 to the cosines −1/√2 seen
    array([[ 0.        , -0.35355339],
           [-0.35355339,  0.        ]])
    """
    q = as_square_gram(gram)
    k = len(q)
    new_targets = _as_targets(targets, k).copy()
    rate = _as_beta(beta)
    norms = np.sqrt(np.diag(q))
    coefficients = np.eye(k)
    for i, order in enumerate(as_orders(orders, k)):
        products = q @ coefficients[i]  # g_i^PCᵀ g_j for every j
        for j in order:
            if j == i:
                continue
            squared_norm = float(products @ coefficients[i])
            rounding = _VANISHED * float(
                np.abs(coefficients[i]) @ np.abs(q) @ np.abs(coefficients[i])
            )
            norm_i = math.sqrt(squared_norm) if squared_norm > rounding else 0.0
            denominator = norm_i * norms[j]
            cosine = min(max(products[j] / denominator, -1.0), 1.0) if denominator > 0 else 0.0
            target = new_targets[i, j]
            target_sine = math.sqrt(max(1.0 - target * target, 0.0))
            if cosine < target and denominator > 0 and target_sine > 0:
                sine = math.sqrt(max(1.0 - cosine * cosine, 0.0))
                step = norm_i * (target * sine - cosine * target_sine) / (norms[j] * target_sine)
                coefficients[i, j] += step
                products += step * q[j]
            new_targets[i, j] = (1.0 - rate) * target + rate * cosine
    weights: FloatArray = coefficients.sum(axis=0)
    return weights, new_targets


class GradVacBalancer(Balancer):
    r"""GradVac (Wang et al., *Gradient Vaccine*, ICLR 2021): cosines raised to EMA targets.

    PCGrad only acts when two gradients conflict (negative cosine) and then removes the
    conflict entirely. GradVac keeps, for each ordered pair ``(i, j)``, a target cosine
    ``φ̂_ij``, an exponential moving average (rate ``beta``) of the cosines seen so far, and
    whenever ``cos(g_i^PC, g_j)`` is below its target, adds the multiple of ``g_j`` that brings it
    to the target (see [`gradvac_weights`][moopt.balancers.gradvac.gradvac_weights]); the other
    objectives ``j`` are visited in a random order drawn afresh for every ``i`` at every step,
    and the corrected gradients are summed. This is TorchJD's `GradVac` with the same default
    ``beta = 0.5``, computed from the Gram alone, exactly (without TorchJD's ``eps = 1e-8`` in
    the denominators, so the weights do not depend on the overall scale of the gradients).

    The balancer has state across steps: the targets (zeros at the start, so the first step is
    PCGrad's) are updated by every [`weights`][moopt.Balancer.weights] call, and ``k`` is fixed
    by the first call. The targets and the state of the generator of the orders are in the
    [`state_dict`][moopt.Balancer.state_dict]. The weights do not sum to 1; the losses are not
    used.

    Parameters
    ----------
    beta : float, default 0.5
        The EMA rate of the targets, in ``[0, 1]`` (``φ̂ ← (1−β) φ̂ + β φ``).
    seed : int, optional
        The seed of the generator of the visiting orders; None seeds it from the operating
        system.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [-1.0, 1.0]])
    >>> balancer = GradVacBalancer(seed=0)
    >>> balancer.weights([1.0, 1.0], g @ g.T)  # the first step is PCGrad's
    array([2. , 1.5])
    >>> balancer.targets[0, 1]  # the cosine target moved half-way to the −1/√2 seen
    -0.35355339059327373
    """

    requires_gram = True
    weights_sum_to_one = False

    def __init__(self, beta: float = 0.5, seed: int | None = None) -> None:
        self.beta = _as_beta(beta)
        self.seed = as_seed(seed)
        self._generator = np.random.default_rng(self.seed)
        self._targets: FloatArray | None = None

    @property
    def num_objectives(self) -> int | None:
        """The number of objectives ``k``, fixed by the first call (None before it)."""
        return None if self._targets is None else len(self._targets)

    @property
    def targets(self) -> FloatArray | None:
        """A copy of the ``k × k`` EMA cosine targets ``φ̂_ij`` (None before the first call)."""
        return None if self._targets is None else self._targets.copy()

    def reset(self) -> None:
        """Forget the targets (and ``k``): the next call starts from zero targets."""
        self._targets = None

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        assert gram is not None
        k = len(losses)
        targets = np.zeros((k, k)) if self._targets is None else self._targets
        orders = [self._generator.permutation(k) for _ in range(k)]
        weights, self._targets = gradvac_weights(gram, targets, self.beta, orders)
        return weights

    def _config(self) -> dict[str, Any]:
        return {"beta": self.beta, "seed": self.seed}

    def _state(self) -> dict[str, Any]:
        return {
            **self._config(),
            "targets": self.targets,
            "rng": generator_state(self._generator),
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.beta = _as_beta(state["beta"], "state['beta']")
        self.seed = as_seed(state["seed"], "state['seed']")
        targets = state["targets"]
        if targets is None:
            self._targets = None
        else:
            k = state["num_objectives"]
            if not isinstance(k, int) or k < 1:
                raise ValueError(f"state['num_objectives'] must be ≥ 1 with targets, got {k!r}")
            self._targets = _as_targets(targets, k, "state['targets']").copy()
        self._generator = restored_generator(state["rng"])
