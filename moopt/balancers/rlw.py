"""RLW: Random Loss Weighting, a fresh random point of the simplex at every step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from moopt.balancers._loss_based import (
    as_optional_num_objectives,
    as_seed,
    saved_num_objectives,
    stable_softmax,
)
from moopt.balancers.base import Balancer
from moopt.validation import FloatArray

__all__ = ["RLWBalancer"]


def _generator_from_state(state: Any, name: str) -> np.random.Generator:
    """Return a PCG64 generator restored from ``bit_generator.state``, or raise naming ``name``."""
    if not isinstance(state, Mapping) or state.get("bit_generator") != "PCG64":
        raise ValueError(
            f"{name} must be the bit_generator.state dict of a PCG64 numpy generator, got {state!r}"
        )
    generator = np.random.Generator(np.random.PCG64())
    try:
        generator.bit_generator.state = dict(state)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"{name} is not a valid PCG64 state ({error})") from error
    return generator


class RLWBalancer(Balancer):
    r"""Random Loss Weighting: ``w = softmax(ξ)`` with a new ``ξ ~ N(0, I_k)`` at every call.

    Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning", TMLR 2022 (arXiv:2111.10603). Each
    [`weights`][moopt.Balancer.weights] call draws

    ```text
    ξ ~ N(0, I_k),    w = softmax(ξ),    i.e. w_i = exp(ξ_i) / Σ_j exp(ξ_j)
    ```

    the standard normal choice of the paper, LibMTL's ``RLW`` default and TorchJD's
    ``Random`` aggregator. The weights are positive, sum to 1 and are ``1/k`` on average; the
    losses (and a Gram, if given) are checked but not used. Every call draws: calling
    ``weights`` twice in one step gives two different draws.

    The draws come from ``numpy.random.default_rng(seed)`` (``ξ`` is its next
    ``standard_normal(k)``); the generator's state is part of
    [`state_dict`][moopt.Balancer.state_dict], so a restored balancer continues with exactly
    the draws the original would have made.

    **λ-dependent:** the weights ignore the losses, so a rescaled objective (``λ·D``) enters
    the update with its full factor, as in a weighted sum with random weights.

    Parameters
    ----------
    seed : int, default 0
        The seed of the generator (≥ 0). TorchJD's ``Random`` has no seed (it draws from
        torch's global generator).
    num_objectives : int, optional
        The number of objectives ``k``; by default it is fixed by the first
        [`weights`][moopt.Balancer.weights] call.

    Examples
    --------
    >>> import numpy as np
    >>> from moopt.balancers.rlw import RLWBalancer
    >>> w = RLWBalancer(seed=0).weights([0.3, 2.0, 5.0])
    >>> xi = np.random.default_rng(0).standard_normal(3)
    >>> bool(np.allclose(w, np.exp(xi) / np.exp(xi).sum())), bool(np.isclose(w.sum(), 1.0))
    (True, True)
    """

    requires_gram = False

    def __init__(self, seed: int = 0, *, num_objectives: int | None = None) -> None:
        self.seed = as_seed(seed)
        self._k = as_optional_num_objectives(num_objectives)
        self._generator = np.random.default_rng(self.seed)

    @property
    def num_objectives(self) -> int | None:
        """The number of objectives ``k``, or None until the first call fixes it."""
        return self._k

    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        k = len(losses)
        weights = stable_softmax(self._generator.standard_normal(k))
        self._k = k
        return weights

    def _config(self) -> dict[str, Any]:
        return {"seed": self.seed, "num_objectives": self._k}

    def _state(self) -> dict[str, Any]:
        # bit_generator.state is a fresh dict of plain ints and strings at every access
        return {**self._config(), "generator": self._generator.bit_generator.state}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        seed = as_seed(state["seed"], "state['seed']")
        k = saved_num_objectives(self._k, state["num_objectives"])
        generator = _generator_from_state(state["generator"], "state['generator']")
        self.seed, self._k, self._generator = seed, k, generator
