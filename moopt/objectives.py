"""What an objective is to a balancer: a name and a scalar value, nothing framework-specific.

Adapters subclass [`Objective`][moopt.objectives.Objective] for their own inputs and value types
(a float, a 0-d PyTorch tensor, ...), as `moopt_lic` does with [`Rate`][moopt_lic.Rate] and
[`Distortion`][moopt_lic.Distortion]; a balancer only ever sees the objectives' names and the k
values in a fixed order.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

__all__ = ["CallableObjective", "Objective", "evaluate_objectives", "objective_names"]

InputT = TypeVar("InputT", contravariant=True)
ValueT = TypeVar("ValueT", covariant=True)


class Objective(abc.ABC, Generic[InputT, ValueT]):
    """One objective to minimise: a name and a rule that computes its scalar value.

    Parameters
    ----------
    name : str
        A short, non-empty, human-readable name (``"rate"``, ``"distortion"``); used in logs
        and in error messages that name the objective.

    Examples
    --------
    >>> class Squared(Objective[float, float]):
    ...     def __call__(self, inputs: float) -> float:
    ...         return inputs**2
    >>> Squared("square")(3.0)
    9.0
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"an objective's name must be a str, got {type(name).__name__}")
        if not name.strip():
            raise ValueError("an objective's name must be a non-empty string")
        self._name = name

    @property
    def name(self) -> str:
        """The objective's name."""
        return self._name

    @abc.abstractmethod
    def __call__(self, inputs: InputT) -> ValueT:
        """Return the objective's scalar value for ``inputs`` (e.g. a model's output)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r})"


class CallableObjective(Objective[InputT, ValueT]):
    """An [`Objective`][moopt.objectives.Objective] made from a name and a function.

    Examples
    --------
    >>> rate = CallableObjective("rate", lambda out: out["bits"] / out["pixels"])
    >>> rate({"bits": 2048.0, "pixels": 4096})
    0.5
    """

    def __init__(self, name: str, function: Callable[[InputT], ValueT]) -> None:
        super().__init__(name)
        if not callable(function):
            raise TypeError(f"function of objective {name!r} must be callable")
        self._function = function

    def __call__(self, inputs: InputT) -> ValueT:
        """Return ``function(inputs)``."""
        return self._function(inputs)


def objective_names(objectives: Iterable[Objective[InputT, ValueT]]) -> tuple[str, ...]:
    """Return the names of ``objectives``, checking there is at least one and none repeats.

    Raises
    ------
    TypeError
        If an element is not an [`Objective`][moopt.objectives.Objective].
    ValueError
        If there are no objectives or two share a name.
    """
    names: list[str] = []
    for objective in objectives:
        if not isinstance(objective, Objective):
            raise TypeError(
                f"objectives must be Objective instances, got {type(objective).__name__}"
            )
        if objective.name in names:
            raise ValueError(f"objective names must be unique, {objective.name!r} appears twice")
        names.append(objective.name)
    if not names:
        raise ValueError("the set of objectives is empty: give at least one objective")
    return tuple(names)


def evaluate_objectives(
    objectives: Sequence[Objective[InputT, ValueT]], inputs: InputT
) -> list[ValueT]:
    """Return the value of every objective on the same ``inputs``, in order.

    Examples
    --------
    >>> parts = [CallableObjective("sum", sum), CallableObjective("max", max)]
    >>> evaluate_objectives(parts, [1.0, 2.0])
    [3.0, 2.0]
    """
    objective_names(objectives)
    return [objective(inputs) for objective in objectives]
