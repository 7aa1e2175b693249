"""The benchmarks' shared protocol: run names, resumption, the worker scheduler, comparisons."""

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from protocol import (
    Arm,
    BDRate,
    Run,
    Task,
    bd_rate,
    decode_check,
    divergence,
    equal_rate_difference,
    folder_done,
    mean_std,
    psnr_at_rate,
    run_tasks,
    train_to_end,
    trained_otherwise,
)

ARMS = {"A": Arm("weighted-sum"), "A+": Arm("weighted-sum", start_from="A")}


def test_run_names_are_the_folder_names_of_existing_runs():
    """Runs already on disk resume only if their folder names never change."""
    assert Run("A+", 0.0035, 1).name == "Aplus-l0.0035-s1"
    assert Run("B'", 0.013, 0).name == "Bp-l0.013-s0"
    assert Run("ws+", 0.3, 0, unit="t").name == "wsplus-t0.3-s0"
    assert Run("eq-qp-f", 0.15, 2, unit="t").name == "eq-qp-f-t0.15-s2"


def test_a_fine_tune_starts_from_its_source_arm_at_the_same_point_and_seed():
    assert Run("A+", 0.013, 2).source(ARMS) == Run("A", 0.013, 2)
    assert Run("A", 0.013, 2).source(ARMS) is None


def test_arm_settings_are_train_config_fields():
    from moopt_lic import TrainConfig

    arm = Arm("nash-mtl", features=True, loss_floor=-1.0, options=("max_norm=2",))
    settings = arm.settings()
    assert settings == {
        "balancer": "nash-mtl",
        "features": True,
        "loss_floor": -1.0,
        "balancer_option": ["max_norm=2"],
    }
    assert set(settings) <= set(asdict(TrainConfig()))
    assert Arm("weighted-sum").settings() == {"balancer": "weighted-sum", "features": False}


def _values(config, folder: Path) -> dict:
    """A configuration as the benchmark scripts pass it: fields without ``resume``."""
    values = {k: v for k, v in vars(config).items() if k != "resume"}
    return {**values, "out": str(folder)}


def test_train_to_end_trains_skips_and_resumes(tiny_config, tmp_path):
    values = _values(tiny_config(steps=3, checkpoint_every=2), tmp_path / "run")
    train_to_end(values)
    folder = Path(values["out"])
    assert folder_done(folder) and divergence(folder) is None
    first = (folder / "metrics.json").read_text()
    train_to_end(values)  # finished: skipped, nothing rewritten
    assert (folder / "metrics.json").read_text() == first


def test_a_run_finished_with_other_settings_is_refused_not_skipped(tiny_config, tmp_path):
    """Every setting survives metrics.json unchanged; what a run trains must match, where
    and how it ran need not."""
    values = _values(tiny_config(steps=3), tmp_path / "run")
    train_to_end(values)
    folder = Path(values["out"])
    assert trained_otherwise(folder, values) == []
    assert trained_otherwise(folder, {**values, "threads": 2, "out": "elsewhere"}) == []
    assert trained_otherwise(folder, {**values, "steps": 4}) == ["steps: 3 → 4"]
    with pytest.raises(SystemExit, match=r"other settings \(steps: 3 → 4\); delete the folder"):
        train_to_end({**values, "steps": 4})
    assert trained_otherwise(tmp_path / "never-trained", values) == []


def test_a_stopped_run_resumes_to_an_uninterrupted_runs_weights(tiny_config, tmp_path, monkeypatch):
    import torch

    from moopt_lic import trainer

    def values(name):
        config = tiny_config(balancer="weighted-sum", steps=4, checkpoint_every=2)
        return _values(config, tmp_path / name)

    train_to_end(values("straight"))
    original, calls = trainer.Trainer.train_step, []

    def stop_at_step_three(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the session ends after step 2's checkpoint
        return original(self, *args)

    monkeypatch.setattr(trainer.Trainer, "train_step", stop_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        train_to_end(values("stopped"))
    stopped = tmp_path / "stopped"
    assert (stopped / "checkpoint.pt").exists() and not folder_done(stopped)
    monkeypatch.setattr(trainer.Trainer, "train_step", original)
    train_to_end(values("stopped"))
    weights = [
        torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"]
        for name in ("straight", "stopped")
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_diverged_run_is_recorded_as_a_result(tiny_config, tmp_path, monkeypatch):
    from moopt_lic import trainer

    monkeypatch.setattr(trainer.Trainer, "losses", _nan_losses)
    values = _values(tiny_config(balancer="weighted-sum", steps=3), tmp_path / "nan")
    train_to_end(values)
    folder = Path(values["out"])
    assert folder_done(folder)
    assert divergence(folder) == "step 1: loss 'rate' is nan: the objective is not finite"
    assert not (folder / "metrics.json").exists()


def _nan_losses(self, x, seeds):
    import torch

    value = torch.tensor(math.nan, requires_grad=True)
    return {"rate": value * 1.0, "distortion": value * 1.0}


def _write(path: str, text: str) -> None:
    """A task: append ``text`` to ``path`` (order of execution)."""
    with open(path, "a") as file:
        file.write(text)


def _fail() -> None:
    raise SystemExit(3)


def test_run_tasks_respects_order_dependencies_and_failures(tmp_path):
    log = str(tmp_path / "log")
    tasks = [
        Task("late", _write, (log, "late;"), after="first"),
        Task("first", _write, (log, "first;")),
        Task("broken", _fail),
        Task("orphan", _write, (log, "orphan;"), after="broken"),
        Task("skipped", _write, (log, "skipped;"), done=True),
    ]
    run_tasks(tasks, jobs=1)
    assert Path(log).read_text() == "first;late;"


def test_psnr_at_rate_interpolates_in_log_rate_without_extrapolating():
    curve = [(0.1, 30.0), (0.4, 36.0)]
    assert psnr_at_rate(curve, 0.2) == pytest.approx(33.0)  # halfway in log2
    assert psnr_at_rate(curve, 0.05) is None and psnr_at_rate(curve, 0.5) is None
    difference, count = equal_rate_difference([(0.2, 33.5), (0.8, 40.0)], curve)
    assert (difference, count) == (pytest.approx(0.5), 1)
    assert math.isnan(equal_rate_difference([(0.9, 1.0)], curve)[0])


def test_bd_rate_measures_a_known_rate_saving_and_refuses_short_curves():
    bpp = np.array([0.1, 0.2, 0.4, 0.8])
    psnr = 30 + 6 * np.log2(bpp / 0.1)
    anchor = ("anchor", list(zip(bpp, psnr, strict=True)))
    test = ("test", list(zip(0.9 * bpp, psnr, strict=True)))
    rate = bd_rate(anchor, test)
    assert rate.pchip == pytest.approx(-10.0, abs=1e-6)
    assert rate.cubic == pytest.approx(-10.0, abs=1e-6)
    assert rate.cells == "-10.00 % | -10.00 % | yes"
    short = bd_rate(anchor, ("short", test[1][:3]))
    assert short == BDRate(None, undefined="undefined: short has 3 points")
    assert short.cells == "undefined: short has 3 points | | "
    assert bd_rate(anchor, ("none", [])).cells == "not run yet (none) | | "


def test_decode_check_names_every_run_that_decodes_to_something_else():
    """A run missing its mismatch (an old evaluation) counts as decoding; NaN does not."""
    results = {"a": {"max_decode_mismatch": 0.0}, "b": {"max_decode_mismatch": 0.5},
               "c": {}, "d": {"max_decode_mismatch": math.nan}}  # fmt: skip
    assert decode_check(results) == (
        "decode check: 2 of 4 evaluated runs decode to their forward reconstruction within "
        "0.001; NOT: b, d"
    )


def test_mean_std_shows_the_digits_asked_and_no_spread_for_one_value():
    assert mean_std([]) == "–"
    assert mean_std([0.004], 3) == "+0.004"
    assert mean_std([0.031, 0.029], 3) == "+0.030 ± 0.001"
    assert mean_std([0.031, 0.029]) == "+0.03 ± 0.00"


def test_results_json_round_trip(tmp_path):
    """divergence reads what train_to_end writes."""
    (tmp_path / "diverged.json").write_text(json.dumps({"diverged": "step 3: NaN"}))
    assert divergence(tmp_path) == "step 3: NaN" and folder_done(tmp_path)
