"""Balanced against weighted-sum training on converged codecs, compared at equal rate.

Protocol (every choice is a constant below):

* codec: ``mbt2018-mean`` with N = 16, M = 24 (``CODEC``; the calibration also trained
  N = 32, M = 48), the size whose steps 2 CPU cores can afford; random 128 × 128 crops of
  ``../shared/data/train`` (4 photos held out for validation), batch 4 (64² crops, batch 8,
  coded whole photos at twice the rate they should: ``--stage probe-crops``; 256² crops,
  batch 1, had not converged by 128000 steps); Adam lr 1e-3
  with cosine decay to 0, aux Adam 1e-3, gradient-norm clip 1.0.
* calibration (``--stage calibrate``): the weighted sum at λ = 0.0035, seed 0, trained for
  ``CALIBRATION_STEPS`` steps, each run with its own full cosine schedule; a codec is
  converged when the last doubling of steps gained less than 0.1 dB of validation PSNR at
  equal rate (the doubling's saving of R-D cost J = R + λ·255²·MSE, counted in dB of
  distortion: runs of different lengths land at different rates, so PSNR alone misleads).
  The smallest converged length is ``SCRATCH_STEPS``:
  ``benchmarks/results/converged_rd_calibration.md``.
* anchors ``ws``: the weighted sum from scratch for ``SCRATCH_STEPS`` at 4 λ (``LAMBDAS``,
  chosen from the calibration's validation rate to span about 0.1–0.8 bpp) and 3 seeds,
  **paired**: a seed fixes the initial weights, the data order, the crops and the
  quantisation noise of every arm, so arms differ only by how they train.
* fine-tunes of each anchor for ``FINETUNE_STEPS`` at lr 5e-5, constant (the paper's
  recipe): ``ws+`` (the weighted sum continued: the control, equal total steps), ``ws+'``
  (the same on data drawn by another seed: the noise of the fine-tuning alone), ``eq-qp``
  (no target), and, each holding the anchor's training rate (``--target-bpp``, the mean of
  the anchor's last 10 % of steps): ``eq-qp-t``, ``eq-qp-f-t`` (``--features``), ``c2f-t``
  (coarse-to-fine), ``nash-mtl-t`` and ``imtl-g-t``;
* ``c2f-scratch-t``: coarse-to-fine from scratch for ``SCRATCH_STEPS``, holding the anchor's
  training rate (compared with the anchors: equal steps);
* evaluation: real entropy coding of the 24 photos of ``../shared/data/eval`` (never used
  for any choice).

Reported (``benchmarks/results/converged_rd.md`` and ``docs/images/converged_rd.png``): the
noise floor (the anchors' and the controls' seed-to-seed spread of PSNR at equal rate and of
BD-rate), each arm's PSNR difference to its control at equal coded rate and its BD-rate
where the curves overlap, mean ± std over the seeds, the rate each targeted arm held, the
effective λ and weights, and the training-time ratios.

Runs are resumable: each invocation works for at most ``--minutes``, ``--jobs`` runs at a
time (1 thread each), finished runs are skipped and stopped ones continue from their last
checkpoint. ``--pack`` writes the results of every finished run into one archive (what a
GPU machine sends back).

    python benchmarks/converged_rd.py --stage calibrate   # first: ≈ 2 h a codec on one core
    python benchmarks/converged_rd.py --stage probe-crops # the crop size (64² codec)
    python benchmarks/converged_rd.py --stage calibrate-finetune  # the fine-tuning length
    python benchmarks/converged_rd.py                     # repeat until it prints the tables
    python benchmarks/converged_rd.py --stage report      # the tables from what is coded
    python benchmarks/converged_rd.py --device cuda --jobs 12 --pack runs/converged.tar.gz
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from protocol import (
    DATA,
    FINETUNE_LR,
    HOLDOUT,
    IMAGES,
    RESULTS,
    ROOT,
    Arm,
    Run,
    Task,
    bd_cells,
    code_run,
    divergence,
    equal_rate_difference,
    eval_images,
    evaluation,
    folder_done,
    last_validation,
    mean_std,
    run_metrics,
    run_tasks,
    scalar_histories,
    scalars,
    to_code,
    train_to_end,
    trained_otherwise,
    write_results,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: The codecs calibrated, by name; the protocol trains ``CODEC``.
CODECS = {
    "N32-M48": {"model": "mbt2018-mean", "N": 32, "M": 48, "patch_size": 64, "batch_size": 8},
    "N16-M24": {"model": "mbt2018-mean", "N": 16, "M": 24, "patch_size": 64, "batch_size": 8},
    "N16-M24-p256": {
        "model": "mbt2018-mean",
        "N": 16,
        "M": 24,
        "patch_size": 256,
        "batch_size": 1,
    },
    # the protocol's: 4 images a step at the pixels of one 256² crop
    "N16-M24-p128b4": {
        "model": "mbt2018-mean",
        "N": 16,
        "M": 24,
        "patch_size": 128,
        "batch_size": 4,
    },
}
#: N16-M24 was cheaper a step than N32-M48 and reached a lower R-D cost at 32000 and 64000
#: steps, but on 64² crops its hyperprior sees one hyper-latent a crop: whole photos cost it
#: 1.8–2.3× the crops' rate, and fine-tuning on larger crops halved their rate at the same
#: PSNR (``--stage probe-crops``). On 256² crops, batch 1, it had not converged by 128000
#: steps; on 128² crops, batch 4 (the same pixels a step), it converged by 128000 steps.
CODEC = "N16-M24-p128b4"
CALIBRATION_LAMBDA = 0.0035
CALIBRATION_STEPS = (2000, 4000, 8000, 16000, 32000, 64000, 128000)
#: Converged: the last doubling of steps gained less than this (dB of PSNR at equal rate).
CONVERGED_GAIN_DB = 0.1
#: The seed-to-seed spread below which a comparison can tell a 2 % effect.
NOISE_TARGET_DB = 0.1
NOISE_TARGET_PERCENT = 1.0
#: Where the calibration of ``CODEC`` converged (the doubling from 64000 to 128000 steps
#: gained 0.09 dB of validation PSNR at equal rate, 0.07 dB on the training crops).
SCRATCH_STEPS = 128000
#: The paper fine-tunes 50 epochs after 100–150 from scratch (a third or more); an eighth is
#: what the budget allows. ``--stage calibrate-finetune`` shows the arms still moving away
#: from the control on the validation photos after 2000 steps.
FINETUNE_STEPS = 8000
#: CompressAI's zoo λ of qualities 2, 4, 6 and 8 (×3.7 apart): from the calibration point,
#: where the 256²-crop probe validates at 0.13 bpp, about 0.13, 0.22, 0.4, 0.7 bpp if rate
#: grows like λ^0.43 as it did between λ 0.00117 and 0.0035.
LAMBDAS = (0.0035, 0.013, 0.0483, 0.18)
#: The validation rates the anchors should span (bpp), about: each end within this factor.
RATE_SPAN = (0.1, 0.8)
RATE_SLACK = 1.5
SEEDS = (0, 1, 2)

ARMS = {
    "ws": Arm("weighted-sum"),
    "ws+": Arm("weighted-sum", start_from="ws"),
    "ws+'": Arm("weighted-sum", start_from="ws"),
    "eq-qp": Arm("eq-qp", start_from="ws"),
    "eq-qp-t": Arm("eq-qp", start_from="ws"),
    "eq-qp-f-t": Arm("eq-qp", start_from="ws", features=True),
    "c2f-t": Arm("coarse-to-fine", start_from="ws"),
    "nash-mtl-t": Arm("nash-mtl", start_from="ws"),
    "imtl-g-t": Arm("imtl-g", start_from="ws"),
    "c2f-scratch-t": Arm("coarse-to-fine"),
}
#: Arms that hold the anchor's training rate; they start once the anchor is done.
TARGETED = {"eq-qp-t", "eq-qp-f-t", "c2f-t", "nash-mtl-t", "imtl-g-t", "c2f-scratch-t"}
#: The control fine-tuned on other data: its crops, their order and noise (and the held-out
#: photos) drawn by seed + ``RESEED``; against ``ws+`` it measures what fine-tuning alone varies.
RESEEDED = "ws+'"
RESEED = 100
#: The arm each arm is compared with: the same start and the same number of steps.
CONTROLS = ("ws", "ws+", RESEEDED)
CONTROL = {arm: "ws+" for arm, spec in ARMS.items() if spec.start_from and arm not in CONTROLS}
CONTROL["c2f-scratch-t"] = "ws"
#: The share of an anchor's last steps whose mean training rate the targeted arms hold.
TARGET_WINDOW = 0.1
#: The fine-tuning length calibration (``--stage calibrate-finetune``): these arms fine-tune
#: the calibration anchor (λ = ``CALIBRATION_LAMBDA``, seed 0) this long, validated every
#: 1000 steps, to see how their difference to the control grows with the length.
FINETUNE_CALIBRATION_STEPS = 16000
FINETUNE_CALIBRATION_ARMS = ("ws+", "eq-qp-t", "c2f-t")
#: The crop probe (``--stage probe-crops``): seed 0's anchors of ``CROP_PROBE_CODEC`` (64²
#: crops) at these λ fine-tuned by the weighted sum on crops of each size (the batch keeps
#: the pixels a step at most twice 8 × 64²), to see whether larger crops code whole photos
#: better than the training crops.
CROP_PROBE_CODEC = "N16-M24"
CROP_PROBE_LAMBDAS = (0.00117, 0.0035)
CROP_PROBE_CROPS = ((64, 8), (128, 2), (256, 1))
CROP_PROBE_STEPS = 4000
CROP_PROBE_LR = 1e-4


def calibration_folder(codec: str, steps: int, args: argparse.Namespace) -> Path:
    return args.out / "calibrate" / codec / f"ws-l{CALIBRATION_LAMBDA}-s0-steps{steps}"


def common_settings(
    run_folder: Path, lmbda: float, seed: int, args: argparse.Namespace, codec: str = CODEC
) -> dict:
    """What every run shares: data, codec, λ, seed, logging; one CPU thread a run."""
    return dict(
        dataset=str(DATA / "train"),
        holdout=HOLDOUT,
        **CODECS[codec],
        lmbda=lmbda,
        seed=seed,
        device=args.device,
        threads=args.threads,
        progress=False,
        final_eval=False,
        out=str(run_folder),
        checkpoint_every=500,
        eval_every=1000,
        log_every=100,
    )


def calibration_config(codec: str, steps: int, args: argparse.Namespace) -> dict:
    folder = calibration_folder(codec, steps, args)
    values = common_settings(folder, CALIBRATION_LAMBDA, 0, args, codec)
    return {**values, **ARMS["ws"].settings(), "steps": steps, "lr": 1e-3,
            "lr_schedule": "cosine"}  # fmt: skip


def anchor_rate(folder: Path) -> float:
    """The anchor's mean training rate (bpp) over its last ``TARGET_WINDOW`` of steps."""
    history = scalars(folder, "train/rate_bpp")
    last = history[-1][0]
    window = [value for step, value in history if step > last * (1 - TARGET_WINDOW)]
    return round(statistics.fmean(window), 4)


def run_folder(run: Run, args: argparse.Namespace, codec: str = CODEC) -> Path:
    """Where a run of the protocol trains ``codec`` (one folder of runs a codec)."""
    return args.out / codec / run.name


def config_for(run: Run, args: argparse.Namespace, codec: str = CODEC) -> dict:
    """The run's full configuration (an arm's target needs its anchor finished)."""
    seed = run.seed + RESEED if run.arm == RESEEDED else run.seed
    values = {**common_settings(run_folder(run, args, codec), run.point, seed, args, codec),
              **ARMS[run.arm].settings()}  # fmt: skip
    anchor = run_folder(Run("ws", run.point, run.seed), args, codec)
    if run.arm in TARGETED:
        values["target_bpp"] = anchor_rate(anchor)
    if run.source(ARMS) is None:
        return {**values, "steps": SCRATCH_STEPS, "lr": 1e-3, "lr_schedule": "cosine"}
    return {**values, "steps": FINETUNE_STEPS, "lr": FINETUNE_LR, "lr_schedule": "constant",
            "init_from": str(anchor / "checkpoint.pt")}  # fmt: skip


def link_calibration_anchor(args: argparse.Namespace, codec: str = CODEC) -> None:
    """Let the calibration run of ``SCRATCH_STEPS`` be the anchor at the calibration λ and
    seed 0 (a link, not a second training of the same run), if it finished with exactly the
    anchor's settings and the anchor has no folder yet."""
    anchor = run_folder(Run("ws", CALIBRATION_LAMBDA, 0), args, codec)
    calibrated = calibration_folder(codec, SCRATCH_STEPS, args)
    if anchor.exists() or anchor.is_symlink() or run_metrics(calibrated) is None:
        return
    if trained_otherwise(calibrated, config_for(Run("ws", CALIBRATION_LAMBDA, 0), args, codec)):
        return
    anchor.parent.mkdir(parents=True, exist_ok=True)
    anchor.symlink_to(os.path.relpath(calibrated, anchor.parent))


def all_runs(args: argparse.Namespace) -> list[Run]:
    """The anchors first (every other run needs one), then the fine-tunes by seed (short:
    every arm has results early), then the other arms from scratch."""
    anchors = [Run("ws", lm, seed) for seed in args.seeds for lm in args.lambdas]
    others = [Run(arm, lm, seed) for seed in args.seeds for arm in args.arms if arm != "ws"
              for lm in args.lambdas]  # fmt: skip
    return anchors + sorted(others, key=lambda run: ARMS[run.arm].start_from is None)


def train_and_code(values: dict | None, run: Run, args: argparse.Namespace) -> None:
    """Train one run to its end (``values``; None: build them now that the anchor is done),
    then code the evaluation photos once (a worker process)."""
    train_to_end(values if values is not None else config_for(run, args))
    folder = run_folder(run, args)
    if not args.no_coding and to_code(folder):
        code_run(folder, eval_images(), args.device)


def finetune_calibration_folder(arm: str, codec: str, args: argparse.Namespace) -> Path:
    return args.out / "calibrate-finetune" / codec / Run(arm, CALIBRATION_LAMBDA, 0).name


def calibrate_finetune(args: argparse.Namespace) -> None:
    """Fine-tune the calibration anchor of the first of ``--codecs`` with each of
    ``FINETUNE_CALIBRATION_ARMS`` for ``FINETUNE_CALIBRATION_STEPS``, then write their
    validation against the length."""
    codec = args.codecs[0]
    link_calibration_anchor(args, codec)
    tasks = []
    for arm in FINETUNE_CALIBRATION_ARMS:
        folder = finetune_calibration_folder(arm, codec, args)
        values = {**config_for(Run(arm, CALIBRATION_LAMBDA, 0), args, codec),
                  "out": str(folder), "steps": FINETUNE_CALIBRATION_STEPS}  # fmt: skip
        tasks.append(Task(f"calibrate-finetune-{arm}", train_to_end, (values,),
                          done=folder_done(folder)))  # fmt: skip
    run_tasks(tasks, args.jobs, args.minutes)
    text = finetune_length_report(codec, args)
    print(text)
    write_results(f"converged_rd_finetune_length_{codec}", text, "python benchmarks/"
                  f"converged_rd.py --stage calibrate-finetune --codecs {codec}")  # fmt: skip


def finetune_length_report(codec: str, args: argparse.Namespace) -> str:
    """Each fine-tuning arm against the control every 1000 steps: on the validation photos
    (noisy: 4 photos) and on the training crops of the last 1000 steps (the same crops for
    every arm: a paired, quieter measure), as the PSNR gain at equal rate worth the same R-D
    cost at the calibration λ."""
    control, *arms = FINETUNE_CALIBRATION_ARMS
    validation, training = {}, {}
    for arm in FINETUNE_CALIBRATION_ARMS:
        folder = finetune_calibration_folder(arm, codec, args)
        logged = scalar_histories(folder, "val/bpp", "val/psnr")
        validation[arm] = {step: (bpp, psnr) for (step, bpp), (_, psnr)
                           in zip(logged["val/bpp"], logged["val/psnr"], strict=True)}  # fmt: skip
        training[arm] = training_windows(folder, 1000)
    anchor = last_validation(run_folder(Run("ws", CALIBRATION_LAMBDA, 0), args, codec))
    lines = [
        f"Fine-tuning the calibration anchor of {codec} (λ = {CALIBRATION_LAMBDA}, seed 0, "
        f"validation {anchor[0]:.4f} bpp, {anchor[1]:.2f} dB) at lr "
        f"{FINETUNE_LR}, constant. Validation: the 4 held-out photos (likelihood rate); "
        "training: the mean over the 1000 steps up to that step (the same crops and noise for "
        "every arm). Gains: PSNR at equal rate worth the same R-D cost J = R + λ·255²·MSE, "
        f"against {control} at the same step ({control}: against the anchor's validation).",
        "",
        f"| steps | {control} validation bpp, PSNR | its gain (dB) | "
        + " | ".join(f"{arm} validation bpp, PSNR | gain (dB) | training gain (dB)" for arm in arms)
        + " |",
        "|---|---|---|" + "---|---|---|" * len(arms),
    ]
    later: dict[int, list[float]] = {}  # each gain column's values in the second half
    for step, point in sorted(validation[control].items()):
        gains = [equal_rate_gain(anchor, point)]
        cells = [f"{point[0]:.4f}, {point[1]:.2f}", _signed(gains[0])]
        for arm in arms:
            other, window = validation[arm].get(step), training[arm].get(step)
            if other is None or window is None:
                gains += [math.nan, math.nan]
                cells += ["not reached", "", ""]
                continue
            gains += [equal_rate_gain(point, other), cost_gain(training[control][step], window)]
            cells += [f"{other[0]:.4f}, {other[1]:.2f}", _signed(gains[-2]), _signed(gains[-1])]
        lines.append(f"| {step} | {' | '.join(cells)} |")
        if step > FINETUNE_CALIBRATION_STEPS / 2:
            for column, gain in enumerate(gains):
                later.setdefault(column, []).append(gain)
    if later:
        finite = [[value for value in values if math.isfinite(value)] for values in later.values()]
        means = [_signed(statistics.fmean(values)) if values else "–" for values in finite]
        cells = ["", means[0]]
        for index in range(1, len(means), 2):
            cells += ["", *means[index : index + 2]]
        lines.append(f"| mean, second half | {' | '.join(cells)} |")
    return "\n".join(lines)


def training_windows(folder: Path, width: int) -> dict[int, tuple[float, float]]:
    """(R, D) of the training objective, means over the logged steps of each ``width`` steps,
    by the window's last step."""
    histories = scalar_histories(folder, "train/rate_bpp", "train/distortion")
    windows: dict[int, list[tuple[float, float]]] = {}
    pairs = zip(histories["train/rate_bpp"], histories["train/distortion"], strict=True)
    for (step, rate), (_, distortion) in pairs:
        windows.setdefault(-(-step // width) * width, []).append((rate, distortion))
    return {end: (statistics.fmean(r for r, _ in values), statistics.fmean(d for _, d in values))
            for end, values in windows.items()}  # fmt: skip


def crop_probe_folder(lmbda: float, crop: tuple[int, int], args: argparse.Namespace) -> Path:
    return args.out / "probe-crops" / f"ws-l{lmbda}-s0-p{crop[0]}-b{crop[1]}"


def probe_crops(args: argparse.Namespace) -> None:
    """Fine-tune seed 0's anchors on each crop size, then write the validation table."""
    tasks = []
    for lmbda in CROP_PROBE_LAMBDAS:
        for crop in CROP_PROBE_CROPS:
            folder = crop_probe_folder(lmbda, crop, args)
            fine_tune = config_for(Run("ws+", lmbda, 0), args, CROP_PROBE_CODEC)
            values = {**fine_tune, "out": str(folder),
                      "patch_size": crop[0], "batch_size": crop[1], "steps": CROP_PROBE_STEPS,
                      "lr": CROP_PROBE_LR}  # fmt: skip
            tasks.append(Task(folder.name, train_to_end, (values,), done=folder_done(folder)))
    run_tasks(tasks, args.jobs, args.minutes)
    text = crop_probe_report(args)
    print(text)
    write_results(
        "converged_rd_crops", text, "python benchmarks/converged_rd.py --stage probe-crops"
    )


def crop_probe_report(args: argparse.Namespace) -> str:
    """Each crop size's whole-photo validation after the probe, its training rate, and its
    validation rate and PSNR against the anchor's own crops (64 × 64) at the same λ."""
    lines = [
        f"Seed 0's anchors of {CROP_PROBE_CODEC} (trained on 64 × 64 crops, batch 8) fine-tuned "
        f"by the weighted sum for {CROP_PROBE_STEPS} steps at lr {CROP_PROBE_LR}, constant, on "
        "crops of each size. Validation: the 4 held-out photos, whole (likelihood rate); "
        "training rate: the mean over the last 10 % of steps, on the crops. Δ: against the "
        "64 × 64 fine-tune at the same λ. Time: two runs at a time, one core each.",
        "",
        "| λ | crops × batch | validation bpp | validation PSNR (dB) | training bpp | "
        "validation / training rate | Δ validation rate (%) | Δ validation PSNR (dB) | "
        "ms a step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lmbda in CROP_PROBE_LAMBDAS:
        base = crop_probe_folder(lmbda, CROP_PROBE_CROPS[0], args)
        base_point = last_validation(base) if run_metrics(base) is not None else None
        for crop in CROP_PROBE_CROPS:
            folder = crop_probe_folder(lmbda, crop, args)
            metrics = run_metrics(folder)
            if metrics is None or base_point is None:
                lines.append(f"| {lmbda} | {crop[0]}² × {crop[1]} | not finished | | | | | | |")
                continue
            step_ms = 1000 * metrics["train_seconds"] / CROP_PROBE_STEPS
            bpp, psnr = last_validation(folder)
            rate = training_cost(folder)[0]
            base_bpp, base_psnr = base_point
            lines.append(f"| {lmbda} | {crop[0]}² × {crop[1]} | {bpp:.4f} | {psnr:.2f} | "
                         f"{rate:.4f} | {bpp / rate:.2f} | {100 * (bpp / base_bpp - 1):+.1f} | "
                         f"{psnr - base_psnr:+.2f} | {step_ms:.1f} |")  # fmt: skip
    return "\n".join(lines)


def calibrate(args: argparse.Namespace) -> None:
    """Train the calibration lengths of ``--codecs``, then write their tables."""
    tasks = []
    for codec in args.codecs:
        for steps in sorted(args.lengths, reverse=True):  # the longest first
            values = calibration_config(codec, steps, args)
            tasks.append(Task(f"calibrate-{codec}-{steps}", train_to_end, (values,),
                              done=folder_done(Path(values["out"]))))  # fmt: skip
    run_tasks(tasks, args.jobs, args.minutes)
    write_calibration(args)


def write_calibration(args: argparse.Namespace) -> None:
    """``benchmarks/results/converged_rd_calibration.md``: every codec's table."""
    text = "\n\n".join(calibration_report(codec, args) for codec in CODECS)
    print(text)
    write_results("converged_rd_calibration", text, "python benchmarks/converged_rd.py "
                  "--stage calibrate --codecs " + " ".join(CODECS))  # fmt: skip


def rd_cost(bpp: float, psnr: float, lmbda: float = CALIBRATION_LAMBDA) -> tuple[float, float]:
    """(J, D) at ``lmbda``: J = R + D with D = λ·255²·MSE, MSE from the PSNR."""
    distortion = lmbda * 255**2 * 10 ** (-psnr / 10)
    return bpp + distortion, distortion


def cost_gain(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The PSNR gain at equal rate (dB) worth as much R-D cost as ``before`` → ``after``
    ((R, D) each, J = R + D) saved: the weighted sum's own measure of progress, which counts
    a gain in rate as well as one in distortion."""
    share = (sum(before) - sum(after)) / before[1]
    return -10 * math.log10(1 - share) if share < 1 else math.inf


def equal_rate_gain(
    before: tuple[float, float], after: tuple[float, float], lmbda: float = CALIBRATION_LAMBDA
) -> float:
    """[`cost_gain`][] of two (bpp, PSNR) points at ``lmbda``."""
    (bpp_before, psnr_before), (bpp_after, psnr_after) = before, after
    return cost_gain((bpp_before, rd_cost(bpp_before, psnr_before, lmbda)[1]),
                     (bpp_after, rd_cost(bpp_after, psnr_after, lmbda)[1]))  # fmt: skip


def training_cost(folder: Path) -> tuple[float, float]:
    """(R, D) of the training objective, means over the run's last 10 % of logged steps
    (random crops of the training photos, with quantisation noise)."""
    histories = scalar_histories(folder, "train/rate_bpp", "train/distortion")
    rates = [value for _, value in histories["train/rate_bpp"]]
    distortions = [value for _, value in histories["train/distortion"]]
    window = max(1, len(rates) // 10)
    return statistics.fmean(rates[-window:]), statistics.fmean(distortions[-window:])


def settled_from(gains: dict[int, float]) -> int | None:
    """The first length from which this and every later doubling moved the cost by less
    than ``CONVERGED_GAIN_DB`` either way (a doubling that loses is no sign of convergence
    but of runs landing at different optima), or None."""
    small = {steps: abs(gain) < CONVERGED_GAIN_DB for steps, gain in gains.items()}
    settled = [steps for steps in gains if all(small[later] for later in gains if later >= steps)]
    return settled[0] if settled else None


def calibration_report(codec: str, args: argparse.Namespace) -> str:
    """Validation and training R-D cost at the end of each calibration length, the gain of
    each doubling on both, and the verdicts."""
    lines = [
        f"**{codec}** ({CODECS[codec]}): weighted sum, λ = {CALIBRATION_LAMBDA}, seed 0; each "
        "length with its own cosine schedule to 0. Validation: 4 held-out training photos, "
        "whole (likelihood rate); training: the mean over the last 10 % of steps "
        f"({CODECS[codec]['patch_size']}² crops). J = R + λ·255²·MSE; a doubling's gain is "
        "the PSNR gain at equal rate that would lower J as much.",
        "",
        "| steps | validation bpp | validation PSNR (dB) | validation J | its gain (dB) | "
        "training J | its gain (dB) | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    validation: dict[int, tuple[float, float]] = {}
    training: dict[int, tuple[float, float]] = {}
    gains: dict[str, dict[int, float]] = {"validation": {}, "training": {}}
    for steps in CALIBRATION_STEPS:
        folder = calibration_folder(codec, steps, args)
        if (metrics := run_metrics(folder)) is None:
            lines.append(f"| {steps} | not finished | | | | | | |")
            continue
        bpp, psnr = last_validation(folder)
        validation[steps] = (bpp, rd_cost(bpp, psnr)[1])
        training[steps] = training_cost(folder)
        cells = []
        for name, costs in (("validation", validation), ("training", training)):
            half = costs.get(steps // 2)
            if half:
                gains[name][steps] = cost_gain(half, costs[steps])
            shown = _shown_gain(gains[name][steps]) if half else "–"
            cells.append(f"{sum(costs[steps]):.4f} | {shown}")
        lines.append(f"| {steps} | {bpp:.4f} | {psnr:.2f} | {' | '.join(cells)} | "
                     f"{metrics['train_seconds']:.0f} |")  # fmt: skip
    verdicts = []
    for name in ("validation", "training"):
        first = settled_from(gains[name])
        verdict = "not converged at any finished length"
        if first:
            verdict = (f"converged at {first} steps (this and every later doubling moved J by "
                       f"less than {CONVERGED_GAIN_DB} dB at equal rate)")  # fmt: skip
        verdicts.append(f"on the {name} objective: {verdict}")
    return "\n".join([*lines, "", f"Verdict {verdicts[0]}; {verdicts[1]}.", "",
                      *budget(codec, args)])  # fmt: skip


def budget(codec: str, args: argparse.Namespace) -> list[str]:
    """CPU hours of the full protocol at each calibrated length, from the measured cost of
    a weighted-sum step (the cheapest finished calibration run: the others shared the cores)
    times each arm's interleaved per-step ratio to the weighted sum
    (step_overhead_all_cpu.md; 1 without it). Coding is extra."""
    folders = {steps: calibration_folder(codec, steps, args) for steps in CALIBRATION_STEPS}
    finished = {steps: run_metrics(folder) for steps, folder in folders.items()}
    costs = {steps: metrics["train_seconds"] / steps for steps, metrics in finished.items()
             if metrics is not None}  # fmt: skip
    if not costs:
        return []
    cheapest = min(costs, key=costs.__getitem__)
    runs = len(LAMBDAS) * len(SEEDS)
    ratios = {arm: interleaved_ratio(arm, "ws") or 1.0 for arm in ARMS}
    scratch = [arm for arm, spec in ARMS.items() if spec.start_from is None]
    finetuned = [arm for arm, spec in ARMS.items() if spec.start_from is not None]
    finetune_steps = runs * FINETUNE_STEPS * sum(ratios[arm] for arm in finetuned)
    hours = [(steps, (runs * steps * sum(ratios[arm] for arm in scratch) + finetune_steps)
              * costs[cheapest] / 3600) for steps in CALIBRATION_STEPS[3:]]  # fmt: skip
    shown = ", ".join(f"{steps}: {value:.0f} h" for steps, value in hours)
    return [f"Cost: {costs[cheapest] * 1000:.1f} ms a weighted-sum step on one core (the "
            f"{cheapest}-step run); the protocol ({runs * len(scratch)} runs from scratch, "
            f"{runs * len(finetuned)} fine-tunes of {FINETUNE_STEPS} steps, each arm's step "
            "at its interleaved ratio to the weighted sum's) in CPU hours, by steps from "
            f"scratch: {shown}."]  # fmt: skip


def _signed(value: float) -> str:
    """``value`` to 3 decimals with its sign, and no "-0.000"."""
    return f"{round(value, 3) + 0.0:+.3f}"


def _shown_gain(gain: float) -> str:
    return "more than all of D" if math.isinf(gain) else f"{gain:+.2f}"


def work(args: argparse.Namespace) -> None:
    """Train (and code) what is not finished, for at most ``--minutes``."""
    link_calibration_anchor(args)
    tasks, stale = [], []
    for run in all_runs(args):
        folder = run_folder(run, args)
        anchor = Run("ws", run.point, run.seed)
        after = None if run.arm == "ws" or folder_done(run_folder(anchor, args)) else anchor.name
        values = config_for(run, args) if after is None else None
        if values is not None and (changed := trained_otherwise(folder, values)):
            stale.append(f"{run.name} ({'; '.join(changed)})")
        done = folder_done(folder) and (args.no_coding or not to_code(folder))
        tasks.append(Task(run.name, train_and_code, (values, run, args), after=after, done=done))
    if stale:
        sys.exit(f"trained with other settings than the protocol now says: {', '.join(stale)}; "
                 f"delete their folders in {args.out} to train them again")  # fmt: skip
    run_tasks(tasks, args.jobs, args.minutes)


def coded_points(args: argparse.Namespace, arm: str, seed: int) -> list[tuple[float, float]]:
    """(coded bpp, PSNR) of an arm's coded runs at one seed, by rate."""
    results = [evaluation(run_folder(Run(arm, lm, seed), args)) for lm in args.lambdas]
    return sorted((r["bpp"], r["psnr"]) for r in results if r is not None)


def noise_pairs(args: argparse.Namespace) -> dict[str, list[tuple[tuple[str, int], ...]]]:
    """The (arm, seed) pairs that differ only by chance, by what differs: the same arm at two
    seeds (the anchors and the controls: what training from scratch varies), and the control
    against itself on other data (what the fine-tuning alone varies: the yardstick of the
    fine-tuning arms, which share their anchor)."""
    seed_pairs = [(a, b) for a in args.seeds for b in args.seeds if a < b]
    return {
        "seed (from scratch)": [
            ((arm, a), (arm, b)) for arm in ("ws", "ws+") for a, b in seed_pairs
        ],
        "fine-tuning data": [(("ws+", seed), (RESEEDED, seed)) for seed in args.seeds],
    }


def compared(
    args: argparse.Namespace, base: tuple[str, int], other: tuple[str, int]
) -> tuple[float, int, str, float | None]:
    """``other``'s coded curve against ``base``'s ((arm, seed) each): Δ PSNR at equal rate,
    the points it averages, the BD-rate cells and the pchip BD-rate (%)."""
    base_points, other_points = coded_points(args, *base), coded_points(args, *other)
    difference, count = equal_rate_difference(other_points, base_points)
    cells, pchip = bd_cells((f"{base[0]} seed {base[1]}", base_points),
                            (f"{other[0]} seed {other[1]}", other_points))  # fmt: skip
    return difference, count, cells, pchip


def noise_floors(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """The largest |Δ PSNR| (dB) and |BD-rate| (%) of each kind of noise pair (kinds with
    both measured)."""
    floors = {}
    for kind, pairs in noise_pairs(args).items():
        results = [compared(args, base, other) for base, other in pairs]
        deltas = [abs(difference) for difference, count, _, _ in results if count]
        rates = [abs(pchip) for *_, pchip in results if pchip is not None]
        if deltas and rates:
            floors[kind] = (max(deltas), max(rates))
    return floors


def noise_floor(args: argparse.Namespace) -> list[str]:
    """The noise pairs' table and the floor of each kind, against the target."""
    lines = [
        "| what differs | runs | Δ PSNR at equal rate (dB) | BD-rate pchip | BD-rate cubic | "
        "stable |",
        "|---|---|---|---|---|---|",
    ]
    for kind, pairs in noise_pairs(args).items():
        for base, other in pairs:
            difference, count, cells, _ = compared(args, base, other)
            shown = "–" if count == 0 else f"{difference:+.3f} ({count} points)"
            lines.append(f"| {kind} | {other[0]} seed {other[1]} vs {base[0]} seed {base[1]} | "
                         f"{shown} | {cells} |")  # fmt: skip
    verdicts = [
        f"{kind}: |Δ PSNR| ≤ {delta:.3f} dB, |BD-rate| ≤ {rate:.2f} % ({_verdict(delta, rate)})"
        for kind, (delta, rate) in noise_floors(args).items()
    ]
    if verdicts:
        lines += ["", f"Noise floor (target ≤ {NOISE_TARGET_DB} dB and ≤ {NOISE_TARGET_PERCENT} "
                  f"%): {'; '.join(verdicts)}."]  # fmt: skip
    return lines


def _verdict(delta: float, rate: float) -> str:
    reached = delta <= NOISE_TARGET_DB and rate <= NOISE_TARGET_PERCENT
    return "reached" if reached else "not reached"


def arm_table(args: argparse.Namespace) -> list[str]:
    """Each arm against its control, paired by seed: Δ PSNR at equal rate and BD-rate."""
    lines = [
        "| arm | control | Δ PSNR at equal rate (dB), per seed | mean ± std | "
        "BD-rate pchip (%), per seed | mean ± std |",
        "|---|---|---|---|---|---|",
    ]
    for arm, control in CONTROL.items():
        if arm not in args.arms:
            continue
        deltas, rates, delta_cells, rate_cells = [], [], [], []
        for seed in args.seeds:
            difference, count, _, pchip = compared(args, (control, seed), (arm, seed))
            deltas += [difference] if count else []
            delta_cells.append("–" if not count else f"{difference:+.3f} ({count})")
            rates += [pchip] if pchip is not None else []
            rate_cells.append("–" if pchip is None else f"{pchip:+.2f}")
        lines.append(f"| {arm} | {control} | {', '.join(delta_cells)} | {mean_std(deltas)} | "
                     f"{', '.join(rate_cells)} | {mean_std(rates)} |")  # fmt: skip
    return lines


def operating_points(args: argparse.Namespace) -> str:
    """The anchors' validation rate by λ (mean over the finished seeds), and whether the λ
    grid spans ``RATE_SPAN``: judged on the held-out training photos, never on the
    evaluation photos."""
    rates: dict[float, list[float]] = {}
    for lmbda in args.lambdas:
        for seed in args.seeds:
            folder = run_folder(Run("ws", lmbda, seed), args)
            if run_metrics(folder) is not None:
                rates.setdefault(lmbda, []).append(last_validation(folder)[0])
    if not rates:
        return "Operating points: no anchor finished."
    shown = ", ".join(f"λ {lmbda}: {statistics.fmean(values):.3f} ({len(values)} seed"
                      f"{'s' * (len(values) > 1)})" for lmbda, values in rates.items())  # fmt: skip
    low, high = RATE_SPAN
    means = [statistics.fmean(values) for values in rates.values()]
    if len(rates) < len(args.lambdas):
        verdict = "not every λ has an anchor yet"
    elif min(means) <= RATE_SLACK * low and max(means) >= high / RATE_SLACK:
        verdict = f"spans about {low}–{high} bpp"
    else:
        verdict = f"does not span about {low}–{high} bpp: choose other λ"
    return (f"Operating points (anchors' validation bpp, mean over seeds): {shown}; the grid "
            f"{verdict}.")  # fmt: skip


def run_table(args: argparse.Namespace) -> list[str]:
    """Every run: target and rate held, coded bpp and PSNR, effective λ, weights, time."""
    lines = [
        "| run | target bpp | training bpp held | coded bpp | PSNR (dB) | effective λ | "
        "w_R, w_D | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in all_runs(args):
        folder = run_folder(run, args)
        if (message := divergence(folder)) is not None:
            lines.append(f"| {run.name} | diverged: {message} | | | | | | |")
            continue
        result, metrics = evaluation(folder), run_metrics(folder)
        if result is None or metrics is None:
            lines.append(f"| {run.name} | not finished | | | | | | |")
            continue
        target = metrics.get("target")
        held = f"{target['value']:.4f} | {target['achieved']:.4f}" if target else "– | –"
        weights = list(scalar_histories(folder, "balancer/weight_rate",
                                        "balancer/weight_distortion").values())  # fmt: skip
        shown = ", ".join(f"{w[-1][1]:.3g}" for w in weights) if all(weights) else "–"
        lines.append(
            f"| {run.name} | {held} | {result['bpp']:.4f} | {result['psnr']:.2f} | "
            f"{metrics['effective_lambda']:.3g} | {shown} | {metrics['train_seconds']:.0f} |"
        )
    return lines


#: Each arm's variant in the interleaved per-step timing of every method (the trainer's
#: defaults: sequential Gram, coarse-to-fine re-evaluated every step).
OVERHEAD_VARIANTS = {
    "ws": "weighted sum (glue)",
    "ws+": "weighted sum (glue)",
    "ws+'": "weighted sum (glue)",
    "eq-qp": "EqQP exact, sequential",
    "eq-qp-t": "EqQP exact, sequential",
    "eq-qp-f-t": "EqQP features (latent y)",
    "c2f-t": "coarse-to-fine, re-evaluate every step",
    "nash-mtl-t": "nash-mtl, sequential",
    "imtl-g-t": "imtl-g, sequential",
    "c2f-scratch-t": "coarse-to-fine, re-evaluate every step",
}
OVERHEAD_TIMES = RESULTS / "step_overhead_all_cpu.json"


def interleaved_ratio(arm: str, control: str) -> float | None:
    """The arm's median step over its control's in the interleaved timing (None without it)."""
    if not OVERHEAD_TIMES.exists():
        return None
    times = json.loads(OVERHEAD_TIMES.read_text())["times"]
    arm_times, control_times = times[OVERHEAD_VARIANTS[arm]], times[OVERHEAD_VARIANTS[control]]
    return statistics.median(arm_times) / statistics.median(control_times)


def time_ratios(args: argparse.Namespace) -> list[str]:
    """Mean training time of each arm over its control's (the same steps, one run each),
    beside the interleaved per-step ratio of the same two methods."""
    lines = []
    for arm, control in CONTROL.items():
        times = {name: [metrics["train_seconds"] for lm in args.lambdas for s in args.seeds
                        if (metrics := run_metrics(run_folder(Run(name, lm, s), args)))]
                 for name in (arm, control)}  # fmt: skip
        if arm in args.arms and times[arm] and times[control]:
            ratio = statistics.fmean(times[arm]) / statistics.fmean(times[control])
            interleaved = interleaved_ratio(arm, control)
            beside = "" if interleaved is None else f" (interleaved per step: {interleaved:.2f})"
            lines.append(f"- {arm} / {control}: {ratio:.2f}{beside}")
    return lines


def report(args: argparse.Namespace) -> str:
    runs = all_runs(args)
    done = sum(evaluation(run_folder(run, args)) is not None for run in runs)
    text = [
        f"{done} of {len(runs)} runs coded; {SCRATCH_STEPS} steps from scratch, "
        f"{FINETUNE_STEPS} fine-tuning steps at lr {FINETUNE_LR}; λ {tuple(args.lambdas)}; seeds "
        f"{tuple(args.seeds)}; trained on {args.device}.",
        "",
        operating_points(args),
        "",
        "Noise floor (the same arm, two seeds):",
        "",
        *noise_floor(args),
        "",
        "Arms against their controls, paired by seed (points inside the control's range in "
        "brackets):",
        "",
        *arm_table(args),
        "",
        "Training-time ratios (mean over the runs; a run shares the machine with as many "
        "others as were started beside it, so these are rough; in brackets the same two "
        "methods' median step in the interleaved timing, step_overhead_all_cpu.md, batch "
        "8 × 128² on 2 threads, the measured overhead):",
        "",
        *time_ratios(args),
        "",
        *run_table(args),
    ]
    plot(args)
    return "\n".join(text)


def plot(args: argparse.Namespace) -> None:
    """R-D curves of every arm, one panel per seed; and each arm's Δ PSNR at equal rate to
    its control per seed, beside the noise floor of its kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(args.seeds) + 1, figsize=(5 * len(args.seeds) + 6, 4.2),
                                squeeze=False)  # fmt: skip
    for axis, seed in zip(axes[0], args.seeds, strict=False):
        for index, arm in enumerate(ARMS):
            points = coded_points(args, arm, seed) if arm == "ws" or arm in args.arms else []
            if points:
                bpp, psnr = zip(*points, strict=True)
                axis.plot(bpp, psnr, marker="os^vDxP*hX"[index], color=f"C{index}", label=arm,
                          alpha=0.8)  # fmt: skip
        axis.set(xlabel="rate (bpp), real coding", ylabel="PSNR (dB)", title=f"seed {seed}")
        axis.grid(True, alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
    plot_deltas(axes[0][-1], args)
    figure.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    figure.savefig(IMAGES / "converged_rd.png", dpi=110)
    plt.close(figure)


def plot_deltas(axis: Axes, args: argparse.Namespace) -> None:
    """Each arm's Δ PSNR to its control, one dot per seed, and a grey band of ± the noise
    floor of its kind (fine-tunes: other fine-tuning data; from scratch: other seeds)."""
    floors = noise_floors(args)
    arms = [arm for arm in CONTROL if arm in args.arms]
    for position, arm in enumerate(arms):
        kind = "fine-tuning data" if ARMS[arm].start_from else "seed (from scratch)"
        if kind in floors:
            axis.fill_between([position - 0.4, position + 0.4], -floors[kind][0],
                              floors[kind][0], color="0.85")  # fmt: skip
        for seed in args.seeds:
            difference, count, _, _ = compared(args, (CONTROL[arm], seed), (arm, seed))
            if count:
                axis.plot(position, difference, "o", color=f"C{seed}",
                          label=f"seed {seed}" if position == 0 else None)  # fmt: skip
    axis.axhline(0, color="0.4", linewidth=0.8)
    axis.set_xticks(range(len(arms)), arms, rotation=45, ha="right", fontsize=8)
    axis.set(ylabel="Δ PSNR at equal rate to the control (dB)",
             title="arms vs controls (grey: noise floor)")  # fmt: skip
    axis.grid(True, axis="y", alpha=0.3)
    if axis.lines[1:]:
        axis.legend(fontsize=7)


def pack(args: argparse.Namespace) -> None:
    """One archive of every finished run's results, final checkpoint and logs."""
    with tarfile.open(args.pack, "w:gz") as archive:
        for run in all_runs(args):
            folder = run_folder(run, args)
            for name in ("metrics.json", "evaluation.json", "diverged.json", "checkpoint.pt",
                         "tensorboard"):  # fmt: skip
                if (folder / name).exists():
                    archive.add(folder / name, arcname=f"{CODEC}/{run.name}/{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="all",
                        choices=("calibrate", "calibration", "calibrate-finetune",
                                 "probe-crops", "all", "report"),
                        help="calibrate: the convergence runs and their table; calibration: "
                        "only the table; calibrate-finetune: the fine-tuning length runs and "
                        "their table; probe-crops: the crop-size probe and its table; all: "
                        "train, code and report; report: the tables of what is coded")  # fmt: skip
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--lambdas", nargs="+", type=float, default=list(LAMBDAS),
                        choices=LAMBDAS, metavar="λ", help="a subset of the λ grid")  # fmt: skip
    parser.add_argument("--codecs", nargs="+", default=[CODEC], choices=list(CODECS),
                        help="--stage calibrate: the codecs to calibrate; --stage "
                        "calibrate-finetune: the first one's fine-tuning")  # fmt: skip
    parser.add_argument("--lengths", nargs="+", type=int, default=list(CALIBRATION_STEPS),
                        choices=CALIBRATION_STEPS, metavar="STEPS",
                        help="--stage calibrate: the lengths to train (default: all)")  # fmt: skip
    parser.add_argument("--minutes", type=float, default=170, help="time for this invocation")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads a run")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--no-coding", action="store_true", help="train only (code later)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "converged_rd")
    parser.add_argument("--pack", type=Path, help="also write the finished runs to this .tar.gz")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    calibrations = {
        "calibrate": calibrate,
        "calibration": write_calibration,
        "calibrate-finetune": calibrate_finetune,
        "probe-crops": probe_crops,
    }
    if args.stage in calibrations:
        calibrations[args.stage](args)
        return
    if args.stage == "all":
        work(args)
    if args.pack:
        pack(args)
    text = report(args)
    print(text)
    flags = " ".join(flag for flag in sys.argv[1:])
    write_results("converged_rd", text, f"python benchmarks/converged_rd.py {flags}".strip())


if __name__ == "__main__":
    main()
