"""The paper's claim at a scale this machine can train: BD-rate of balanced vs weighted-sum.

Protocol (every choice is a constant or a flag below; ``--scale large`` is the larger preset):

* codec: ``mbt2018-mean`` with N = 64, M = 96 (the mean-scale hyperprior of the paper's
  appendix, at the PILOT's CPU size); random 64 × 64 crops of ``../shared/data/train``,
  batch 8; Adam, lr 1e-3 with cosine decay, aux Adam 1e-3, grad-norm clip 1.0;
* λ grid: 0.0035, 0.0067, 0.013, 0.025 (CompressAI's MSE grid); for the coarse-to-fine arm
  also 0.05 and 0.1, since under it λ hardly moves the operating point (METHOD.md), and for
  arm A also 0.00045, 0.0009 and 0.0018, so its curve reaches the low rates where the
  balanced arms land (run after the comparisons B vs A and C vs A+; the curves must overlap);
* seeds 0 and 1, **paired**: a seed fixes the initial weights, the data order, the crops and
  the quantisation noise of every arm, so the arms differ only by the balancer;
* arm A: weighted sum from scratch, ``--steps`` steps;
* arm B: coarse-to-fine from scratch, the same steps (FAMO-style, shift −1, logit lr 0.025,
  γ 0.003: the released code's values, untuned);
* arm B′ (only with ``--arms``, e.g. ``--arms A A+ C B E B'``: ≈ 70 more minutes on 2
  cores): coarse-to-fine with the shift m = −10 (``--loss-floor -10``), which keeps λ's role
  while the losses are below ≈ 10 (benchmarks/lambda_sweep.py);
* arm C: EqQP fine-tuning of A's checkpoint for ``--finetune-steps`` at lr 1e-4 (constant),
  against A continued with the weighted sum for the same steps and lr ("A+"): equal totals;
* arm E: EqQP fine-tuning in ``--features`` mode (the Gram of the latent's gradients), same
  steps and lr as C;
* evaluation: real entropy coding of the 24 photos of ``../shared/data/eval`` (never used for
  any choice); validation during training on 4 held-out training photos (the PSNR-vs-step
  curves).

Reported: BD-rate (pchip and cubic) of B vs A and of C vs A+, per seed and mean ± std over
seeds; the noise floor, i.e. the spread of the paired BD-rate across seeds and the BD-rate of
A's seed 1 against A's seed 0; the λ → (bpp, PSNR) map of every arm; training wall-time
ratios; the R-D plot and the PSNR-vs-step plot. The tables go to
``benchmarks/results/reproduce_rd_<scale>_<label>.md``, the plot to ``docs/images/``; both are
quoted in ``docs/benchmarks.md``.

Runs are resumable and the script continues across sessions: each invocation works for at
most ``--minutes`` (default 85), ``--jobs`` runs in parallel (1 thread each), then stops; the
unfinished runs resume from their last checkpoint next time, finished ones are skipped.
``--stage`` splits the work where training and evaluation happen on different machines.

    python benchmarks/reproduce_rd.py                   # repeat until it prints the table
    python benchmarks/reproduce_rd.py --stage report    # the table from what is finished
    python benchmarks/reproduce_rd.py --device cuda --jobs 15 --eval-device cuda \
        --eval-jobs 12 --label h200 --out runs/reproduce_rd_h200   # the small preset, one GPU
    python benchmarks/reproduce_rd.py --scale large --device cuda --jobs 4 --label h200
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from protocol import (
    DATA,
    IMAGES,
    LAMBDA_GRID,
    ROOT,
    Arm,
    BDRate,
    Run,
    Task,
    bd_rate,
    code_run,
    decode_check,
    divergence,
    eval_images,
    evaluation,
    folder_done,
    run_tasks,
    scalars,
    to_code,
    train_to_end,
)

LAMBDAS = LAMBDA_GRID
#: B hardly moves with λ (METHOD.md), so it also gets two larger λ; A gets three smaller ones
#: (CompressAI's q1 = 0.0018 and below) so that its curve reaches the low rates where the
#: balanced arms land (B at 0.09–0.17 bpp, A at λ = 0.0035 ≥ 0.40 bpp).
EXTRA_LAMBDAS_BALANCED = (0.05, 0.1)
LOWER_LAMBDAS_ANCHOR = (0.00045, 0.0009, 0.0018)
SEEDS = (0, 1)
SCALES = {
    #          steps, finetune steps, patch, batch, N, M
    "small": (3000, 1000, 64, 8, 64, 96),  # ≈ 4.5 h on 2 CPU cores, minutes on one GPU
    "large": (60000, 15000, 256, 16, 128, 192),  # a GPU's job
}

ARMS = {
    "A": Arm("weighted-sum"),
    "B": Arm("coarse-to-fine"),
    "B'": Arm("coarse-to-fine", loss_floor=-10.0),
    "A+": Arm("weighted-sum", start_from="A"),
    "C": Arm("eq-qp", start_from="A"),
    "E": Arm("eq-qp", start_from="A", features=True),
}
#: (label, anchor arm, test arm): the BD-rates reported, each paired by seed.
COMPARISONS = (("B vs A", "A", "B"), ("B′ vs A", "A", "B'"), ("C vs A+", "A+", "C"),
               ("E vs A+", "A+", "E"))  # fmt: skip


def lambdas_of(arm: str) -> tuple[float, ...]:
    """Every λ the arm is trained at, ascending."""
    return tuple(sorted({lm for name, lambdas in SCHEDULE if name == arm for lm in lambdas}))


#: (arm, λs) in the order the runs start: the comparisons (C vs A+, B vs A) first, then A's
#: lower λ, then the extra arms (the cheap fine-tune E before the from-scratch B′); a
#: fine-tune starts once its A checkpoint is done.
SCHEDULE = (
    ("A", LAMBDAS),
    ("A+", LAMBDAS),
    ("C", LAMBDAS),
    ("B", LAMBDAS + EXTRA_LAMBDAS_BALANCED),
    ("A", LOWER_LAMBDAS_ANCHOR),
    ("E", LAMBDAS),
    ("B'", LAMBDAS),
)


#: The arms of a full run: the comparisons B vs A, C vs A+ and the optional arm E.
DEFAULT_ARMS = ("A", "A+", "C", "B", "E")


def all_runs(args: argparse.Namespace) -> list[Run]:
    """Every run of the protocol's chosen arms (``--arms``), in the order they start."""
    return [Run(arm, lm, seed) for arm, lambdas in SCHEDULE if arm in args.arms
            for seed in SEEDS for lm in lambdas]  # fmt: skip


def config_for(run: Run, args: argparse.Namespace) -> dict:
    steps, finetune, patch, batch, n, m = SCALES[args.scale]
    common = dict(
        dataset=str(DATA / "train"),
        holdout=4,
        N=n,
        M=m,
        patch_size=patch,
        batch_size=batch,
        lmbda=run.point,
        seed=run.seed,
        device=args.device,
        threads=args.threads,
        progress=False,
        final_eval=False,
        out=str(args.out / run.name),
        checkpoint_every=200,
        eval_every=250,
        log_every=50,
        **ARMS[run.arm].settings(),
    )
    source = run.source(ARMS)
    if source is None:
        return {**common, "steps": args.steps or steps, "lr": 1e-3, "lr_schedule": "cosine"}
    return {
        **common,
        "steps": args.finetune_steps or finetune,
        "lr": 1e-4,
        "lr_schedule": "constant",
        "init_from": str(args.out / source.name / "checkpoint.pt"),
    }


def cpu_settings(out: Path) -> argparse.Namespace:
    """The settings ``config_for`` reads, for the small preset on one CPU core: what the
    ablation scripts train with (their runs differ from the protocol's only where they say)."""
    return argparse.Namespace(scale="small", steps=None, finetune_steps=None, device="cpu",
                              threads=1, out=out)  # fmt: skip


def to_evaluate(run: Run, args: argparse.Namespace) -> bool:
    """Trained to the end (not diverged) and not evaluated yet."""
    return to_code(args.out / run.name)


def train_run(run: Run, args: argparse.Namespace) -> None:
    """Train, resume or skip one run (in a worker process); with ``--stage all``, code it.

    Coding right after training spreads the (CPU-heavy) real coding over the session
    instead of leaving it all to the end.
    """
    train_to_end(config_for(run, args))
    if args.stage == "all" and to_evaluate(run, args):
        evaluate_run(run, args)


def evaluate_run(run: Run, args: argparse.Namespace) -> None:
    """Real coding of one run's final checkpoint on the evaluation photos."""
    images = eval_images(args.eval_images)
    result = code_run(args.out / run.name, images, args.eval_device, args.threads)
    print(f"evaluated {run.name}: bpp {result['bpp']:.4f}, PSNR {result['psnr']:.2f}", flush=True)


def work(args: argparse.Namespace) -> None:
    """Train (and, with ``--stage all``, code) what is not finished, ``--jobs`` at a time,
    for at most ``--minutes``; a fine-tune starts once its A checkpoint is done."""
    evaluating = args.stage == "all"
    tasks = []
    for run in all_runs(args):
        source = run.source(ARMS)
        done = folder_done(args.out / run.name) and not (evaluating and to_evaluate(run, args))
        after = None if source is None or folder_done(args.out / source.name) else source.name
        tasks.append(Task(run.name, train_run, (run, args), after=after, done=done))
    run_tasks(tasks, args.jobs, args.minutes)


def evaluate_all(args: argparse.Namespace) -> None:
    """Code every finished run not coded yet, ``--eval-jobs`` at a time."""
    tasks = [Task(run.name, evaluate_run, (run, args))
             for run in all_runs(args) if to_evaluate(run, args)]  # fmt: skip
    run_tasks(tasks, args.eval_jobs)


def curve(results: dict[str, dict], arm: str, seed: int, lambdas) -> list[tuple[float, float]]:
    """(bpp, PSNR) of an arm's coded runs at one seed."""
    runs = [Run(arm, lmbda, seed).name for lmbda in lambdas]
    return sorted((results[n]["bpp"], results[n]["psnr"]) for n in runs if n in results)


def bd(results: dict[str, dict], anchor: tuple, test: tuple) -> BDRate:
    """``test`` vs ``anchor`` ((arm, seed, λs) each): its BD-rate."""
    (arm_a, seed_a, lambdas_a), (arm_t, seed_t, lambdas_t) = anchor, test
    points_a = curve(results, arm_a, seed_a, lambdas_a)
    points_t = curve(results, arm_t, seed_t, lambdas_t)
    return bd_rate((f"{arm_a} seed {seed_a}", points_a), (f"{arm_t} seed {seed_t}", points_t))


def evaluated_results(args: argparse.Namespace) -> dict[str, dict]:
    """The evaluation of every run that has one, by run name."""
    coded = {run.name: evaluation(args.out / run.name) for run in all_runs(args)}
    return {name: result for name, result in coded.items() if result is not None}


def report(args: argparse.Namespace) -> str:
    """The tables (BD-rates, noise floor, λ → operating point, times) of what is evaluated."""
    results = evaluated_results(args)
    lines = ["| comparison | seed | BD-rate pchip | BD-rate cubic | stable |",
             "|---|---|---|---|---|"]  # fmt: skip
    summary: dict[str, list[float]] = {}
    comparisons = [c for c in COMPARISONS if c[2] in args.arms]
    for label, anchor, test in comparisons:
        for seed in SEEDS:
            rate = bd(results, (anchor, seed, lambdas_of(anchor)),
                      (test, seed, lambdas_of(test)))  # fmt: skip
            lines.append(f"| {label} | {seed} | {rate.cells} |")
            if rate.pchip is not None:
                summary.setdefault(label, []).append(rate.pchip)
    for lambdas, which in ((LAMBDAS, "grid λ"), (lambdas_of("A"), "all λ")):
        noise = bd(results, ("A", SEEDS[0], lambdas), ("A", SEEDS[1], lambdas))
        lines.append(f"| A seed 1 vs A seed 0 (noise floor, {which}) | – | {noise.cells} |")
    for label, values in summary.items():
        if len(values) > 1:
            lines.append(
                f"| {label}: mean ± std over seeds | – | {statistics.fmean(values):+.2f} ± "
                f"{statistics.stdev(values):.2f} % | | |"
            )
    lines += ["", "| run | bpp | PSNR (dB) | effective λ | train s |", "|---|---|---|---|---|"]
    times: dict[str, list[float]] = {}
    for run in all_runs(args):
        if (message := divergence(args.out / run.name)) is not None:
            lines.append(f"| {run.name} | diverged: {message.split(':')[0]} | | | |")
        elif run.name in results:
            r = results[run.name]
            times.setdefault(run.arm, []).append(r["train_seconds"])
            lines.append(f"| {run.name} | {r['bpp']:.4f} | {r['psnr']:.2f} | "
                         f"{r['effective_lambda']:.3g} | {r['train_seconds']:.0f} |")  # fmt: skip
    lines.append("")
    lines.append(decode_check(results))
    for _label, anchor, test in comparisons:
        if times.get(test) and times.get(anchor):
            ratio = statistics.fmean(times[test]) / statistics.fmean(times[anchor])
            lines.append(f"wall-time ratio {test}/{anchor}: {ratio:.2f}")
    plots(args, results)
    done = sum(folder_done(args.out / run.name) for run in all_runs(args))
    header = (f"{done} of {len(all_runs(args))} runs finished (scale {args.scale}, trained on "
              f"{args.label})\n\n")  # fmt: skip
    return header + "\n".join(lines)


def plots(args: argparse.Namespace, results: dict[str, dict]) -> None:
    """The R-D curves per seed, and validation PSNR against step for the scratch runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"A": "C0", "B": "C1", "B'": "C2", "A+": "C3", "C": "C4", "E": "C5"}
    markers = {"A": "o", "B": "s", "B'": "D", "A+": "^", "C": "v", "E": "x"}
    lines = {SEEDS[0]: "-", SEEDS[1]: ":"}
    for seed in SEEDS:
        for arm in ARMS:
            points = curve(results, arm, seed, lambdas_of(arm))
            if points:
                bpp, psnr = zip(*points, strict=True)
                axes[0].plot(bpp, psnr, lines[seed], marker=markers[arm], color=colors[arm],
                             label=f"{arm} seed {seed}", alpha=0.8)  # fmt: skip
        for arm in ("A", "B", "B'"):
            for lmbda in lambdas_of(arm):
                folder = args.out / Run(arm, lmbda, seed).name
                if (folder / "tensorboard").exists() and (history := scalars(folder, "val/psnr")):
                    steps, psnr = zip(*history, strict=True)
                    axes[1].plot(steps, psnr, lines[seed], color=colors[arm], alpha=0.5)
    axes[0].set(xlabel="rate (bpp), real coding", ylabel="PSNR (dB)",
                title="R-D on the eval photos (seed 0 solid, seed 1 dotted)")  # fmt: skip
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="step", ylabel="validation PSNR (dB)",
                title="training from scratch: A blue, B orange"
                + (", B′ green" if "B'" in args.arms else "") + " (every λ)")  # fmt: skip
    for ax in axes:
        ax.grid(True, alpha=0.3)
    figure.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)  # the docs page shows it
    figure.savefig(IMAGES / f"{results_stem(args)}.png", dpi=110)
    plt.close(figure)


def results_stem(args: argparse.Namespace) -> str:
    """``benchmarks/results/<stem>.md/.png``: the scale and where it was trained."""
    return f"reproduce_rd_{args.scale}_{args.label}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="small", choices=sorted(SCALES))
    parser.add_argument("--steps", type=int, help="override the scale's steps from scratch")
    parser.add_argument("--finetune-steps", type=int, help="override the scale's F")
    parser.add_argument("--minutes", type=float, default=85, help="time for this invocation")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "reproduce_rd")
    parser.add_argument("--stage", default="all", choices=("all", "train", "evaluate", "report"),
                        help="all: train (each worker then codes its run), code what is left, "
                             "report; train: only train; evaluate: only code the finished runs; "
                             "report: the tables and plots of what is coded")  # fmt: skip
    parser.add_argument("--eval-device", default="cpu", help="device of the real coding")
    parser.add_argument("--eval-jobs", type=int, default=2, help="checkpoints coded at once")
    parser.add_argument("--label", help="names the results files (default: the device type)")
    parser.add_argument("--eval-images", type=int, help="code only this many eval photos (smoke)")
    parser.add_argument(
        "--arms",
        nargs="+",
        default=DEFAULT_ARMS,
        choices=sorted(ARMS),
        help="the arms to train and report (A is needed by all, A+ by C and E)",
    )
    args = parser.parse_args()
    args.label = args.label or args.device.split(":")[0]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "train"):
        work(args)
    if args.stage in ("all", "evaluate"):
        evaluate_all(args)
    if args.stage in ("train", "evaluate"):
        return
    text = report(args)
    print(text)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / f"{results_stem(args)}.md").write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
