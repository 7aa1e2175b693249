"""The random generator of the balancers that visit objectives in a random order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["as_orders", "as_seed", "generator_state", "restored_generator"]


def as_orders(orders: Sequence[ArrayLike], k: int) -> list[list[int]]:
    """Return ``orders`` as ``k`` lists, checking that each is a permutation of ``range(k)``.

    Raises
    ------
    ValueError
        If there are not ``k`` orders or one is not a permutation of ``range(k)``.
    """
    checked = [np.asarray(order).tolist() for order in orders]
    if len(checked) != k or any(sorted(order) != list(range(k)) for order in checked):
        raise ValueError(f"orders must hold {k} permutations of range({k}), got {orders!r}")
    return [[int(j) for j in order] for order in checked]


def as_seed(value: Any, name: str = "seed") -> int | None:
    """Return ``value`` as a seed (an int ≥ 0) or None, or raise naming ``name``.

    Raises
    ------
    TypeError
        If ``value`` is neither None nor an integer.
    ValueError
        If it is negative.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer or None, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be ≥ 0, got {value}")
    return int(value)


def generator_state(generator: np.random.Generator) -> dict[str, Any]:
    """Return the state of ``generator`` as plain Python values (a fresh copy)."""
    return dict(generator.bit_generator.state)


def restored_generator(state: Any, name: str = "state['rng']") -> np.random.Generator:
    """Return a generator that continues exactly where the one ``state`` was taken from stopped.

    Raises
    ------
    ValueError
        If ``state`` is not the state of a NumPy bit generator.
    """
    if not isinstance(state, Mapping) or "bit_generator" not in state:
        raise ValueError(f"{name} must be a generator state from state_dict(), got {state!r}")
    kind = getattr(np.random, str(state["bit_generator"]), None)
    if not (isinstance(kind, type) and issubclass(kind, np.random.BitGenerator)):
        raise ValueError(f"{name} names an unknown bit generator {state['bit_generator']!r}")
    bit_generator = kind()
    try:
        bit_generator.state = dict(state)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"{name} is not a valid {kind.__name__} state ({error})") from error
    return np.random.Generator(bit_generator)
