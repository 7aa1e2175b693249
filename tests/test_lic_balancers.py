"""The trainer's balancer registry: every name builds and trains, settings go through one
validated --balancer-option, today's flags keep working, bad names and settings are one line."""

import pytest

from moopt import CoarseToFineBalancer, PCGradBalancer, UPGradBalancer
from moopt_lic import InputError, train
from moopt_lic.balancers import BALANCERS
from moopt_lic.cli import main
from moopt_lic.config import build_parser, config_from_args
from moopt_lic.trainer import build_balancer


def test_the_parser_offers_exactly_the_registry():
    """One source of truth: --balancer's choices are the registry's names."""
    action = next(a for a in build_parser()._actions if a.dest == "balancer")
    assert list(action.choices) == list(BALANCERS)
    assert {"weighted-sum", "mgda", "eq-qp", "coarse-to-fine", "pcgrad", "upgrad"} <= set(BALANCERS)


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_registered_balancer_trains(tiny_config, name):
    """Each name builds its class and trains a tiny codec (finite losses, a checkpoint)."""
    config = tiny_config(balancer=name, steps=2)
    balancer = build_balancer(config)
    assert isinstance(balancer, BALANCERS[name].cls)
    metrics = train(config).metrics
    assert metrics["steps"] == 2 and metrics["balancer"] == name


def test_an_unknown_name_lists_every_accepted_one(capsys):
    assert main(["--balancer", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert all(f"'{name}'" in err for name in BALANCERS)


def test_options_reach_the_constructor():
    pcgrad = build_balancer(
        config_from_args(["--balancer", "pcgrad", "--balancer-option", "seed=3"])
    )
    assert isinstance(pcgrad, PCGradBalancer) and pcgrad.state_dict()["seed"] == 3
    upgrad = build_balancer(
        config_from_args(["--balancer", "upgrad", "--balancer-option", "pref_vector=0.3,0.7"])
    )
    assert isinstance(upgrad, UPGradBalancer)
    assert upgrad.state_dict()["pref_vector"] == [0.3, 0.7]


def test_todays_flags_keep_working():
    built = build_balancer(
        config_from_args(["--gamma", "0.01", "--logit-lr", "0.1", "--loss-floor", "-10"])
    )
    assert isinstance(built, CoarseToFineBalancer)
    assert (built.gamma, built.logit_lr, built.loss_floor) == (0.01, 0.1, -10.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--balancer", "pcgrad", "--balancer-option", "c=1"], "pcgrad has no setting 'c'"),
        (["--balancer", "pcgrad", "--balancer-option", "seed"], "write NAME=VALUE"),
        (
            ["--balancer-option", "gamma=0.1"],
            "the trainer sets coarse-to-fine's gamma itself",
        ),
        (["--balancer", "stch", "--balancer-option", "mu=-1"], "--balancer stch: mu must be"),
        (
            ["--balancer", "dwa", "--balancer-option", "temperature=warm"],
            "--balancer-option 'temperature=warm': expected",
        ),
    ],
)
def test_bad_settings_are_one_line_errors(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    with pytest.raises(InputError):
        config_from_args(argv)


def test_options_are_part_of_the_saved_run(tiny_config):
    """A run with options resumes with them (the configuration round-trips its list)."""
    config = tiny_config(balancer="rlw", balancer_option=["seed=5"], steps=2)
    first = train(config)
    assert first.metrics["config"]["balancer_option"] == ["seed=5"]
    again = train(tiny_config(balancer="rlw", balancer_option=["seed=5"], steps=2, resume=True))
    assert again.metrics["steps"] == 2
