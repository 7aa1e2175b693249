"""Rate and quality targets in the trainer: --target-bpp, --target-psnr, their outputs, resume,
the best checkpoint by the user's criterion, and the warning when a balancer loses λ."""

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moopt import TargetBalancer
from moopt_lic import InputError, TrainConfig, train
from moopt_lic import trainer as trainer_module
from moopt_lic.cli import main, summary
from moopt_lic.config import DEMO_TARGET_BPP, config_from_args
from moopt_lic.targets import Target, TargetHistory, distortion_for_psnr
from moopt_lic.trainer import Trainer, _better, build_balancer


# ------------------------------------------------------------------------ flags, units
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target-bpp", "0.3", "--target-psnr", "30"], "not both: one target at a time"),
        (["--target-bpp", "0"], "--target-bpp must be a finite number > 0, got 0.0"),
        (["--target-bpp", "nan"], "--target-bpp must be a finite number > 0"),
        (["--target-psnr", "-3"], "--target-psnr must be a finite number > 0"),
        (
            ["--metric", "ms-ssim", "--patch-size", "192", "--target-psnr", "30"],
            "--target-psnr holds λ·255²·MSE, so it needs --metric mse",
        ),
    ],
)
def test_bad_targets_are_one_line_errors(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_a_psnr_target_is_a_distortion_loss_at_lambda():
    target = Target("distortion", 30.0, 0.01)
    assert target.loss == pytest.approx(0.01 * 255**2 * 1e-3)
    assert target.loss == distortion_for_psnr(30.0, 0.01)
    assert target.in_units(target.loss) == pytest.approx(30.0)
    assert target.targets() == [None, target.loss] and target.unit == "dB"
    assert Target("rate", 0.4, 0.01).targets() == [0.4, None]


@pytest.mark.parametrize("balancer", ["weighted-sum", "coarse-to-fine", "mgda", "eq-qp"])
def test_every_balancer_is_wrapped_only_when_a_target_is_given(balancer):
    plain = build_balancer(config_from_args(["--balancer", balancer]))
    held = build_balancer(config_from_args(["--balancer", balancer, "--target-bpp", "0.2"]))
    assert not isinstance(plain, TargetBalancer)
    assert isinstance(held, TargetBalancer) and held.targets == {0: 0.2}
    assert type(held.base) is type(plain)


def test_achieved_is_the_mean_of_the_last_tenth_of_the_steps():
    history = TargetHistory(Target("rate", 0.5, 0.01), 20, [1.0] * 18 + [0.4, 0.6])
    assert history.achieved(20) == pytest.approx(0.5)
    assert history.holds_over(2) and not history.holds_over(3)
    psnr = TargetHistory(Target("distortion", 30.0, 0.01), 1)
    psnr.record([0.1, distortion_for_psnr(31.0, 0.01)])
    assert psnr.achieved(1) == pytest.approx(31.0)


@settings(max_examples=60, deadline=None)
@given(
    losses=st.lists(st.floats(0.01, 10.0), min_size=1, max_size=300),
    window=st.integers(1, 40),
    asked=st.integers(1, 40),
)
def test_a_bounded_history_answers_as_one_that_keeps_every_step(losses, window, asked):
    """Invariant: a history that keeps the last ``window`` steps gives the same mean and
    error over any ``asked ≤ window`` latest steps as one that keeps them all, however many
    steps were recorded; it holds no more than ``window`` losses, and asking about more
    steps than it keeps is an error, never a shorter mean."""
    target = Target("rate", 0.5, 0.01)
    bounded, everything = TargetHistory(target, window), TargetHistory(target, len(losses) + 40)
    for loss in losses:
        bounded.record([loss, 1.0])
        everything.record([loss, 1.0])
    assert len(bounded.losses) == min(window, len(losses))
    if asked > window:
        with pytest.raises(ValueError, match=f"keeps the last {window} steps, not {asked}"):
            bounded.error(asked)
        return
    assert bounded.mean_in_units(asked) == everything.mean_in_units(asked)
    assert bounded.error(asked) == everything.error(asked)
    restored = TargetHistory(target, window)
    restored.restore(everything.losses)
    assert restored.losses == bounded.losses


def test_a_run_keeps_the_targeted_losses_it_reads_back_and_no_more(tiny_config):
    """12 steps, validated every 3: ``achieved`` reads the last 2 (a tenth, rounded up), a
    validation the last 3, so the checkpoint holds the last 3 of the 12 losses."""
    result = train(tiny_config(steps=12, eval_every=3, log_every=1, target_bpp=0.4))
    kept = torch.load(result.out / "checkpoint.pt", weights_only=True)["target_losses"]
    assert len(kept) == 3
    assert result.metrics["target"]["achieved"] == pytest.approx(sum(kept[-2:]) / 2, rel=1e-12)


def test_best_checkpoint_by_the_users_criterion():
    """No target: lower validation R + D at λ. A rate target: holding it beats not holding
    it; among holders the lower distortion; before any holds, the one closest to it."""
    rate = Target("rate", 0.3, 0.01)
    assert _better({"loss": 1.0}, {"loss": 2.0}, None)
    held = {"holds_target": 1.0, "target_error": 0.01, "distortion": 9.0, "bpp": 0.3}
    missed = {"holds_target": 0.0, "target_error": 0.3, "distortion": 1.0, "bpp": 0.1}
    assert _better(held, missed, rate) and not _better(missed, held, rate)
    assert _better({**held, "distortion": 8.0}, held, rate)
    assert _better({**missed, "target_error": 0.2}, missed, rate)
    quality = Target("distortion", 30.0, 0.01)
    assert _better({**held, "bpp": 0.2}, held, quality)


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("balancer", ["weighted-sum", "coarse-to-fine", "eq-qp"])
def test_a_target_run_reports_and_logs_it(tiny_config, balancer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(balancer=balancer, target_bpp=0.5, steps=10, log_every=2, eval_every=5)
    metrics = train(config).metrics
    target = metrics["target"]
    assert target["objective"] == "rate" and target["value"] == 0.5
    assert math.isfinite(target["achieved"]) and target["achieved"] > 0
    assert metrics["balancer_state"]["balancer"] == "TargetBalancer"
    assert json.loads((Path(config.out) / "metrics.json").read_text())["target"] == target
    events = EventAccumulator(str(Path(config.out) / "tensorboard"))
    events.Reload()
    for tag in ("target/control", "target/log_error"):
        assert [e.step for e in events.Scalars(tag)] == [2, 4, 6, 8, 10]
    best = torch.load(Path(config.out) / "checkpoint_best.pt", weights_only=True)["best"]
    assert {"holds_target", "target_error", "distortion"} <= set(best)


def test_the_summary_shows_target_achieved_and_real_coding():
    metrics = {
        "steps": 10,
        "train_seconds": 3.0,
        "final_evaluation": {"bpp": 0.31, "psnr": 27.0, "images": [{}]},
        "target": {"objective": "rate", "value": 0.3, "achieved": 0.298},
        "lambda": 0.013,
        "effective_lambda": 0.0005,
        "balancer": "coarse-to-fine",
        "out": "runs/x",
    }
    text = summary(metrics)
    assert "target: rate 0.3 bpp; achieved in training" in text and "0.298 bpp" in text
    assert "real coding: 0.31 bpp" in text
    assert "note:" not in text  # under a target the lost λ is intended, not a problem
    metrics["target"] = {"objective": "distortion", "value": 30.0, "achieved": 29.9}
    assert "target: distortion 30 dB" in summary(metrics) and "real coding: 27 dB" in summary(
        metrics
    )
    del metrics["target"]
    assert "--target-bpp B holds it under any balancer" in summary(metrics)


def test_resume_with_a_target_is_exact(tiny_config, tmp_path):
    """A fine-tune holding a rate, stopped after a checkpoint and resumed, ends bit-identical:
    the controller's state is in the checkpoint and so is the targeted objective's history."""
    source = train(tiny_config(steps=2, out=str(tmp_path / "source")))
    common = dict(
        balancer="eq-qp",
        target_bpp=0.4,
        steps=6,
        init_from=str(source.out / "checkpoint.pt"),
    )
    full = train(tiny_config(**common, out=str(tmp_path / "a")))
    part = tiny_config(**common, out=str(tmp_path / "b"), checkpoint_every=1)
    trainer = Trainer(part, Path(part.out), None)
    Path(part.out).mkdir()
    trainer.total_steps = 4
    for x, seeds in trainer.batches():
        trainer.train_step(x, seeds)
        trainer.save(Path(part.out) / "checkpoint.pt")
    resumed = train(tiny_config(**common, out=str(tmp_path / "b"), checkpoint_every=1, resume=True))
    left = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    right = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for name, value in left["model"].items():
        assert torch.equal(value, right["model"][name]), name
    assert left["target_losses"] == right["target_losses"]
    assert resumed.metrics["target"] == full.metrics["target"]


def test_a_lost_lambda_is_warned_about_during_the_run(tiny_config, monkeypatch, capsys):
    """Coarse-to-fine on a fresh codec (D ≫ 1) follows a trade-off far below λ: the run says
    so once, naming the remedy; with a target, or the weighted sum, it does not."""
    monkeypatch.setattr(trainer_module, "EFFECTIVE_LAMBDA_WINDOW", 4)
    train(tiny_config(balancer="coarse-to-fine", lmbda=0.05, steps=12, log_every=2))
    err = capsys.readouterr().err
    assert err.count("warning: step") == 1 and "--target-bpp" in err, err
    quiet = ({"balancer": "coarse-to-fine", "target_bpp": 0.5}, {"balancer": "weighted-sum"})
    for changes in quiet:
        out = str(Path(tiny_config().out).parent / next(reversed(changes)))
        train(tiny_config(lmbda=0.05, steps=12, log_every=2, out=out, **changes))
        assert "warning: step" not in capsys.readouterr().err


def test_the_demo_holds_a_rate_and_says_so(monkeypatch, capsys):
    """No arguments: the demo run with its own, printed rate target."""
    seen = {}

    def fake_train(config: TrainConfig, typed):
        seen["config"] = config
        raise InputError("stop here")

    monkeypatch.setattr("moopt_lic.cli.train_with_flags", fake_train)
    assert main([]) == 2
    assert seen["config"].target_bpp == DEMO_TARGET_BPP
    assert seen["config"].balancer == "coarse-to-fine"
    assert f"--target-bpp {DEMO_TARGET_BPP}" in capsys.readouterr().out
