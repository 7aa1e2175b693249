"""The converged-codec reproduction's decisions: when a codec counts as converged, which rate
an arm holds, what each run is configured with, and what the report compares."""

import argparse
import json
import math
import shutil
import statistics
import tarfile

import pytest
from converged_rd_calibration import calibration_report
from converged_rd_protocol import (
    ANCHOR_RATE,
    ARMS,
    CALIBRATION_LAMBDA,
    CODEC,
    CONTROL,
    FINAL_RATE,
    FINETUNE_STEPS,
    LAMBDAS,
    RESEEDED,
    SCRATCH_STEPS,
    TARGETED,
    all_runs,
    anchor_rate,
    calibration_config,
    calibration_folder,
    config_for,
    final_crop_rates,
    final_rate,
    finetune_crop_rates,
    kept_folder,
    run_folder,
    settled_means,
)
from protocol import FINETUNE_LR, Run, target_losses


def _log(folder, tag, points):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder / "tensorboard"))
    for step, value in points:
        writer.add_scalar(tag, value, step)
    writer.close()


def _finished(folder, bpp, psnr, seconds=1.0, training=None):
    """A finished calibration run; its training objective is the validation's unless given."""
    from converged_rd_calibration import rd_cost

    rate, distortion = training or (bpp, rd_cost(bpp, psnr)[1])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ANCHOR_RATE).write_text(json.dumps({"rate_bpp": rate}))  # as an anchor measures
    _log(folder, "val/bpp", [(1, bpp)])
    _log(folder, "val/psnr", [(1, psnr)])
    _log(folder, "train/rate_bpp", [(1, rate)])
    _log(folder, "train/distortion", [(1, distortion)])
    (folder / "metrics.json").write_text(json.dumps({"train_seconds": seconds}))


@pytest.fixture
def args(tmp_path):
    return argparse.Namespace(
        out=tmp_path / "runs", kept=tmp_path / "kept", device="cpu", threads=1,
        lambdas=list(LAMBDAS),
    )  # fmt: skip


def test_converged_when_the_last_doubling_gains_under_a_tenth_of_a_db(args):
    for steps, psnr in ((2000, 25.0), (4000, 27.0), (8000, 27.5), (16000, 27.58)):
        _finished(calibration_folder(CODEC, steps, args), 0.30, psnr)
    text = calibration_report(CODEC, args)
    row = next(line for line in text.splitlines() if line.startswith("| 16000 |"))
    assert row.startswith("| 16000 | 0.3000 | 27.58 |") and row.count("| +0.08 |") == 2
    assert text.count("converged at 16000 steps (this and every later doubling") == 2


def test_training_and_validation_objectives_get_their_own_verdicts(args):
    """Validation photos can jump between operating points while the training objective
    has settled: the report says so instead of one verdict for both."""
    steady = (0.15, 0.47)  # training R, D: the same at both lengths
    _finished(calibration_folder(CODEC, 32000, args), 0.28, 31.4, training=steady)
    _finished(calibration_folder(CODEC, 64000, args), 0.48, 31.6, training=steady)
    text = calibration_report(CODEC, args)
    assert "Verdict on the validation objective: not converged at any finished length; on " in text
    assert "on the training objective: converged at 64000 steps" in text


def test_a_doubling_that_loses_is_no_convergence(args):
    """A longer run that lands at a worse optimum (more rate for a little PSNR) does not
    count as converged, and a later large gain undoes an earlier small one."""
    for steps, bpp, psnr in ((4000, 0.32, 28.3), (8000, 0.51, 29.9), (16000, 0.28, 31.4)):
        _finished(calibration_folder(CODEC, steps, args), bpp, psnr)
    assert "not converged at any finished length" in calibration_report(CODEC, args)


def test_a_gain_in_rate_counts_as_much_as_one_in_psnr(args):
    """At the same PSNR, a doubling that saves rate is progress: the gain is the PSNR at
    equal rate that the lower R-D cost is worth."""
    from converged_rd_calibration import equal_rate_gain, rd_cost

    for steps, bpp in ((8000, 0.30), (16000, 0.27)):
        _finished(calibration_folder(CODEC, steps, args), bpp, 27.5)
    assert "not converged at any finished length" in calibration_report(CODEC, args)
    _, distortion = rd_cost(0.30, 27.5)
    assert equal_rate_gain((0.30, 27.5), (0.27, 27.5)) == pytest.approx(
        -10 * math.log10(1 - 0.03 / distortion)
    )
    # a pure PSNR gain at equal rate is counted as itself
    assert equal_rate_gain((0.3, 27.5), (0.3, 27.6)) == pytest.approx(0.1)
    # a higher rate for a little PSNR is a loss
    assert equal_rate_gain((0.27, 31.4), (0.47, 30.9)) < 0


def test_settled_means_average_a_runs_last_tenth(args):
    folder = run_folder(Run("ws", 0.0045, 1), args)
    folder.mkdir(parents=True)
    steps = range(100, 1001, 100)
    _log(folder, "train/rate_bpp", [(step, 1.0 if step <= 900 else 0.4) for step in steps])
    _log(folder, "train/distortion", [(step, 2.0 if step <= 800 else 0.5) for step in steps])
    # only step 1000 lies in (900, 1000]; steps 900 and 1000 in (800, 1000]
    assert settled_means(folder, "train/rate_bpp", "train/distortion") == pytest.approx((0.4, 0.5))


def test_targeted_arms_hold_the_rate_measured_in_the_anchors_folder(args):
    """The measured rate is read back (rounded to the 4 digits a target is given with), not
    measured again: the anchor here has no weights to measure with."""
    anchor = run_folder(Run("ws", 0.0045, 1), args)
    anchor.mkdir(parents=True)
    (anchor / ANCHOR_RATE).write_text(json.dumps({"rate_bpp": 0.40004, "steps": FINETUNE_STEPS}))
    assert anchor_rate(Run("ws", 0.0045, 1), args) == 0.4
    values = config_for(Run("eq-qp-t", 0.0045, 1), args)
    assert values["target_bpp"] == 0.4 and values["balancer"] == "eq-qp"
    assert values["init_from"] == str(anchor / "checkpoint.pt")
    assert (values["steps"], values["lr"], values["lr_schedule"]) == (
        FINETUNE_STEPS,
        FINETUNE_LR,
        "constant",
    )
    scratch = config_for(Run("c2f-scratch-t", 0.0045, 1), args)
    assert scratch["target_bpp"] == 0.4 and "init_from" not in scratch
    assert scratch["steps"] == SCRATCH_STEPS and scratch["lr_schedule"] == "cosine"


def test_every_arm_has_a_control_with_the_same_start():
    for arm, control in CONTROL.items():
        assert ARMS[arm].start_from == ARMS[control].start_from
    assert set(ARMS) - set(CONTROL) == {"ws", "ws+", "ws+'"}
    assert TARGETED <= set(ARMS)


def test_seed_by_seed_anchors_then_their_fine_tunes_then_arms_from_scratch(args):
    """Every run after its anchor; a seed's fine-tunes before the next seed's anchors, so
    that each arm has paired results a seed at a time; the long arms from scratch last."""
    args.arms, args.seeds = list(ARMS), [0, 1, 2]
    runs = all_runs(args)
    fine_tuned = [arm for arm, spec in ARMS.items() if spec.start_from]
    per_seed = len(args.lambdas) * (1 + len(fine_tuned))
    for index, seed in enumerate(args.seeds):
        block = runs[index * per_seed : (index + 1) * per_seed]
        assert {run.seed for run in block} == {seed}
        assert all(run.arm == "ws" for run in block[: len(args.lambdas)])
        assert {run.arm for run in block[len(args.lambdas) :]} == set(fine_tuned)
    scratch = runs[len(args.seeds) * per_seed :]
    assert {run.arm for run in scratch} == {"c2f-scratch-t"}
    assert len(scratch) == 3 * len(args.lambdas)
    assert len(runs) == len(set(runs)) == 3 * len(args.lambdas) * len(ARMS)


def test_calibration_matches_the_anchor_protocol(args):
    """The calibration trains exactly what an anchor trains, except its length."""
    anchor = config_for(Run("ws", CALIBRATION_LAMBDA, 0), args)
    calibration = calibration_config(CODEC, SCRATCH_STEPS, args)
    differing = {
        k for k in anchor.keys() | calibration.keys() if anchor.get(k) != calibration.get(k)
    }
    assert differing == {"out", "features"} or differing == {"out"}


def test_the_finished_calibration_run_of_the_protocols_length_is_the_first_anchor(args):
    """Linked, not trained twice, and only if its settings are the anchor's."""
    from converged_rd_protocol import link_calibration_anchor

    anchor = run_folder(Run("ws", CALIBRATION_LAMBDA, 0), args)
    calibrated = calibration_folder(CODEC, SCRATCH_STEPS, args)
    calibrated.mkdir(parents=True)
    settings = {**calibration_config(CODEC, SCRATCH_STEPS, args), "lr": 2e-3}
    (calibrated / "metrics.json").write_text(json.dumps({"config": settings}))
    link_calibration_anchor(args)
    assert not anchor.exists()  # trained otherwise: the anchor trains on its own
    settings = calibration_config(CODEC, SCRATCH_STEPS, args)
    (calibrated / "metrics.json").write_text(json.dumps({"config": settings}))
    link_calibration_anchor(args)
    assert anchor.is_symlink() and anchor.resolve() == calibrated.resolve()
    link_calibration_anchor(args)  # already there: left alone
    assert anchor.resolve() == calibrated.resolve()


def _coded(args, arm, seed, shift_db):
    """A coded run at every λ: PSNR = 30 + 6·log2(bpp / 0.1) + shift."""
    rates = [0.1 * 2**index for index in range(len(LAMBDAS))]
    _coded_at(args, arm, seed, [(bpp, 30 + 6 * math.log2(bpp / 0.1) + shift_db) for bpp in rates])


def _coded_at(args, arm, seed, points):
    """A coded run at every λ, at the given (bpp, PSNR), one a λ."""
    for lmbda, (bpp, psnr) in zip(LAMBDAS, points, strict=True):
        folder = run_folder(Run(arm, lmbda, seed), args)
        folder.mkdir(parents=True)
        (folder / "evaluation.json").write_text(json.dumps({"bpp": bpp, "psnr": psnr}))


def test_the_noise_floor_is_the_largest_seed_to_seed_difference(args):
    from converged_rd_report import arm_table, noise_floor

    args.seeds, args.arms = [0, 1], ["ws", "ws+", RESEEDED, "eq-qp"]
    for seed, shift in ((0, 0.0), (1, 0.05)):
        _coded(args, "ws", seed, shift)
        _coded(args, "ws+", seed, shift + 0.2)
        _coded(args, RESEEDED, seed, shift + 0.2 - (0.02 if seed else 0.01))
        _coded(args, "eq-qp", seed, shift + 0.2 + (0.3 if seed else 0.1))
    lines = noise_floor(args)
    assert "| seed (from scratch) | ws seed 1 vs ws seed 0 | +0.050 (4 points) |" in lines[2]
    assert "| fine-tuning data | ws+' seed 1 vs ws+ seed 1 | -0.020 (4 points) |" in lines[5]
    # 0.05 dB at 6 dB per doubling of rate is 2^(-0.05/6) − 1 = −0.58 % of rate
    assert lines[-1] == (
        "Noise floor (target ≤ 0.1 dB and ≤ 1.0 %): seed (from scratch): |Δ PSNR| ≤ 0.050 dB, "
        "|BD-rate| ≤ 0.58 % (reached); fine-tuning data: |Δ PSNR| ≤ 0.020 dB, |BD-rate| ≤ "
        "0.23 % (reached)."
    )
    rows = arm_table(args)[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| eq-qp"]  # the reseeded control is no arm
    # better by 0.1 and 0.3 dB at 6 dB per doubling: 2^(-0.1/6) − 1 = −1.15 % of rate, −3.41 %
    assert rows[0] == (
        "| eq-qp | ws+ | +0.100 (4), +0.300 (4) | +0.200 ± 0.141 | -1.15; -3.41 | -2.28 ± 1.60 |"
    )


def test_what_a_percent_of_rate_is_worth_follows_the_anchors_slope(args):
    """On a curve rising 6 dB per doubling of rate 1 % of rate is worth 6·log2(1.01) dB;
    a seed missing a λ does not count."""
    from converged_rd_report import rate_worth

    args.seeds = [0, 1]
    assert rate_worth(args) == []
    _coded(args, "ws", 0, 0.0)
    _coded(args, "ws", 1, 0.3)
    (run_folder(Run("ws", LAMBDAS[0], 1), args) / "evaluation.json").unlink()
    (line,) = rate_worth(args)
    assert "rise by 6.00, 6.00, 6.00 dB per doubling of rate (mean over 1 seed(s))" in line
    assert "1 % of rate is worth 0.086, 0.086, 0.086 dB at equal quality" in line


def test_a_diverged_run_and_an_undefined_bd_rate_are_named_not_averaged_away(args):
    """A point lost to divergence is counted in the arm's cell, BD-rate says why it is
    undefined, and a noise floor with no BD-rate keeps its Δ PSNR but is not judged."""
    from converged_rd_report import arm_table, noise_floor

    args.seeds, args.arms = [0, 1], ["ws", "ws+", "eq-qp"]
    for seed, shift in ((0, 0.0), (1, 0.05)):
        _coded(args, "ws", seed, shift)
    (run_folder(Run("ws", LAMBDAS[0], 1), args) / "evaluation.json").unlink()
    assert noise_floor(args)[-1] == (
        "Noise floor (target ≤ 0.1 dB and ≤ 1.0 %): seed (from scratch): |Δ PSNR| ≤ 0.050 dB, "
        "BD-rate undefined (target not judged)."
    )
    for seed, shift in ((0, 0.0), (1, 0.05)):
        _coded(args, "ws+", seed, shift + 0.2)
        _coded(args, "eq-qp", seed, shift + 0.3)
    lost = run_folder(Run("eq-qp", LAMBDAS[-1], 1), args)
    (lost / "evaluation.json").unlink()
    (lost / "diverged.json").write_text(json.dumps({"diverged": "loss is nan at step 7"}))
    assert arm_table(args)[2] == (
        "| eq-qp | ws+ | +0.100 (4), +0.100 (3, 1 diverged) | +0.100 ± 0.000 | "
        "-1.15; undefined: eq-qp seed 1 has 3 points | -1.15 |"
    )


def test_an_arm_that_lost_the_operating_point_is_shown_apart_from_its_control(args):
    """An arm coded only at rates its control never reached has no Δ PSNR at equal rate: its
    cell gives both rate spans; its BD-rate names the reason in a line (no overlap; a
    Pareto front too short), without the command-line advice of ``moopt_lic.compare``."""
    from converged_rd_report import arm_table

    args.seeds, args.arms = [0, 1], ["ws", "ws+", "eq-qp"]
    for seed in (0, 1):
        _coded(args, "ws+", seed, 0.0)
    collapsed = {0: [(0.003, 14.0), (0.006, 15.0), (0.012, 16.0), (0.024, 17.0)],
                 1: [(0.003, 14.0), (0.029, 15.4), (0.030, 17.5), (0.042, 13.7)]}  # fmt: skip
    for seed, points in collapsed.items():
        _coded_at(args, "eq-qp", seed, points)
    assert arm_table(args)[2] == (
        "| eq-qp | ws+ | – (no common rate: 0.003–0.024 vs 0.100–0.800 bpp), – (no common "
        "rate: 0.003–0.042 vs 0.100–0.800 bpp) | – | undefined: the curves 'ws+ seed 0' "
        "(30.00–48.00 dB) and 'eq-qp seed 0' (14.00–17.00 dB) do not overlap in quality: "
        "BD-rate is undefined (extend the λ grid); undefined: the Pareto front of 'eq-qp seed "
        "1' keeps 3 point(s); BD-rate needs at least 4 | – |"
    )


def test_nothing_starts_from_a_diverged_anchor(args, monkeypatch):
    """Its fine-tunes and the arms holding its rate are not configured, not trained, and the
    run table says why."""
    import converged_rd
    from converged_rd_report import run_table

    args.seeds, args.arms, args.lambdas, args.jobs, args.minutes = (
        [0],
        ["ws", "ws+"],
        [0.0035],
        1,
        1,
    )
    args.no_coding = False
    anchor = run_folder(Run("ws", 0.0035, 0), args)
    anchor.mkdir(parents=True)
    (anchor / "diverged.json").write_text(json.dumps({"diverged": "loss is nan at step 7"}))
    scheduled = {}
    monkeypatch.setattr(converged_rd, "run_tasks",
                        lambda tasks, *_: scheduled.update({t.name: t for t in tasks}))  # fmt: skip
    converged_rd.work(args)
    fine_tune = scheduled["wsplus-l0.0035-s0"]
    assert scheduled["ws-l0.0035-s0"].done and fine_tune.args[0] is None
    monkeypatch.setattr(converged_rd, "train_to_end", lambda *_: pytest.fail("nothing may train"))
    fine_tune.work(*fine_tune.args)
    assert "| wsplus-l0.0035-s0 | not trained: its anchor diverged |" in "\n".join(run_table(args))


def test_the_plot_shows_each_seeds_difference_inside_the_noise_band(args, tmp_path, monkeypatch):
    import converged_rd_report
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.seeds, args.arms = [0, 1], ["ws", "ws+", RESEEDED, "eq-qp"]
    for seed, shift in ((0, 0.0), (1, 0.05)):
        _coded(args, "ws", seed, shift)
        _coded(args, "ws+", seed, shift + 0.2)
        _coded(args, RESEEDED, seed, shift + 0.2 - (0.02 if seed else 0.01))
        _coded(args, "eq-qp", seed, shift + 0.2 + (0.3 if seed else 0.1))
    _, axis = plt.subplots()
    converged_rd_report.plot_deltas(axis, args)
    dots = [(line.get_xdata()[0], line.get_ydata()[0]) for line in axis.lines[:-1]]
    assert dots == [(0, pytest.approx(0.1)), (0, pytest.approx(0.3))]
    (band,) = axis.collections  # ± the fine-tuning floor (0.02 dB) around eq-qp
    assert band.get_paths()[0].vertices[:, 1].max() == pytest.approx(0.02)
    monkeypatch.setattr(converged_rd_report, "IMAGES", tmp_path / "images")
    converged_rd_report.plot(args)
    assert (tmp_path / "images" / "converged_rd.png").stat().st_size > 10_000


def test_the_fine_tuning_length_table_compares_each_arm_with_the_control_at_each_step(
    args, monkeypatch
):
    """At equal rate a PSNR difference is the gain itself; training windows are paired by
    step; a missing step says so; the last row averages the second half."""
    import converged_rd_calibration
    from converged_rd_calibration import (
        finetune_calibration_folder,
        finetune_length_report,
        rd_cost,
    )

    _log(run_folder(Run("ws", CALIBRATION_LAMBDA, 0), args), "val/bpp", [(64000, 0.3)])
    _log(run_folder(Run("ws", CALIBRATION_LAMBDA, 0), args), "val/psnr", [(64000, 32.0)])
    arms = (("ws+", 32.05, 30.0, 2), ("eq-qp-t", 32.15, 30.2, 2), ("c2f-t", 31.95, 30.0, 1))
    for arm, psnr, training_psnr, steps in arms:
        folder = finetune_calibration_folder(arm, CODEC, args)
        _log(folder, "val/bpp", [(1000 * (i + 1), 0.3) for i in range(steps)])
        _log(folder, "val/psnr", [(1000 * (i + 1), psnr) for i in range(steps)])
        logged = [100 * (i + 1) for i in range(10 * steps)]
        _log(folder, "train/rate_bpp", [(step, 0.25) for step in logged])
        distortion = rd_cost(0.25, training_psnr)[1]
        _log(folder, "train/distortion", [(step, distortion) for step in logged])
    lines = finetune_length_report(CODEC, args).splitlines()
    assert lines[2].startswith("| steps | ws+ validation bpp, PSNR | its gain (dB) | eq-qp-t ")
    assert lines[4] == (
        "| 1000 | 0.3000, 32.05 | +0.050 | 0.3000, 32.15 | +0.100 | +0.200 | "
        "0.3000, 31.95 | -0.100 | +0.000 |"
    )
    assert lines[5].endswith("| +0.100 | +0.200 | not reached |  |  |")
    # FINETUNE_CALIBRATION_STEPS is 16000: neither step is in the second half
    assert len(lines) == 6
    monkeypatch.setattr(converged_rd_calibration, "FINETUNE_CALIBRATION_STEPS", 2000)
    lines = finetune_length_report(CODEC, args).splitlines()
    assert lines[-1] == "| mean, second half |  | +0.050 |  | +0.100 | +0.200 |  | – | – |"


def test_fine_tuning_length_runs_are_the_protocols_fine_tunes_made_longer(args):
    import converged_rd_calibration
    from converged_rd_calibration import FINETUNE_CALIBRATION_ARMS, calibrate_finetune

    seen = []

    def record(tasks, jobs, minutes):
        seen.extend(task.args[0] for task in tasks)

    anchor = run_folder(Run("ws", CALIBRATION_LAMBDA, 0), args)
    anchor.mkdir(parents=True)
    (anchor / ANCHOR_RATE).write_text(json.dumps({"rate_bpp": 0.25}))
    args.jobs, args.minutes, args.codecs = 3, None, [CODEC]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(converged_rd_calibration, "run_tasks", record)
        patch.setattr(converged_rd_calibration, "finetune_length_report", lambda c, a: "table")
        patch.setattr(converged_rd_calibration, "write_results", lambda *a: None)
        calibrate_finetune(args)
    for arm, values in zip(FINETUNE_CALIBRATION_ARMS, seen, strict=True):
        protocol = config_for(Run(arm, CALIBRATION_LAMBDA, 0), args)
        assert {k for k in values if values[k] != protocol[k]} == {"steps", "out"}
        assert values["steps"] == 16000 and values["init_from"] == str(anchor / "checkpoint.pt")


def test_the_reseeded_control_draws_its_data_by_another_seed(args):
    from converged_rd_protocol import RESEED

    anchor = run_folder(Run("ws", 0.0035, 1), args)
    control = config_for(Run("ws+", 0.0035, 1), args)
    reseeded = config_for(Run(RESEEDED, 0.0035, 1), args)
    assert control["seed"] == 1 and reseeded["seed"] == 1 + RESEED
    assert reseeded["init_from"] == control["init_from"] == str(anchor / "checkpoint.pt")
    assert {key for key in control if control[key] != reseeded[key]} == {"seed", "out"}


def test_the_budget_counts_every_run_at_its_arms_measured_step(args, monkeypatch):
    import converged_rd_calibration
    from converged_rd_calibration import budget

    # every balanced arm 1.5× the weighted sum's step, coarse-to-fine 2×
    ratios = {"c2f-t": 2.0, "c2f-scratch-t": 2.0, "eq-qp": 1.5, "eq-qp-t": 1.5,
              "eq-qp-f-t": 1.5, "nash-mtl-t": 1.5, "imtl-g-t": 1.5}  # fmt: skip
    monkeypatch.setattr(converged_rd_calibration, "interleaved_ratio",
                        lambda arm, control: ratios.get(arm, 1.0))  # fmt: skip
    _finished(calibration_folder(CODEC, 2000, args), 0.3, 25.0, seconds=40.0)  # 20 ms a step
    _finished(calibration_folder(CODEC, 4000, args), 0.3, 26.0, seconds=400.0)  # shared cores
    (line,) = budget(CODEC, args)
    assert line.startswith("Cost: 20.0 ms a weighted-sum step on one core (the 2000-step run)")
    assert "(24 runs from scratch, 96 fine-tunes of" in line
    # 12 anchors at 1× and 12 c2f-scratch-t at 2×; 12 × (ws+, ws+' at 1×, 5 arms at 1.5×,
    # c2f-t at 2×) fine-tunes
    finetunes = 12 * FINETUNE_STEPS * (2 * 1.0 + 5 * 1.5 + 2.0)
    hours = [(12 * 1000 * k * 3.0 + finetunes) * 0.02 / 3600 for k in (16, 32, 64, 128)]
    shown = [f"{k}000: {h:.0f} h" for k, h in zip((16, 32, 64, 128), hours, strict=True)]
    assert ", ".join(shown) + "." in line


@pytest.mark.slow
def test_every_arm_trains_and_codes_and_the_report_shows_it(args, test_images, monkeypatch):
    """Every arm's configuration trains and is coded; a targeted fine-tune holds the rate
    its anchor measured on the fine-tunes' crops; the report shows every targeted arm's
    target; kept and packed runs carry the measurement (in-process: a tiny codec on the test
    photos)."""
    import converged_rd
    import converged_rd_protocol
    import converged_rd_report

    from moopt_lic.checkpoint import load_safely
    from moopt_lic.data import ImageSet

    tiny = {"model": "mbt2018-mean", "N": 8, "M": 8, "patch_size": 64, "batch_size": 2}
    settings = {"CODECS": {CODEC: tiny}, "DATA": test_images.parent, "HOLDOUT": 1,
                "SCRATCH_STEPS": 4, "FINETUNE_STEPS": 2}  # fmt: skip
    for name, value in settings.items():
        monkeypatch.setattr(converged_rd_protocol, name, value)
    monkeypatch.setattr(converged_rd, "eval_images", lambda: ImageSet.from_folder(test_images))
    monkeypatch.setattr(converged_rd_report, "plot", lambda args: None)
    args.seeds, args.arms, args.no_coding = [0], list(ARMS), False
    lmbda = LAMBDAS[0]
    for arm in ARMS:  # every arm's configuration trains and codes
        converged_rd.train_and_code(None, Run(arm, lmbda, 0), args)
    anchor = run_folder(Run("ws", lmbda, 0), args)
    # the anchor measured the rate its targeted arms hold on their crops: the rate that the
    # first step of a fine-tune (at the anchor's weights) trained on is its first step's
    measured = json.loads((anchor / ANCHOR_RATE).read_text())
    assert measured["steps"] == converged_rd_protocol.FINETUNE_STEPS
    held = run_folder(Run("eq-qp-t", lmbda, 0), args)
    rates = finetune_crop_rates(Run("ws", lmbda, 0), args)
    assert rates[0] == pytest.approx(target_losses(held)[0], rel=1e-6)
    assert measured["rate_bpp"] == pytest.approx(statistics.fmean(rates), rel=1e-12)
    fine_tune = _metrics_of(held)
    assert fine_tune["target"]["value"] == round(measured["rate_bpp"], 4)
    assert fine_tune["config"]["init_from"] == str(anchor / "checkpoint.pt")
    text = converged_rd_report.report(args)
    assert f"{len(ARMS)} of {len(LAMBDAS) * len(ARMS)} runs coded" in text
    for arm in TARGETED:
        target = _metrics_of(run_folder(Run(arm, lmbda, 0), args))["target"]["value"]
        assert f"| {Run(arm, lmbda, 0).name} | {target:.4f} |" in text
    for arm, control in CONTROL.items():  # every arm's time is set against its control's
        assert f"\n- {arm} / {control}: " in text
    assert "\n| eq-qp-t | 1 | " in text  # how the target held, from the run's checkpoint
    for arm in ARMS:  # every run measured where its final weights sit on its last crops
        assert final_rate(Run(arm, lmbda, 0), args) is not None, arm
    assert f"\n| eq-qp-t | {lmbda} | " in text and f"\n| c2f-scratch-t | {lmbda} | " in text
    # every run is kept; a fresh checkout restores them and reports the same
    for arm in ARMS:
        kept = load_safely(kept_folder(Run(arm, lmbda, 0), args) / "checkpoint.pt")
        assert ("model" in kept) == (arm == "ws"), arm  # the weights of what others start from
    kept_measurement = kept_folder(Run("ws", lmbda, 0), args) / ANCHOR_RATE
    assert kept_measurement.read_text() == (anchor / ANCHOR_RATE).read_text()
    kept_measurement.unlink()  # an anchor kept before it measured is kept again with it
    converged_rd.keep_run(Run("ws", lmbda, 0), args)
    assert kept_measurement.read_text() == (anchor / ANCHOR_RATE).read_text()
    kept_final = kept_folder(Run("eq-qp-t", lmbda, 0), args) / FINAL_RATE
    assert kept_final.read_text() == (held / FINAL_RATE).read_text()
    kept_final.unlink()  # so is any run kept before it measured its final weights
    logs = sorted(kept_final.parent.rglob("events.*"))
    converged_rd.keep_run(Run("eq-qp-t", lmbda, 0), args)
    assert kept_final.read_text() == (held / FINAL_RATE).read_text()
    assert sorted(kept_final.parent.rglob("events.*")) == logs  # added to, not kept again
    args.pack = args.out.parent / "packed.tar.gz"  # what a GPU machine sends back has it too
    converged_rd.pack(args)
    with tarfile.open(args.pack) as archive:
        assert f"{CODEC}/{anchor.name}/{ANCHOR_RATE}" in archive.getnames()
        assert f"{CODEC}/{held.name}/{FINAL_RATE}" in archive.getnames()
    shutil.rmtree(args.out)
    converged_rd.restore_kept(args)
    assert converged_rd_report.report(args) == text
    before = {path: path.stat().st_mtime_ns for path in args.out.rglob("*")}
    args.jobs, args.minutes, args.lambdas = 1, 1.0, [lmbda]
    converged_rd.work(args)  # restored runs count as finished: nothing trains or is refused
    assert {path: path.stat().st_mtime_ns for path in args.out.rglob("*")} == before


@pytest.mark.slow
def test_final_weights_are_measured_on_the_crops_and_noise_of_the_runs_last_steps(
    args, test_images, monkeypatch
):
    """At a learning rate too small to move a weight, the final weights are those of every
    step: their rate on the run's last tenth of steps is what each of those steps trained
    at, exactly (the same crops, the same noise), and the same for every arm at a λ and
    seed; a run kept without its weights is not measured."""
    import converged_rd
    import converged_rd_protocol
    import torch

    from moopt_lic.data import ImageSet
    from moopt_lic.targets import achieved_steps

    tiny = {"model": "mbt2018-mean", "N": 8, "M": 8, "patch_size": 64, "batch_size": 2}
    settings = {"CODECS": {CODEC: tiny}, "DATA": test_images.parent, "HOLDOUT": 1,
                "SCRATCH_STEPS": 2, "FINETUNE_STEPS": 30, "FINETUNE_LR": 1e-30}  # fmt: skip
    for name, value in settings.items():
        monkeypatch.setattr(converged_rd_protocol, name, value)
    monkeypatch.setattr(converged_rd, "eval_images", lambda: ImageSet.from_folder(test_images))
    args.no_coding, args.seeds, args.arms, lmbda = False, [0], ["ws", "eq-qp-t", "ws+"], LAMBDAS[0]
    for arm in ("ws", "eq-qp-t", "ws+"):
        converged_rd.train_and_code(None, Run(arm, lmbda, 0), args)
    held = run_folder(Run("eq-qp-t", lmbda, 0), args)
    final = final_crop_rates(Run("eq-qp-t", lmbda, 0), args)
    assert len(final) == achieved_steps(30) == 3
    assert final == pytest.approx(target_losses(held)[-3:], rel=1e-6)
    assert final == pytest.approx(final_crop_rates(Run("ws+", lmbda, 0), args), rel=1e-6)
    assert final_rate(Run("eq-qp-t", lmbda, 0), args) == pytest.approx(statistics.fmean(final))
    # the run's own final weights are measured, not the anchor's it started from
    state = torch.load(held / "checkpoint.pt", weights_only=True)
    state["model"] = {name: 1.2 * value if name.startswith("g_a") else value
                      for name, value in state["model"].items()}  # fmt: skip
    torch.save(state, held / "checkpoint.pt")
    changed = final_crop_rates(Run("eq-qp-t", lmbda, 0), args)
    assert all(abs(a / b - 1) > 1e-3 for a, b in zip(changed, final, strict=True))
    shutil.rmtree(args.out)
    converged_rd.restore_kept(args)  # kept without weights: not measured, and no error
    (held / FINAL_RATE).unlink()
    converged_rd_protocol.measure_final_rate(Run("eq-qp-t", lmbda, 0), args)
    assert final_rate(Run("eq-qp-t", lmbda, 0), args) is None


def test_a_run_trained_otherwise_is_not_measured_on_the_protocols_crops(args):
    """The last steps' crops follow from the run's settings: a run finished under others
    (here a longer fine-tune) is refused, not measured on crops it never trained on."""
    run = Run("ws+", LAMBDAS[0], 0)
    folder = run_folder(run, args)
    folder.mkdir(parents=True)
    trained = {**config_for(run, args), "steps": 2 * FINETUNE_STEPS}
    (folder / "metrics.json").write_text(json.dumps({"config": trained}))
    with pytest.raises(ValueError, match=f"steps: {2 * FINETUNE_STEPS} → {FINETUNE_STEPS}"):
        final_crop_rates(run, args)


def test_the_report_places_each_final_codec_on_its_training_and_its_controls(args):
    """Per arm and λ, over the seeds: the final weights' rate over the rate the last steps
    held, over the control's final weights', and the coded rate over the control's; an arm
    without a target has no held rate, a seed without a measurement is left out."""
    import torch
    from converged_rd_report import final_codecs

    args.seeds, args.arms, lmbda = [0, 1], ["ws+", "eq-qp-t"], LAMBDAS[0]

    def finished(arm, seed, final, coded, held=None):
        folder = run_folder(Run(arm, lmbda, seed), args)
        folder.mkdir(parents=True)
        target = {"objective": "rate", "value": 0.2} if held else None
        (folder / "metrics.json").write_text(json.dumps({"steps": 100, "target": target}))
        (folder / "evaluation.json").write_text(json.dumps({"bpp": coded}))
        if held:  # the last tenth held `held`; the steps before it did not count
            torch.save({"target_losses": [1.0] * 20 + [held] * 10}, folder / "checkpoint.pt")
        if final:
            (folder / FINAL_RATE).write_text(json.dumps({"rate_bpp": final}))

    finished("ws+", 0, 0.300, 0.400)
    finished("eq-qp-t", 0, 0.294, 0.380, held=0.300)  # −2 %, −2 %, −5 %
    finished("ws+", 1, 0.200, 0.300)
    finished("eq-qp-t", 1, None, 0.291, held=0.200)  # measured nothing: −3 % coded only
    lines = final_codecs(args)
    assert f"| eq-qp-t | {lmbda} | -2.00 | -2.00 | -4.00 ± 1.41 |" in lines
    assert f"| ws+ | {lmbda} |" not in "\n".join(lines)  # the control is no arm of its own
    args.arms = ["ws+"]
    assert final_codecs(args) == []


def test_time_ratios_say_so_when_no_arm_has_finished_beside_its_control(args):
    from converged_rd_report import time_ratios

    args.seeds, args.arms = [0], list(ARMS)
    assert time_ratios(args) == ["- none yet: no arm has finished a run beside its control's"]


def _metrics_of(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_every_compared_arm_has_its_method_in_the_interleaved_timing():
    import statistics

    from converged_rd_protocol import OVERHEAD_TIMES, interleaved_ratio

    times = json.loads(OVERHEAD_TIMES.read_text())["times"]
    for arm, control in CONTROL.items():
        assert interleaved_ratio(arm, control) > 0
    expected = statistics.median(times["EqQP exact, sequential"]) / statistics.median(
        times["weighted sum (glue)"]
    )
    assert interleaved_ratio("eq-qp-t", "ws+") == pytest.approx(expected)
    assert interleaved_ratio("ws+", "ws") == 1.0


def test_the_interleaved_timing_is_of_the_protocols_codec_as_its_runs_train():
    from converged_rd_protocol import CODECS, OVERHEAD_TIMES, interleaved_settings

    ran = json.loads(OVERHEAD_TIMES.read_text())["settings"]
    codec = CODECS[CODEC]
    assert (ran["model"], ran["N"], ran["M"]) == (codec["model"], codec["N"], codec["M"])
    assert (ran["batch"], ran["patch"], ran["threads"]) == (
        codec["batch_size"],
        codec["patch_size"],
        1,
    )
    assert interleaved_settings().startswith(
        "step_overhead_protocol_cpu.md: mbt2018-mean N = 16, M = 24, batch 4 × 128² on 1 thread,"
    )


def test_work_refuses_to_skip_runs_finished_under_another_protocol(args, monkeypatch):
    """A fine-tune finished before FINETUNE_STEPS changed is named, not silently reused."""
    import converged_rd

    monkeypatch.setattr(converged_rd, "run_tasks", lambda *a: pytest.fail("nothing may run"))
    args.seeds, args.arms, args.lambdas, args.jobs, args.minutes = (
        [0],
        ["ws", "ws+"],
        [0.0035],
        1,
        1,
    )
    args.no_coding = True
    for arm, steps in (("ws", SCRATCH_STEPS), ("ws+", FINETUNE_STEPS - 1)):
        folder = run_folder(Run(arm, 0.0035, 0), args)
        folder.mkdir(parents=True)
        config = {**config_for(Run(arm, 0.0035, 0), args), "steps": steps}
        (folder / "metrics.json").write_text(json.dumps({"config": config}))
    with pytest.raises(SystemExit, match=rf"wsplus-l0.0035-s0 \(steps: {FINETUNE_STEPS - 1} →"):
        converged_rd.work(args)


def test_the_crop_probe_compares_each_crop_size_with_the_anchors_own_at_its_lambda(args):
    """Each crop size against 64² at its λ; the ratio is whole-photo rate over crop rate."""
    from converged_rd_calibration import CROP_PROBE_CROPS, crop_probe_folder, crop_probe_report

    for lmbda in (0.00117, 0.0035):
        for index, crop in enumerate(CROP_PROBE_CROPS):
            folder = crop_probe_folder(lmbda, crop, args)
            _log(folder, "val/bpp", [(4000, 0.3)])
            _log(folder, "val/psnr", [(4000, 30.0 + 0.1 * index)])
            _log(folder, "train/rate_bpp", [(4000, 0.15)])
            _log(folder, "train/distortion", [(4000, 0.5)])
            (folder / "metrics.json").write_text(json.dumps({"train_seconds": 100.0}))
    lines = crop_probe_report(args).splitlines()
    assert (
        lines[4] == "| 0.00117 | 64² × 8 | 0.3000 | 30.00 | 0.1500 | 2.00 | +0.0 | +0.00 | 25.0 |"
    )
    assert (
        lines[9] == "| 0.0035 | 256² × 1 | 0.3000 | 30.20 | 0.1500 | 2.00 | +0.0 | +0.20 | 25.0 |"
    )


def test_the_lambda_grid_is_judged_by_each_seeds_validation_rate(args):
    from converged_rd_report import operating_points

    args.seeds = [0, 1]
    assert operating_points(args)[-1] == "No seed has an anchor at every λ yet."
    rates = dict(zip(args.lambdas, (0.14, 0.25, 0.45, 0.6), strict=True))
    for lmbda, rate in list(rates.items())[:3]:
        for seed, shift in ((0, -0.01), (1, 0.01)):
            _finished(run_folder(Run("ws", lmbda, seed), args), rate + shift, 30.0 + shift)
    assert operating_points(args)[-1] == "No seed has an anchor at every λ yet."
    _finished(run_folder(Run("ws", args.lambdas[3], 0), args), 0.6, 31.0)
    # the target is the anchor's measured rate, shown beside its log's mean
    measured = run_folder(Run("ws", args.lambdas[0], 1), args) / ANCHOR_RATE
    measured.write_text(json.dumps({"rate_bpp": 0.15304, "steps": FINETUNE_STEPS}))
    lines = operating_points(args)
    assert (
        f"| {args.lambdas[0]} | 0.130 bpp, 29.99 dB (0.1300; log 0.1300) | 0.150 bpp, 30.01 dB "
        "(0.1530; log 0.1500) |" in lines
    )
    assert f"| {args.lambdas[3]} | 0.600 bpp, 31.00 dB (0.6000; log 0.6000) | – |" in lines
    # seed 0: 0.13 ≤ 1.5 × 0.1 and 0.6 ≥ 0.8 / 1.5; seed 1 is not complete
    assert lines[-1] == "The λ grid spans about 0.1–0.8 bpp."
    _finished(run_folder(Run("ws", args.lambdas[3], 1), args), 0.5, 31.0)  # 0.5 < 0.8 / 1.5
    assert operating_points(args)[-1] == (
        "The λ grid spans seed 0 0.13–0.60 bpp, seed 1 0.15–0.50 bpp, not about 0.1–0.8 bpp."
    )


def test_the_report_shows_the_mean_and_geometric_mean_held_beside_the_batch_spread(args):
    """Batch rates t·e^(±s) in turn: the geometric mean is the target, the mean sits cosh(s) − 1
    above it, and the spread column is exp(s²/2) − 1; a run without a checkpoint is left out."""
    import torch
    from converged_rd_report import target_holding

    args.seeds, args.arms = [0], ["ws+", "eq-qp-t"]
    target, spread = 0.2, 0.2
    for lmbda in LAMBDAS[:2]:
        folder = run_folder(Run("eq-qp-t", lmbda, 0), args)
        folder.mkdir(parents=True)
        metrics = {"lambda": lmbda, "steps": 100, "target": {"objective": "rate", "value": target}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        # the checkpoint keeps the last 30 of the 100 steps: those before the last tenth of
        # the run's steps lie outside the window and must not count
        losses = [10 * target] * 20 + [target * math.exp(spread * (-1) ** i) for i in range(10)]
        torch.save({"target_losses": losses}, folder / "checkpoint.pt")
    unfinished = run_folder(Run("eq-qp-t", LAMBDAS[2], 0), args)
    unfinished.mkdir(parents=True)
    (unfinished / "metrics.json").write_text(json.dumps(metrics))
    mean = 100 * (math.cosh(spread) - 1)
    batch = 100 * math.expm1(spread**2 / 2)
    row = f"| eq-qp-t | 2 | +{mean:.2f} ± 0.00 | +0.00 ± 0.00 | +{batch:.2f} ± 0.00 |"
    assert row in target_holding(args)
    args.arms = ["ws+"]  # no targeted arm: no section
    assert target_holding(args) == []
