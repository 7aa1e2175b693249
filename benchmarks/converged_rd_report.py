"""The converged-codec reproduction's report: the noise floor, each arm against its
control at equal coded rate and by BD-rate, every run, and the R-D plot."""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converged_rd_protocol import (
    ARMS,
    CONTROL,
    FINETUNE_STEPS,
    RESEEDED,
    SCRATCH_STEPS,
    TARGETED,
    all_runs,
    anchor_divergence,
    anchor_rate,
    final_rate,
    interleaved_ratio,
    interleaved_settings,
    run_folder,
    settled_means,
)
from protocol import (
    FINETUNE_LR,
    IMAGES,
    BDRate,
    Run,
    bd_rate,
    decode_check,
    divergence,
    equal_rate_difference,
    evaluation,
    last_validation,
    mean_std,
    run_metrics,
    scalar_histories,
    target_losses,
)

from moopt_lic.targets import Target, achieved_steps

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: The seed-to-seed spread below which a comparison can tell a 2 % effect.
NOISE_TARGET_DB = 0.1
NOISE_TARGET_PERCENT = 1.0
#: The validation rates the anchors should span (bpp), about: each end within this factor.
RATE_SPAN = (0.1, 0.8)
RATE_SLACK = 1.5


def report(args: argparse.Namespace) -> str:
    """The report's text (``benchmarks/results/converged_rd.md``); draws the plot too."""
    runs = all_runs(args)
    done = sum(evaluation(run_folder(run, args)) is not None for run in runs)
    text = [
        f"{done} of {len(runs)} runs coded; {SCRATCH_STEPS} steps from scratch, "
        f"{FINETUNE_STEPS} fine-tuning steps at lr {FINETUNE_LR}; λ {tuple(args.lambdas)}; seeds "
        f"{tuple(args.seeds)}; trained on {training_devices(runs, args)}.",
        "",
        *operating_points(args),
        "",
        "Noise floor (runs that differ only by chance: the same arm at two seeds, and the "
        "control fine-tuned on data drawn by another seed; Δ PSNR: the first run named "
        "minus the second, at the first's coded rates):",
        "",
        *noise_floor(args),
        "",
        *rate_worth(args),
        "",
        "Arms against their controls, paired by seed: Δ PSNR is the arm's minus the control's "
        "at the arm's coded rates inside the control's range (positive: the arm codes better; "
        "in brackets the points averaged), BD-rate is the arm's against the control's "
        "(negative: the arm saves rate).",
        "",
        *arm_table(args),
        "",
        *target_holding(args),
        "",
        *final_codecs(args),
        "",
        "Training-time ratios (mean over the runs; a run shares the machine with as many "
        "others as were started beside it, and runs of different sessions trained on "
        "machines of different speed, so these are rough; in brackets the same two methods' "
        f"median step in the interleaved timing, {interleaved_settings()}: the measured "
        "overhead):",
        "",
        *time_ratios(args),
        "",
        *run_table(args),
    ]
    plot(args)
    return "\n".join(text)


def training_devices(runs: list[Run], args: argparse.Namespace) -> str:
    """The devices the finished runs trained on (a GPU machine's packed runs are reported
    wherever the report runs)."""
    found = sorted({metrics["config"]["device"] for run in runs
                    if (metrics := run_metrics(run_folder(run, args)))})  # fmt: skip
    return ", ".join(found) or "nothing yet"


def operating_points(args: argparse.Namespace) -> list[str]:
    """The anchors' last validation (rate, PSNR) by λ and seed, with the training rate their
    arms hold beside their log's mean of it, and whether each seed's λ grid spans
    ``RATE_SPAN``: judged on held-out training photos, never on the evaluation photos. A
    seed draws its own 4 held-out photos, so validations compare down a column, not
    across."""
    lines = [
        "| λ | " + " | ".join(f"seed {seed}" for seed in args.seeds) + " |",
        "|---|" + "---|" * len(args.seeds),
    ]
    rates: dict[int, list[float]] = {seed: [] for seed in args.seeds}
    for lmbda in args.lambdas:
        cells = []
        for seed in args.seeds:
            folder = run_folder(Run("ws", lmbda, seed), args)
            if run_metrics(folder) is None:
                cells.append("–")
                continue
            bpp, psnr = last_validation(folder)
            rates[seed].append(bpp)
            target = anchor_rate(Run("ws", lmbda, seed), args)
            logged = settled_means(folder, "train/rate_bpp")[0]
            cells.append(f"{bpp:.3f} bpp, {psnr:.2f} dB ({target:.4f}; log {logged:.4f})")
        lines.append(f"| {lmbda} | {' | '.join(cells)} |")
    low, high = RATE_SPAN
    spans = {seed: (min(found), max(found)) for seed, found in rates.items()
             if len(found) == len(args.lambdas)}  # fmt: skip
    if not spans:
        verdict = "No seed has an anchor at every λ yet."
    elif all(lo <= RATE_SLACK * low and hi >= high / RATE_SLACK for lo, hi in spans.values()):
        verdict = f"The λ grid spans about {low}–{high} bpp."
    else:
        shown = ", ".join(f"seed {seed} {lo:.2f}–{hi:.2f} bpp" for seed, (lo, hi) in spans.items())
        verdict = f"The λ grid spans {shown}, not about {low}–{high} bpp."
    return [
        "Operating points: each anchor's last validation on its seed's 4 held-out training "
        "photos (the photos differ by seed: compare down a column); in brackets its training "
        "rate on the 32000 crops its fine-tunes train on (the rate targets), and the mean its "
        "log shows over the last tenth of its steps (one step in a hundred: 512 crops).",
        "",
        *lines,
        "",
        verdict,
    ]


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
) -> tuple[float, int, BDRate]:
    """``other``'s coded curve against ``base``'s ((arm, seed) each): Δ PSNR at equal rate,
    the points it averages, and the BD-rate."""
    base_points, other_points = coded_points(args, *base), coded_points(args, *other)
    difference, count = equal_rate_difference(other_points, base_points)
    rate = bd_rate((f"{base[0]} seed {base[1]}", base_points),
                   (f"{other[0]} seed {other[1]}", other_points))  # fmt: skip
    return difference, count, rate


def noise_floors(args: argparse.Namespace) -> dict[str, tuple[float, float | None]]:
    """The largest |Δ PSNR| (dB) and |BD-rate| (%; None where no pair has one: fewer than 4
    points on a curve's Pareto front) of each kind of noise pair with a Δ PSNR measured."""
    floors = {}
    for kind, pairs in noise_pairs(args).items():
        results = [compared(args, base, other) for base, other in pairs]
        deltas = [abs(difference) for difference, count, _ in results if count]
        rates = [abs(rate.pchip) for *_, rate in results if rate.pchip is not None]
        if deltas:
            floors[kind] = (max(deltas), max(rates) if rates else None)
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
            difference, count, rate = compared(args, base, other)
            shown = "–" if count == 0 else f"{difference:+.3f} ({count} points)"
            lines.append(f"| {kind} | {other[0]} seed {other[1]} vs {base[0]} seed {base[1]} | "
                         f"{shown} | {rate.cells} |")  # fmt: skip
    verdicts = [
        f"{kind}: |Δ PSNR| ≤ {delta:.3f} dB, "
        + ("BD-rate undefined (target not judged)" if rate is None
           else f"|BD-rate| ≤ {rate:.2f} % ({_verdict(delta, rate)})")
        for kind, (delta, rate) in noise_floors(args).items()
    ]  # fmt: skip
    if verdicts:
        lines += ["", f"Noise floor (target ≤ {NOISE_TARGET_DB} dB and ≤ {NOISE_TARGET_PERCENT} "
                  f"%): {'; '.join(verdicts)}."]  # fmt: skip
    return lines


def rate_worth(args: argparse.Namespace) -> list[str]:
    """How steep the anchors' coded curves are between adjacent λ (dB per doubling of rate,
    mean over the seeds with every λ coded), and so what 1 % of rate is worth in dB: it says
    how the floor's two targets, and a BD-rate and a Δ PSNR, translate on this codec."""
    curves = [points for seed in args.seeds
              if len(points := coded_points(args, "ws", seed)) == len(args.lambdas)]  # fmt: skip
    if not curves:
        return []
    slopes = [statistics.fmean((high[1] - low[1]) / math.log2(high[0] / low[0])
                               for low, high in (curve[i : i + 2] for curve in curves))
              for i in range(len(args.lambdas) - 1)]  # fmt: skip
    shown = ", ".join(f"{slope:.2f}" for slope in slopes)
    worth = ", ".join(f"{slope * math.log2(1.01):.3f}" for slope in slopes)
    return [
        f"What a BD-rate is worth here: between adjacent λ the anchors' coded curves rise by "
        f"{shown} dB per doubling of rate (mean over {len(curves)} seed(s)), so 1 % of rate "
        f"is worth {worth} dB at equal quality (at 6 dB per doubling, 0.086 dB: there the "
        f"targets 0.1 dB and 1 % agree; on a flatter curve the same Δ PSNR is more rate)."
    ]


def _span(points: list[tuple[float, float]]) -> str:
    return f"{points[0][0]:.3f}–{points[-1][0]:.3f}"


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
            difference, count, rate = compared(args, (control, seed), (arm, seed))
            lost = [lm for lm in args.lambdas
                    if divergence(run_folder(Run(arm, lm, seed), args)) is not None]  # fmt: skip
            # a diverged run leaves no point: the mean would be over the survivors
            lost_note = f", {len(lost)} diverged" if lost else ""
            deltas += [difference] if count else []
            if count:
                delta_cells.append(f"{difference:+.3f} ({count}{lost_note})")
            elif (ours := coded_points(args, arm, seed)) and (
                theirs := coded_points(args, control, seed)
            ):  # coded, yet nowhere at the control's rates: the arm lost the operating point
                delta_cells.append(f"– (no common rate: {_span(ours)} vs {_span(theirs)} bpp"
                                   f"{lost_note})")  # fmt: skip
            else:
                delta_cells.append(f"–{lost_note}")
            rates += [rate.pchip] if rate.pchip is not None else []
            rate_cells.append(rate.undefined if rate.pchip is None else f"{rate.pchip:+.2f}")
        lines.append(f"| {arm} | {control} | {', '.join(delta_cells)} | {mean_std(deltas, 3)} | "
                     f"{'; '.join(rate_cells)} | {mean_std(rates)} |")  # fmt: skip
    return lines


def target_holding(args: argparse.Namespace) -> list[str]:
    """How the targeted arms held their target over the last ``ACHIEVED_FRACTION`` of their
    steps (the window of ``achieved``): the targeted loss's mean and geometric mean over the
    target, and the batch spread ``exp(σ²/2) − 1`` (σ: the std of its log) that separates
    the two for log-normal batches; in %, mean ± std over each arm's runs."""
    lines = [
        "| arm | runs | mean over target (%) | geometric mean over target (%) | "
        "exp(σ²/2) − 1 (%) |",
        "|---|---|---|---|---|",
    ]
    for arm in (arm for arm in args.arms if arm in TARGETED):
        offsets = []
        for run in (Run(arm, lm, seed) for lm in args.lambdas for seed in args.seeds):
            folder = run_folder(run, args)
            metrics = run_metrics(folder)
            window = held_window(folder, metrics)
            if metrics is None or window is None or divergence(folder) is not None:
                continue
            target = Target(metrics["target"]["objective"], metrics["target"]["value"],
                            metrics["lambda"])  # fmt: skip
            logs = [math.log(loss / target.loss) for loss in window]
            offsets.append((100 * (statistics.fmean(window) / target.loss - 1),
                            100 * math.expm1(statistics.fmean(logs)),
                            100 * math.expm1(statistics.pvariance(logs) / 2)))  # fmt: skip
        if offsets:
            cells = " | ".join(mean_std(column) for column in zip(*offsets, strict=True))
            lines.append(f"| {arm} | {len(offsets)} | {cells} |")
    if len(lines) == 2:
        return []
    return [
        "How the targets held (training, the last tenth of each run's steps): the controller "
        "smooths the batches' targeted loss before its log, so it holds their mean; their "
        "geometric mean sits below it by about the batch spread exp(σ²/2) − 1 (σ: the std "
        "of the log loss from batch to batch).",
        "",
        *lines,
    ]


def held_window(folder: Path, metrics: dict[str, Any] | None) -> list[float] | None:
    """The targeted loss at each of a finished targeted run's last ``achieved_steps`` steps
    (the window its ``achieved`` value averages), from its checkpoint; None without, or
    without the run's ``metrics`` (its ``run_metrics``: the caller has read them)."""
    losses = target_losses(folder)
    if metrics is None or losses is None:
        return None
    return losses[-achieved_steps(metrics["steps"]) :]


def held_rate(folder: Path) -> float | None:
    """The mean training rate a rate-targeted run's last ``achieved_steps`` steps trained at
    (None for a run without a rate target)."""
    metrics = run_metrics(folder)
    window = held_window(folder, metrics)
    if window is None or metrics is None or metrics["target"]["objective"] != "rate":
        return None
    return statistics.fmean(window)


def _percent_over(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else 100 * (value / base - 1)


def final_codecs(args: argparse.Namespace) -> list[str]:
    """Where each arm's evaluated codec sits against what its run held and against its
    control's, at each λ (mean ± std over the seeds with a value): its final weights' rate on
    the crops and noise of its last tenth of steps (``final_rate``) over the rate those steps
    trained at (targeted arms), over the control's final weights' on the same crops, and its
    coded rate on the evaluation photos over the control's."""
    lines = [
        "| arm | λ | final over held, training crops (%) | final over the control's final, "
        "training crops (%) | coded over the control's, evaluation photos (%) |",
        "|---|---|---|---|---|",
    ]
    for arm, control in CONTROL.items():
        for lmbda in args.lambdas if arm in args.arms else ():
            columns: list[list[float]] = [[], [], []]
            for seed in args.seeds:
                ours, theirs = Run(arm, lmbda, seed), Run(control, lmbda, seed)
                coded = [evaluation(run_folder(run, args)) for run in (ours, theirs)]
                final = final_rate(ours, args)
                values = (
                    _percent_over(final, held_rate(run_folder(ours, args))),
                    _percent_over(final, final_rate(theirs, args)),
                    _percent_over(*(result["bpp"] if result else None for result in coded)),
                )
                for column, value in zip(columns, values, strict=True):
                    column += [] if value is None else [value]
            if any(columns):
                cells = " | ".join(mean_std(column) for column in columns)
                lines.append(f"| {arm} | {lmbda} | {cells} |")
    if len(lines) == 2:
        return []
    return [
        "Where the evaluated codecs sit (each run's final weights, the weights coded): their "
        "rate on the crops and quantisation noise of the run's last tenth of steps, over the "
        "rate those same steps trained at (a targeted arm keeps each step's: paired, only the "
        "weights differ, so a run whose weights swing shows where its last snapshot sits), "
        "and over the control's final weights on the same crops (a seed draws the same crops "
        "for both); beside them, the coded rate on the evaluation photos over the control's. "
        "Mean ± std over the seeds.",
        "",
        *lines,
    ]


def run_table(args: argparse.Namespace) -> list[str]:
    """Every run: target and rate held, coded bpp and PSNR, effective λ, weights, time."""
    lines = [
        "| run | target bpp | training bpp held | coded bpp | PSNR (dB) | effective λ | "
        "w_R, w_D | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    coded = {}
    for run in all_runs(args):
        folder = run_folder(run, args)
        if (message := divergence(folder)) is not None:
            lines.append(f"| {run.name} | diverged: {message} | | | | | | |")
            continue
        if anchor_divergence(run, args) is not None:
            lines.append(f"| {run.name} | not trained: its anchor diverged | | | | | | |")
            continue
        result, metrics = evaluation(folder), run_metrics(folder)
        if result is None or metrics is None:
            shown = "not finished" if metrics is None else "not coded"
            lines.append(f"| {run.name} | {shown} | | | | | | |")
            continue
        coded[run.name] = result
        target = metrics.get("target")
        held = f"{target['value']:.4f} | {target['achieved']:.4f}" if target else "– | –"
        weights = list(scalar_histories(folder, "balancer/weight_rate",
                                        "balancer/weight_distortion").values())  # fmt: skip
        shown = ", ".join(f"{w[-1][1]:.3g}" for w in weights) if all(weights) else "–"
        lines.append(
            f"| {run.name} | {held} | {result['bpp']:.4f} | {result['psnr']:.2f} | "
            f"{metrics['effective_lambda']:.3g} | {shown} | {metrics['train_seconds']:.0f} |"
        )
    return [*lines, "", decode_check(coded)]


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
    return lines or ["- none yet: no arm has finished a run beside its control's"]


def plot(args: argparse.Namespace) -> None:
    """R-D curves of every arm, one panel per seed; and each arm's Δ PSNR at equal rate to
    its control per seed, beside the noise floor of its kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(args.seeds) + 1, figsize=(5 * len(args.seeds) + 6, 4.2),
                                squeeze=False)  # fmt: skip
    for axis in axes[0][1 : len(args.seeds)]:  # every seed codes the same evaluation photos
        axis.sharex(axes[0][0])
        axis.sharey(axes[0][0])
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
    labelled: set[int] = set()  # each seed once in the legend, at its first dot
    for position, arm in enumerate(arms):
        kind = "fine-tuning data" if ARMS[arm].start_from else "seed (from scratch)"
        if kind in floors:
            axis.fill_between([position - 0.4, position + 0.4], -floors[kind][0],
                              floors[kind][0], color="0.85")  # fmt: skip
        for seed in args.seeds:
            difference, count, _ = compared(args, (CONTROL[arm], seed), (arm, seed))
            if count:
                axis.plot(position, difference, "o", color=f"C{seed}",
                          label=None if seed in labelled else f"seed {seed}")  # fmt: skip
                labelled.add(seed)
    axis.axhline(0, color="0.4", linewidth=0.8)
    axis.set_xticks(range(len(arms)), arms, rotation=45, ha="right", fontsize=8)
    axis.set(ylabel="Δ PSNR at equal rate to the control (dB)",
             title="arms vs controls (grey: noise floor)")  # fmt: skip
    axis.grid(True, axis="y", alpha=0.3)
    if axis.lines[1:]:
        axis.legend(fontsize=7)
