"""The balancers ``python -m moopt_lic.train`` knows, by name: one mapping, no if-chain.

Each entry names a [`Balancer`][moopt.Balancer] class and the settings that the trainer's own
flags give it (``--gamma``, ``--loss-floor``, ``--mgda-normalization``, ...); every other
constructor argument is reachable through ``--balancer-option NAME=VALUE`` (repeatable),
checked against the class's signature. A new balancer is one line here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moopt import (
    AlignedMTLBalancer,
    Balancer,
    CAGradBalancer,
    CoarseToFineBalancer,
    ConFIGBalancer,
    DualProjBalancer,
    DWABalancer,
    EqQPBalancer,
    FairGradBalancer,
    GradNormBalancer,
    GradVacBalancer,
    IMTLGBalancer,
    MGDABalancer,
    NashMTLBalancer,
    PCGradBalancer,
    RLWBalancer,
    STCHBalancer,
    UncertaintyBalancer,
    UPGradBalancer,
    WeightedSumBalancer,
)
from moopt_lic.errors import InputError

if TYPE_CHECKING:
    from moopt_lic.config import TrainConfig

__all__ = ["BALANCERS", "BalancerChoice", "build_base_balancer", "default_of", "parse_options"]


def default_of(owner: Callable[..., Any], name: str) -> Any:
    """Return the default of the argument ``name`` of ``owner`` (a balancer class, a function).

    The trainer's flags take their defaults from here, so a default changed in the class is
    the trainer's too.

    Raises
    ------
    TypeError
        If ``owner`` has no argument ``name`` or it has no default.
    """
    parameter = inspect.signature(owner).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise TypeError(f"{owner.__qualname__} has no argument {name!r} with a default")
    return parameter.default


def _no_settings(config: TrainConfig) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class BalancerChoice:
    """A balancer the trainer can build.

    Attributes
    ----------
    cls : type
        The [`Balancer`][moopt.Balancer] subclass.
    summary : str
        What it does, in a few words (the docs' table).
    settings : callable
        The constructor arguments that the trainer's own flags set: ``config -> kwargs``.
    """

    cls: type[Balancer]
    summary: str
    settings: Callable[[TrainConfig], dict[str, Any]] = _no_settings


def _eq_qp(config: TrainConfig) -> dict[str, Any]:
    floor = (
        default_of(EqQPBalancer, "loss_floor") if config.loss_floor is None else config.loss_floor
    )
    return {"log_losses": True, "loss_floor": floor}


def _coarse_to_fine(config: TrainConfig) -> dict[str, Any]:
    return {
        "num_objectives": 2,
        "logit_lr": config.logit_lr,
        "gamma": config.gamma,
        "loss_floor": (
            default_of(CoarseToFineBalancer, "loss_floor")
            if config.loss_floor is None
            else config.loss_floor
        ),
        "logit_optimizer": config.logit_optimizer,
    }


BALANCERS: dict[str, BalancerChoice] = {
    "weighted-sum": BalancerChoice(
        WeightedSumBalancer, "L = R + D, λ inside D", lambda config: {"weights": [1.0, 1.0]}
    ),
    "mgda": BalancerChoice(
        MGDABalancer,
        "min-norm point of the gradients' convex hull",
        lambda config: {"normalization": config.mgda_normalization},
    ),
    "eq-qp": BalancerChoice(EqQPBalancer, "equal decrease of every log-loss", _eq_qp),
    "coarse-to-fine": BalancerChoice(
        CoarseToFineBalancer, "FAMO-style weights learned across steps", _coarse_to_fine
    ),
    "pcgrad": BalancerChoice(PCGradBalancer, "gradient surgery"),
    "cagrad": BalancerChoice(CAGradBalancer, "conflict-averse: best worst-case decrease"),
    "nash-mtl": BalancerChoice(NashMTLBalancer, "Nash bargaining: α_i (Gα)_i = 1"),
    "imtl-g": BalancerChoice(IMTLGBalancer, "equal projections on every unit gradient"),
    "aligned-mtl": BalancerChoice(AlignedMTLBalancer, "gradients aligned to condition number 1"),
    "upgrad": BalancerChoice(UPGradBalancer, "projections onto the gradients' dual cone"),
    "dualproj": BalancerChoice(DualProjBalancer, "the mean gradient projected on the dual cone"),
    "config": BalancerChoice(ConFIGBalancer, "conflict-free: equal cosines to every gradient"),
    "gradvac": BalancerChoice(GradVacBalancer, "EMA cosine targets between gradients"),
    "fairgrad": BalancerChoice(FairGradBalancer, "α-fair: G w = w^(−1/α)"),
    "gradnorm": BalancerChoice(GradNormBalancer, "gradient norms follow training rates"),
    "dwa": BalancerChoice(DWABalancer, "weights from the ratio of recent losses"),
    "uncertainty": BalancerChoice(UncertaintyBalancer, "homoscedastic uncertainty, closed form"),
    "rlw": BalancerChoice(RLWBalancer, "random loss weights"),
    "stch": BalancerChoice(STCHBalancer, "smooth Tchebycheff scalarisation"),
}
"""Every name ``--balancer`` accepts, in the order ``--help`` lists them."""


def _parameters(cls: type[Balancer]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(cls).parameters)


def _convert(text: str, default: Any) -> Any:
    """Read an option's value with the type of the parameter's default."""
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError("true or false")
        return text.lower() == "true"
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if default is None or isinstance(default, list | tuple):
        # unset or vector settings (a preference vector, ...): a number, a list, or a word
        if "," in text:
            return [float(part) for part in text.split(",")]
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return None if text.lower() == "none" else text
    return text


def parse_options(name: str, options: Sequence[str], config: TrainConfig) -> dict[str, Any]:
    """Return ``--balancer-option NAME=VALUE`` pairs as the constructor arguments of ``name``.

    Raises
    ------
    InputError
        For a malformed pair, an argument the balancer does not take, one that a flag of the
        trainer sets, or a value of the wrong type.
    """
    choice = BALANCERS[name]
    parameters = _parameters(choice.cls)
    fixed = choice.settings(config)
    accepted = sorted(p for p in parameters if p not in fixed)
    values: dict[str, Any] = {}
    for option in options:
        key, sep, text = option.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"--balancer-option {option!r}: write NAME=VALUE, e.g. c=0.4")
        if key in fixed:
            allowed = ", ".join(accepted) if accepted else "none"
            raise InputError(
                f"--balancer-option {key}: the trainer sets {name}'s {key} itself (from its "
                f"own flags, see --help); --balancer-option accepts: {allowed}"
            )
        if key not in parameters:
            allowed = ", ".join(accepted) if accepted else "none"
            raise InputError(
                f"--balancer-option {key}: {name} has no setting {key!r}; it accepts: {allowed}"
            )
        try:
            values[key] = _convert(text.strip(), parameters[key].default)
        except ValueError as error:
            raise InputError(f"--balancer-option {option!r}: expected {error}") from None
    return values


def build_base_balancer(config: TrainConfig) -> Balancer:
    """Build the balancer ``config.balancer`` names, with the flags' and options' settings.

    Raises
    ------
    InputError
        For an unknown name or a setting the balancer refuses (its own message, one line).
    """
    if config.balancer not in BALANCERS:
        raise InputError(
            f"unknown balancer {config.balancer!r}; choose one of: {', '.join(BALANCERS)}"
        )
    choice = BALANCERS[config.balancer]
    kwargs = {
        **choice.settings(config),
        **parse_options(config.balancer, config.balancer_option or [], config),
    }
    if "num_objectives" in _parameters(choice.cls) and "num_objectives" not in kwargs:
        kwargs["num_objectives"] = 2  # rate and distortion
    try:
        return choice.cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise InputError(f"--balancer {config.balancer}: {error}") from None
