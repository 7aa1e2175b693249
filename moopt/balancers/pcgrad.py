r"""PCGrad (Yu et al., 2020, "Gradient Surgery"): gradients projected off conflicting ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from moopt.balancers._random import as_orders, as_seed, generator_state, restored_generator
from moopt.balancers.base import Balancer
from moopt.validation import FloatArray, as_square_gram

__all__ = ["PCGradBalancer", "pcgrad_weights"]


def pcgrad_weights(gram: ArrayLike, orders: Sequence[ArrayLike]) -> FloatArray:
    r"""Return the PCGrad weights for given visiting orders, from the Gram alone.

    For each objective ``i``, ``g_i^PC`` starts as ``g_i``; for each ``j ≠ i`` in
    ``orders[i]``, if ``g_i^PCᵀ g_j < 0``, then ``g_i^PC ← g_i^PC − (g_i^PCᵀ g_j / ‖g_j‖²) g_j``
    (the part of ``g_i^PC`` along the original ``g_j`` is removed). The direction is
    ``Σ_i g_i^PC``. Every ``g_i^PC = Σ_j c_ij g_j`` stays a combination of the gradients, with
    ``g_i^PCᵀ g_j = (c_i Q)_j``, so the weights ``w = Σ_i c_i`` follow from the Gram; this is
    TorchJD's `PCGradWeighting` with its random orders given.

    Parameters
    ----------
    gram : array_like
        The ``k × k`` symmetric positive semi-definite Gram matrix ``Q``.
    orders : sequence of array_like
        ``k`` permutations of ``range(k)``: ``orders[i]`` is the order in which the other
        gradients are visited for ``g_i`` (``i`` itself is skipped).

    Returns
    -------
    numpy.ndarray
        Float64 weights of shape ``(k,)``, each at least 1 (a projection only adds positive
        multiples of the other gradients).

    Raises
    ------
    TypeError, ValueError
        If ``gram`` is not a valid Gram matrix, or ``orders`` are not ``k`` permutations.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [-1.0, 1.0]])
    >>> w = pcgrad_weights(g @ g.T, [[0, 1], [1, 0]])
    >>> w  # g_1 + ½ g_2 and g_2 + g_1
    array([2. , 1.5])
    """
    q = as_square_gram(gram)
    k = len(q)
    weights = np.zeros(k)
    for i, order in enumerate(as_orders(orders, k)):
        coefficients = np.zeros(k)
        coefficients[i] = 1.0
        for j in order:
            if j == i or q[j, j] <= 0:
                continue
            inner_product = q[j] @ coefficients
            if inner_product < 0:
                coefficients[j] -= inner_product / q[j, j]
        weights += coefficients
    return weights


class PCGradBalancer(Balancer):
    r"""PCGrad (Yu et al., *Gradient Surgery for Multi-Task Learning*, NeurIPS 2020).

    Each gradient is projected, in turn, onto the normal plane of every other (original)
    gradient it conflicts with, visiting the others in a random order drawn afresh for every
    objective at every step, and the projected gradients are summed (Algorithm 1; TorchJD's
    `PCGrad`, which draws the orders the same way with `torch.randperm`). The direction is a
    combination of the gradients, whose weights
    [`pcgrad_weights`][moopt.balancers.pcgrad.pcgrad_weights] computes from the Gram alone. The
    weights do not sum to 1 (the direction is a sum, not a mean: without conflicts ``w = 1``;
    every ``w_i ≥ 1``) and do not depend on the overall scale of the gradients; the losses are
    not used.

    The orders come from a NumPy generator seeded with ``seed``; its state is in the
    [`state_dict`][moopt.Balancer.state_dict], so a restored balancer draws the same orders.

    Parameters
    ----------
    seed : int, optional
        The seed of the generator of the visiting orders; None seeds it from the operating
        system.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [-1.0, 1.0]])  # for k = 2 the order does not matter
    >>> PCGradBalancer(seed=0).weights([1.0, 1.0], g @ g.T)
    array([2. , 1.5])
    """

    requires_gram = True
    weights_sum_to_one = False

    def __init__(self, seed: int | None = None) -> None:
        self.seed = as_seed(seed)
        self._generator = np.random.default_rng(self.seed)

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        assert gram is not None
        k = len(losses)
        orders = [self._generator.permutation(k) for _ in range(k)]
        return pcgrad_weights(gram, orders)

    def _config(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def _state(self) -> dict[str, Any]:
        return {**self._config(), "rng": generator_state(self._generator)}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.seed = as_seed(state["seed"], "state['seed']")
        self._generator = restored_generator(state["rng"])
