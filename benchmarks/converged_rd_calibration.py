"""What the converged-codec protocol is calibrated by, each with its table: the length at
which a codec converges (``--stage calibrate``), the fine-tuning length (``--stage
calibrate-finetune``) and the crop size (``--stage probe-crops``)."""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from converged_rd_protocol import (
    ARMS,
    CALIBRATION_LAMBDA,
    CALIBRATION_STEPS,
    CODECS,
    FINETUNE_STEPS,
    LAMBDAS,
    SEEDS,
    calibration_config,
    calibration_folder,
    config_for,
    interleaved_ratio,
    link_calibration_anchor,
    run_folder,
    settled_means,
)
from protocol import (
    FINETUNE_LR,
    Run,
    Task,
    folder_done,
    last_validation,
    run_metrics,
    run_tasks,
    scalar_histories,
    train_to_end,
    write_results,
)

#: Converged: the last doubling of steps gained less than this (dB of PSNR at equal rate).
CONVERGED_GAIN_DB = 0.1
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
        training[steps] = settled_means(folder, "train/rate_bpp", "train/distortion")
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
    (``OVERHEAD_TIMES``; 1 without it). Coding is extra."""
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


def settled_from(gains: dict[int, float]) -> int | None:
    """The first length from which this and every later doubling moved the cost by less
    than ``CONVERGED_GAIN_DB`` either way (a doubling that loses is no sign of convergence
    but of runs landing at different optima), or None."""
    small = {steps: abs(gain) < CONVERGED_GAIN_DB for steps, gain in gains.items()}
    settled = [steps for steps in gains if all(small[later] for later in gains if later >= steps)]
    return settled[0] if settled else None


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
            rate = settled_means(folder, "train/rate_bpp")[0]
            base_bpp, base_psnr = base_point
            lines.append(f"| {lmbda} | {crop[0]}² × {crop[1]} | {bpp:.4f} | {psnr:.2f} | "
                         f"{rate:.4f} | {bpp / rate:.2f} | {100 * (bpp / base_bpp - 1):+.1f} | "
                         f"{psnr - base_psnr:+.2f} | {step_ms:.1f} |")  # fmt: skip
    return "\n".join(lines)


def _signed(value: float) -> str:
    """``value`` to 3 decimals with its sign, and no "-0.000"."""
    return f"{round(value, 3) + 0.0:+.3f}"


def _shown_gain(gain: float) -> str:
    return "more than all of D" if math.isinf(gain) else f"{gain:+.2f}"
