"""moopt.objectives: what an objective is to a balancer (a name and a scalar value)."""

from __future__ import annotations

import pytest

from moopt import CallableObjective, Objective
from moopt.objectives import evaluate_objectives, objective_names


class Quadratic(Objective[float, float]):
    def __init__(self, name: str, centre: float) -> None:
        super().__init__(name)
        self.centre = centre

    def __call__(self, inputs: float) -> float:
        return (inputs - self.centre) ** 2


def test_subclass_computes_its_value_and_keeps_its_name():
    objective = Quadratic("left", -1.0)
    assert objective.name == "left"
    assert objective(1.0) == 4.0
    assert repr(objective) == "Quadratic('left')"


def test_evaluate_in_order():
    objectives = [Quadratic("left", -1.0), Quadratic("right", 1.0)]
    assert evaluate_objectives(objectives, 0.5) == [2.25, 0.25]
    assert objective_names(objectives) == ("left", "right")


def test_callable_objective():
    rate = CallableObjective("rate", lambda bits: bits / 8.0)
    assert rate(16.0) == 2.0
    assert rate.name == "rate"


def test_abstract_objective_cannot_be_instantiated():
    with pytest.raises(TypeError):
        Objective("x")  # type: ignore[abstract]


@pytest.mark.parametrize(
    ("objectives", "error", "message"),
    [
        ([], ValueError, r"the set of objectives is empty: give at least one objective"),
        (
            [Quadratic("a", 0.0), Quadratic("a", 1.0)],
            ValueError,
            r"objective names must be unique, 'a' appears twice",
        ),
        ([lambda x: x], TypeError, r"objectives must be Objective instances, got function"),
    ],
)
def test_bad_objective_sets(objectives, error, message):
    with pytest.raises(error, match=message):
        objective_names(objectives)


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("", ValueError, r"an objective's name must be a non-empty string"),
        ("  ", ValueError, r"an objective's name must be a non-empty string"),
        (3, TypeError, r"an objective's name must be a str, got int"),
    ],
)
def test_bad_names(name, error, message):
    with pytest.raises(error, match=message):
        Quadratic(name, 0.0)


def test_callable_objective_needs_a_function():
    with pytest.raises(TypeError, match=r"function of objective 'rate' must be callable"):
        CallableObjective("rate", 3.0)  # type: ignore[arg-type]
